"""mask_rcnn_ext.modeling.ROIPooler and POOLER_REGISTRY against Detectron2's ROIPooler."""

import pytest
import torch
from detectron2.modeling.poolers import ROIPooler as Detectron2ROIPooler
from detectron2.structures import Boxes, RotatedBoxes
from torch import nn

from helpers import FPN_SCALES, fpn_box_lists, fpn_pyramid
from mask_rcnn_ext.modeling import POOLER_REGISTRY, ROIPooler

REQUIRED_TYPES = {"ROIAlign", "ROIAlignV2", "ROIAlignMax", "PreciseROIPool", "ROIWarp", "ROIPool"}


def test_registry_has_the_paper_types():
    assert REQUIRED_TYPES <= {name for name, _ in POOLER_REGISTRY}


@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIAlignV2", "ROIPool"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_equals_detectron2_pooler(pooler_type, sampling_ratio):
    features, boxes = fpn_pyramid(), fpn_box_lists()
    ours = ROIPooler(7, FPN_SCALES, sampling_ratio, pooler_type)(features, boxes)
    theirs = Detectron2ROIPooler(7, FPN_SCALES, sampling_ratio, pooler_type)(features, boxes)
    assert ours.shape == (80, 3, 7, 7)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_rotated_type_equals_detectron2_pooler():
    generator = torch.Generator().manual_seed(2)
    boxes = []
    for _ in range(2):
        centers = torch.rand(10, 2, generator=generator) * 60
        sizes = torch.rand(10, 2, generator=generator) * 120 + 8
        angles = torch.rand(10, 1, generator=generator) * 180 - 90
        boxes.append(RotatedBoxes(torch.cat((centers, sizes, angles), dim=1)))
    features = fpn_pyramid()
    ours = ROIPooler(5, FPN_SCALES, 2, "ROIAlignRotated")(features, boxes)
    theirs = Detectron2ROIPooler(5, FPN_SCALES, 2, "ROIAlignRotated")(features, boxes)
    torch.testing.assert_close(ours, theirs)


def test_level_assignment_is_detectron2s():
    """A pyramid whose level l is the constant l + 1 shows which level each box was pooled from."""
    features = [torch.full((2, 1, 64 // s, 96 // s), float(level + 1))
                for level, s in enumerate((4, 8, 16, 32))]
    # Centred square boxes around the FPN thresholds: level = floor(4 + log2(side / 224)).
    sides = torch.tensor([10.0, 111.0, 113.0, 223.0, 225.0, 447.0, 449.0, 1000.0])
    center = torch.tensor([48.0, 32.0])
    boxes = [Boxes(torch.cat((center - sides[:, None] / 2, center + sides[:, None] / 2), 1))] * 2
    # One sample per bin: the centre bin's sample is the box centre, on every level's map.
    ours = ROIPooler(3, FPN_SCALES, 1, "ROIAlignV2")(features, boxes)[:, 0, 1, 1]
    theirs = Detectron2ROIPooler(3, FPN_SCALES, 1, "ROIAlignV2")(features, boxes)[:, 0, 1, 1]
    torch.testing.assert_close(ours, theirs)
    assert ours[:8].round().tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]


@pytest.mark.parametrize("pooler_type", sorted(REQUIRED_TYPES))
def test_gradcheck_every_registered_type(pooler_type):
    features = [f.requires_grad_(True)
                for f in fpn_pyramid(torch.float64, channels=1, size=(32, 48), seed=3)]
    boxes = [Boxes(b.tensor[:4] / 2) for b in fpn_box_lists(torch.float64, seed=4)]
    pooler = ROIPooler((3, 2), FPN_SCALES, 2, pooler_type)
    assert torch.autograd.gradcheck(lambda *maps: pooler(list(maps), boxes), tuple(features))


def test_non_square_output_and_empty_input():
    features = fpn_pyramid()
    pooler = ROIPooler((7, 5), FPN_SCALES, 0, "ROIAlignMax")
    assert pooler(features, fpn_box_lists()).shape == (80, 3, 7, 5)
    empty = [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]
    assert pooler(features, empty).shape == (0, 3, 7, 5)


def test_a_user_registered_type_is_used():
    class CenterPixel(nn.Module):
        def __init__(self, output_size, spatial_scale):
            super().__init__()
            self.output_size, self.spatial_scale = output_size, spatial_scale

        def forward(self, features, rois):
            x = ((rois[:, 1] + rois[:, 3]) / 2 * self.spatial_scale).long().clamp(
                0, features.shape[3] - 1)
            y = ((rois[:, 2] + rois[:, 4]) / 2 * self.spatial_scale).long().clamp(
                0, features.shape[2] - 1)
            values = features[rois[:, 0].long(), :, y, x]
            return values[:, :, None, None].expand(-1, -1, *self.output_size)

    @POOLER_REGISTRY.register()
    def TestCenterPixel(output_size, spatial_scale, sampling_ratio):
        return CenterPixel(output_size, spatial_scale)

    try:
        pooler = ROIPooler(2, FPN_SCALES[:1], 0, "TestCenterPixel")
        pooled = pooler(fpn_pyramid()[:1], fpn_box_lists())
        assert pooled.shape == (80, 3, 2, 2)
    finally:
        POOLER_REGISTRY._obj_map.pop("TestCenterPixel")


def test_bad_arguments_are_named():
    unknown = r"Unknown pooler type 'ROIAlignV3'; registered: .*ROIWarp"
    with pytest.raises(ValueError, match=unknown):
        ROIPooler(7, FPN_SCALES, 0, "ROIAlignV3")
    with pytest.raises(ValueError, match="powers of 2"):
        ROIPooler(7, (1 / 3, 1 / 6), 0, "ROIAlignV2")
    pooler = ROIPooler(7, FPN_SCALES, 0, "ROIAlignV2")
    with pytest.raises(ValueError, match="has 4 levels, got 3 maps"):
        pooler(fpn_pyramid()[:3], fpn_box_lists())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pooler_type", sorted(REQUIRED_TYPES))
def test_cuda_equals_cpu(pooler_type):
    features = [f.requires_grad_(True) for f in fpn_pyramid(torch.float64)]
    boxes = fpn_box_lists(torch.float64)
    pooler = ROIPooler((7, 5), FPN_SCALES, 0, pooler_type)
    cpu = pooler(features, boxes)
    (grad_cpu,) = torch.autograd.grad(cpu.sum(), features[0])
    features_cuda = [f.detach().cuda().requires_grad_(True) for f in features]
    cuda = pooler(features_cuda, [Boxes(b.tensor.cuda()) for b in boxes])
    (grad_cuda,) = torch.autograd.grad(cuda.sum(), features_cuda[0])
    torch.testing.assert_close(cuda.cpu(), cpu)
    torch.testing.assert_close(grad_cuda.cpu(), grad_cpu)

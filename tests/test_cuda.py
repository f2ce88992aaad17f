"""The RoI poolers on a CUDA GPU: host synchronisations, mixed precision, deterministic gradients,
and mixed-precision training with our heads. Skipped without a GPU (CI has none); the kernels'
numbers are also tested without one, in test_triton_kernels.py."""

import warnings

import pytest
import torch
from detectron2.structures import Boxes

from helpers import FPN_SCALES, fpn_box_lists, fpn_pyramid, small_mask_rcnn_cfg
from mask_rcnn_ext.modeling import ROIPooler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TYPES = ["ROIAlign", "ROIAlignV2", "ROIAlignMax", "PreciseROIPool", "ROIWarp", "ROIPool"]


def _cuda_inputs(dtype=torch.float32):
    features = [f.cuda().requires_grad_(True) for f in fpn_pyramid(dtype, channels=8)]
    return features, [Boxes(b.tensor.cuda()) for b in fpn_box_lists()]


@pytest.mark.parametrize("pooler_type", TYPES)
def test_at_most_one_host_synchronisation_per_level(pooler_type):
    features, boxes = _cuda_inputs()
    pooler = ROIPooler(7, FPN_SCALES, 0, pooler_type)
    pooler(features, boxes)  # compiles the kernels
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            pooler(features, boxes)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= len(FPN_SCALES), [str(w.message) for w in syncs]


@pytest.mark.parametrize("pooler_type", TYPES)
def test_deterministic_gradients_are_bit_identical_and_right(pooler_type):
    features, boxes = _cuda_inputs()
    pooler = ROIPooler(7, FPN_SCALES, 0, pooler_type)
    grad = torch.randn(80, 8, 7, 7, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    default = torch.autograd.grad(pooler(features, boxes), features, grad)
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(pooler(features, boxes), features, grad) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    for first, second, reference in zip(*runs, default, strict=True):
        assert torch.equal(first, second)
        torch.testing.assert_close(first, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pooler_type", TYPES)
def test_autocast_low_precision_features(pooler_type, dtype):
    features, boxes = _cuda_inputs(dtype)
    reference_features = [f.detach().float().requires_grad_(True) for f in features]
    pooler = ROIPooler(7, FPN_SCALES, 0, pooler_type)
    reference = pooler(reference_features, boxes)
    with torch.autocast("cuda", dtype=dtype):
        pooled = pooler(features, boxes)
    assert pooled.dtype == dtype
    scale = reference.abs().max().item()
    torch.testing.assert_close(pooled.float(), reference, atol=scale / 128, rtol=1 / 128)
    grad = torch.randn_like(reference)
    ours = torch.autograd.grad(pooled, features, grad.to(dtype))
    expected = torch.autograd.grad(reference, reference_features, grad)
    for mine, theirs in zip(ours, expected, strict=True):
        scale = theirs.abs().max().item()
        torch.testing.assert_close(mine.float(), theirs, atol=scale / 64, rtol=1 / 64)


@pytest.mark.parametrize("pooler_type", ["ROIAlignMax", "PreciseROIPool", "ROIWarp"])
def test_amp_training_with_our_heads(pooler_type, tiny_coco_dataset, tmp_path):
    """SOLVER.AMP.ENABLED trains Mask R-CNN with our heads on a GPU (Detectron2's AMPTrainer)."""
    from mask_rcnn_ext.engine import Trainer

    cfg = small_mask_rcnn_cfg(tiny_coco_dataset, tmp_path / "output", depth=18)
    cfg.MODEL.DEVICE = "cuda"
    cfg.MODEL.ROI_HEADS.NAME = "MaskRCNNExtROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNFCNHead"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = pooler_type
    cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = pooler_type
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.MAX_ITER = 3
    trainer = Trainer(cfg)
    trainer.train()
    losses = trainer.storage.latest()
    assert all(torch.isfinite(torch.tensor(value)) for name, (value, _) in losses.items()
               if name.startswith("loss"))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("pooler_type", TYPES)
def test_pooling_on_a_device_that_is_not_the_current_one(pooler_type):
    """Features on cuda:1 while cuda:0 is current: the kernels launch on the features' device."""
    features, boxes = _cuda_inputs()
    pooler = ROIPooler(7, FPN_SCALES, 0, pooler_type)
    grad = torch.randn(80, 8, 7, 7, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    expected = pooler(features, boxes)
    expected_grad = torch.autograd.grad(expected, features, grad)
    other = [f.detach().to("cuda:1").requires_grad_(True) for f in features]
    with torch.cuda.device(0):
        pooled = pooler(other, [Boxes(b.tensor.to("cuda:1")) for b in boxes])
        pooled_grad = torch.autograd.grad(pooled, other, grad.to("cuda:1"))
    torch.testing.assert_close(pooled.to("cuda:0"), expected, atol=1e-6, rtol=1e-6)
    for ours, theirs in zip(pooled_grad, expected_grad, strict=True):
        torch.testing.assert_close(ours.to("cuda:0"), theirs, atol=1e-5, rtol=1e-5)

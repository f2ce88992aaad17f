"""The compat layer's rotated-box ops against independent references.

References: shapely's polygon intersection (IoU, NMS), a scalar loop over bins and samples
(rotated RoIAlign), torchvision's roi_align at angle 0, and numerical gradients.
"""

import math

import pytest
import shapely
import torch
from shapely.affinity import rotate
from torchvision.ops import roi_align

from detectron2_compat import rotated
from reference_ops import pool_bins


def _polygon(box):
    cx, cy, w, h, angle = (float(v) for v in box)
    # Detectron2's angle is counter-clockwise on screen (y down): clockwise in shapely's y-up frame.
    return rotate(shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -angle,
                  origin=(cx, cy))


def _shapely_iou(boxes1, boxes2):
    result = torch.zeros(len(boxes1), len(boxes2), dtype=torch.float64)
    for i, a in enumerate(boxes1):
        for j, b in enumerate(boxes2):
            pa, pb = _polygon(a), _polygon(b)
            if pa.area < 1e-14 or pb.area < 1e-14:
                continue
            inter = pa.intersection(pb).area
            result[i, j] = inter / (pa.area + pb.area - inter)
    return result


def _random_boxes(n, generator, offset=0.0):
    centers = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 20 + offset
    sizes = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 10 + 0.5
    angles = torch.rand(n, 1, generator=generator, dtype=torch.float64) * 360 - 180
    return torch.cat((centers, sizes, angles), dim=1)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_box_iou_rotated_matches_shapely(offset):
    generator = torch.Generator().manual_seed(0)
    boxes1 = _random_boxes(40, generator, offset)
    boxes2 = _random_boxes(30, generator, offset)
    iou = rotated.box_iou_rotated(boxes1, boxes2)
    assert (iou > 0).float().mean() > 0.2  # the case exercises real overlaps
    torch.testing.assert_close(iou, _shapely_iou(boxes1, boxes2), atol=1e-6, rtol=0)


def test_box_iou_rotated_special_cases():
    boxes = torch.tensor([
        [10.0, 10.0, 4.0, 2.0, 30.0],
        [10.0, 10.0, 4.0, 2.0, 30.0],    # identical to the first
        [10.0, 10.0, 2.0, 4.0, 120.0],   # the same box, described with swapped sides
        [10.0, 10.0, 1.0, 1.0, 17.0],    # inside the first
        [14.0, 10.0, 4.0, 2.0, 0.0],     # an unrotated box
        [18.0, 10.0, 4.0, 2.0, 0.0],     # shares an edge with the previous one
        [100.0, 100.0, 3.0, 3.0, 45.0],  # far from all
        [10.0, 10.0, 0.0, 3.0, 0.0],     # empty
    ])
    iou = rotated.box_iou_rotated(boxes, boxes)
    torch.testing.assert_close(iou.double(), _shapely_iou(boxes, boxes), atol=1e-5, rtol=0)
    assert iou[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert iou[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert iou[4, 5] == pytest.approx(0.0, abs=1e-6)
    assert iou[7].abs().max() == 0 and iou[:, 7].abs().max() == 0


def test_box_iou_rotated_axis_aligned_equals_torchvision():
    from torchvision.ops import box_iou

    generator = torch.Generator().manual_seed(1)
    boxes = _random_boxes(25, generator)
    boxes[:, 4] = 0
    corners = torch.cat((boxes[:, :2] - boxes[:, 2:4] / 2, boxes[:, :2] + boxes[:, 2:4] / 2), 1)
    torch.testing.assert_close(rotated.box_iou_rotated(boxes, boxes), box_iou(corners, corners))


def test_box_iou_rotated_shapes_and_dtype():
    empty = torch.zeros(0, 5)
    assert rotated.box_iou_rotated(empty, torch.ones(3, 5)).shape == (0, 3)
    assert rotated.box_iou_rotated(torch.ones(2, 5), torch.ones(3, 5)).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        rotated.box_iou_rotated(torch.ones(2, 4), torch.ones(3, 5))


def _greedy_nms_reference(boxes, scores, threshold):
    iou = _shapely_iou(boxes, boxes)
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    keep, suppressed = [], set()
    for position, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        suppressed.update(j for j in order[position + 1:] if iou[i, j] >= threshold)
    return keep


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.7])
def test_nms_rotated_matches_greedy_reference(threshold):
    generator = torch.Generator().manual_seed(2)
    base = _random_boxes(30, generator)
    # Jittered near-duplicates, so that suppression happens at every threshold.
    jitter = (torch.rand(30, 5, generator=generator, dtype=torch.float64) - 0.5) * torch.tensor(
        [1.0, 1.0, 1.0, 1.0, 10.0], dtype=torch.float64)
    boxes = torch.cat((base, base + jitter)).float()
    scores = torch.rand(60, generator=generator)
    keep = rotated.nms_rotated(boxes, scores, threshold)
    expected = _greedy_nms_reference(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert keep.tolist() == expected
    assert len(expected) < 60


def test_nms_rotated_threshold_is_inclusive():
    # IoU of these two is exactly 0.6 (a 4x2 box shifted by 1 pixel); Detectron2 drops at >=.
    boxes = torch.tensor([[10.0, 10.0, 4.0, 2.0, 0.0], [11.0, 10.0, 4.0, 2.0, 0.0]])
    scores = torch.tensor([0.9, 0.8])
    assert rotated.nms_rotated(boxes, scores, 0.6).tolist() == [0]
    assert rotated.nms_rotated(boxes, scores, 0.61).tolist() == [0, 1]
    assert rotated.nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5).shape == (0,)


def test_detectron2_batched_nms_rotated_uses_the_registered_op():
    from detectron2.layers import batched_nms_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 2.0, 0.0], [10.2, 10.0, 4.0, 2.0, 0.0],
                          [10.1, 10.0, 4.0, 2.0, 0.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # Same place, different classes: only boxes of the same class suppress each other.
    keep = batched_nms_rotated(boxes, scores, torch.tensor([0, 1, 0]), 0.5)
    assert sorted(keep.tolist()) == [0, 1]


def _roi_align_rotated_reference(features, rois, scale, pooled_h, pooled_w, sampling_ratio):
    geometry, grids = [], []
    for cx, cy, w, h, angle in rois[:, 1:].tolist():
        geometry.append((cx * scale - 0.5, cy * scale - 0.5, w * scale, h * scale,
                         math.radians(angle)))
        h, w = h * scale, w * scale
        grids.append((sampling_ratio if sampling_ratio > 0 else math.ceil(h / pooled_h),
                      sampling_ratio if sampling_ratio > 0 else math.ceil(w / pooled_w)))

    def sample_point(k, p, q, iy, ix):
        cx, cy, w, h, theta = geometry[k]
        grid_h, grid_w = grids[k]
        # the sample in the RoI's own frame, relative to its centre, then rotated
        v = -h / 2 + (p + (iy + 0.5) / grid_h) * h / pooled_h
        u = -w / 2 + (q + (ix + 0.5) / grid_w) * w / pooled_w
        return (v * math.cos(theta) - u * math.sin(theta) + cy,
                v * math.sin(theta) + u * math.cos(theta) + cx)

    return pool_bins(features, rois[:, 0].long().tolist(), (pooled_h, pooled_w), grids,
                     sample_point, lambda values: sum(values) / max(len(values), 1))


def _rotated_rois():
    return torch.tensor([
        [0, 10.0, 8.0, 9.0, 5.0, 30.0],
        [1, 3.0, 4.0, 12.0, 3.0, -75.0],
        [0, 22.0, 18.0, 10.0, 10.0, 0.0],   # partly outside the map
        [1, 50.0, 50.0, 4.0, 4.0, 10.0],    # wholly outside
        [0, 9.0, 9.0, 0.5, 0.7, 120.0],     # sub-pixel
        [1, 10.0, 10.0, 0.0, 6.0, 45.0],    # empty
        [0, 12.0, 10.0, 60.0, 40.0, 170.0],  # larger than the map
    ])


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_roi_align_rotated_forward_matches_scalar_reference(sampling_ratio):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 10, 12, generator=generator)
    rois = _rotated_rois()
    output = rotated.roi_align_rotated_forward(features, rois, 0.5, 3, 4, sampling_ratio)
    expected = _roi_align_rotated_reference(features, rois, 0.5, 3, 4, sampling_ratio)
    torch.testing.assert_close(output.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_rotated_at_angle_zero_equals_torchvision(sampling_ratio):
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 4, 16, 20, generator=generator, requires_grad=True)
    boxes = torch.tensor([[0, 2.0, 3.0, 30.0, 20.0], [1, 10.0, 1.0, 13.0, 29.0],
                          [1, -5.0, -4.0, 6.0, 7.0]])
    rois = torch.cat((boxes[:, :1], (boxes[:, 1:3] + boxes[:, 3:5]) / 2,
                      boxes[:, 3:5] - boxes[:, 1:3], torch.zeros(3, 1)), dim=1)
    from detectron2.layers import ROIAlignRotated

    ours = ROIAlignRotated((5, 4), 0.5, sampling_ratio)(features, rois)
    (grad_ours,) = torch.autograd.grad(ours.sum(), features)
    reference = roi_align(features, boxes, (5, 4), 0.5, sampling_ratio, aligned=True)
    (grad_reference,) = torch.autograd.grad(reference.sum(), features)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_ours, grad_reference, atol=1e-5, rtol=1e-5)


def test_roi_align_rotated_gradcheck_through_detectron2():
    from detectron2.layers import ROIAlignRotated

    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, 2, 7, 8, generator=generator, dtype=torch.float64,
                           requires_grad=True)
    rois = _rotated_rois().double()[:5] * torch.tensor([1, 0.5, 0.5, 0.5, 0.5, 1.0],
                                                                dtype=torch.float64)
    pooler = ROIAlignRotated((2, 3), 1.0, 2)
    assert torch.autograd.gradcheck(lambda f: pooler(f, rois), (features,))

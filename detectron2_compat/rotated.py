"""Rotated-box ops that Detectron2 reaches through its compiled module, written in PyTorch.

A rotated box is ``(x_center, y_center, width, height, angle)`` in pixels, with the angle in
degrees, counter-clockwise in image coordinates, as in ``detectron2.structures.RotatedBoxes``.
Every function runs on whatever device its tensors are on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "box_iou_rotated",
    "nms_rotated",
    "roi_align_rotated_backward",
    "roi_align_rotated_forward",
]

# Boxes whose area is below this count as empty and overlap nothing (Detectron2's threshold).
_MIN_BOX_AREA = 1e-14
# Slack on the edge-parameter and inside-box tests, so that touching edges count as touching.
_EDGE_EPS = 1e-5
# Pairs of boxes handled at once by the vectorised intersection (bounds temporary memory).
_PAIRS_PER_CHUNK = 1 << 16


def _corners(boxes: Tensor) -> Tensor:
    """(N, 5) rotated boxes -> (N, 4, 2) corners (x, y), in cyclic order."""
    theta = torch.deg2rad(boxes[:, 4])
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Half-axes along the box's width and height, rotated counter-clockwise on screen
    # (y points down, so a positive angle turns the width axis towards -y).
    half_w = torch.stack((cos, -sin), dim=-1) * (boxes[:, 2:3] / 2)
    half_h = torch.stack((sin, cos), dim=-1) * (boxes[:, 3:4] / 2)
    center = boxes[:, :2]
    return torch.stack(
        (center + half_w + half_h, center - half_w + half_h,
         center - half_w - half_h, center + half_w - half_h),
        dim=1,
    )


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside_rectangle(points: Tensor, rect: Tensor) -> Tensor:
    """Whether each of ``points`` (P, K, 2) lies in the rectangle of corners ``rect`` (P, 4, 2)."""
    origin = rect[:, None, 0]
    side_u = (rect[:, 1] - rect[:, 0])[:, None]
    side_v = (rect[:, 3] - rect[:, 0])[:, None]
    rel = points - origin
    proj_u = (rel * side_u).sum(-1)
    proj_v = (rel * side_v).sum(-1)
    len_u = (side_u * side_u).sum(-1)
    len_v = (side_v * side_v).sum(-1)
    return (proj_u > -_EDGE_EPS) & (proj_u < len_u + _EDGE_EPS) & (
        proj_v > -_EDGE_EPS) & (proj_v < len_v + _EDGE_EPS)


def _intersection_area(corners1: Tensor, corners2: Tensor) -> Tensor:
    """Area of the intersection of pairs of rectangles given as (P, 4, 2) corners -> (P,).

    The intersection is convex; its vertices are among the edge-edge crossings and the corners of
    one rectangle inside the other. Those candidates are sorted by angle around their mean, and the
    shoelace formula gives the area; invalid candidates are replaced by the first valid one so they
    add zero area.
    """
    edges1 = torch.roll(corners1, -1, dims=1) - corners1  # (P, 4, 2)
    edges2 = torch.roll(corners2, -1, dims=1) - corners2
    # Edge i of box 1 against edge j of box 2: solve c1_i + t e1_i = c2_j + s e2_j.
    e1 = edges1[:, :, None]
    e2 = edges2[:, None, :]
    delta = corners2[:, None, :] - corners1[:, :, None]  # (P, 4, 4, 2)
    det = _cross(e1, e2)
    parallel = det.abs() <= 1e-14
    safe_det = torch.where(parallel, torch.ones_like(det), det)
    t = _cross(delta, e2) / safe_det
    s = _cross(delta, e1) / safe_det
    crossing_ok = (~parallel) & (t > -_EDGE_EPS) & (t < 1 + _EDGE_EPS) & (s > -_EDGE_EPS) & (
        s < 1 + _EDGE_EPS)
    crossings = corners1[:, :, None] + e1 * t[..., None]

    points = torch.cat((crossings.flatten(1, 2), corners1, corners2), dim=1)  # (P, 24, 2)
    valid = torch.cat(
        (crossing_ok.flatten(1), _inside_rectangle(corners1, corners2),
         _inside_rectangle(corners2, corners1)),
        dim=1,
    )
    count = valid.sum(1)
    weights = valid.to(points.dtype)
    center = (points * weights[..., None]).sum(1) / count.clamp(min=1)[:, None].to(points.dtype)
    rel = points - center[:, None]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, math.inf))
    order = angle.argsort(dim=1)
    rel = rel.gather(1, order[..., None].expand_as(rel))
    valid = valid.gather(1, order)
    rel = torch.where(valid[..., None], rel, rel[:, :1].expand_as(rel))
    area = _cross(rel, torch.roll(rel, -1, dims=1)).sum(1).abs() / 2
    return torch.where(count >= 3, area, torch.zeros_like(area))


def _paired_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of boxes1[k] with boxes2[k], both (P, 5), computed in float64 -> (P,) float64."""
    boxes1, boxes2 = boxes1.double(), boxes2.double()
    # Centring each pair on its midpoint keeps far-from-origin coordinates precise.
    midpoint = (boxes1[:, :2] + boxes2[:, :2]) / 2
    boxes1 = torch.cat((boxes1[:, :2] - midpoint, boxes1[:, 2:]), dim=1)
    boxes2 = torch.cat((boxes2[:, :2] - midpoint, boxes2[:, 2:]), dim=1)
    area1 = boxes1[:, 2] * boxes1[:, 3]
    area2 = boxes2[:, 2] * boxes2[:, 3]
    inter = _intersection_area(_corners(boxes1), _corners(boxes2))
    union = area1 + area2 - inter
    degenerate = (area1 < _MIN_BOX_AREA) | (area2 < _MIN_BOX_AREA)
    iou = inter / torch.where(degenerate, torch.ones_like(union), union)
    return torch.where(degenerate, torch.zeros_like(iou), iou)


def box_iou_rotated(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of rotated boxes: (N, 5) x (M, 5) -> (N, M), in the dtype of ``boxes1``.

    Boxes with an area below 1e-14 have IoU 0 with everything.
    """
    if boxes1.dim() != 2 or boxes1.shape[-1] != 5 or boxes2.dim() != 2 or boxes2.shape[-1] != 5:
        raise ValueError(
            f"box_iou_rotated expects (N, 5) and (M, 5) boxes, got {tuple(boxes1.shape)} and "
            f"{tuple(boxes2.shape)}"
        )
    n, m = boxes1.shape[0], boxes2.shape[0]
    result = boxes1.new_zeros((n, m), dtype=torch.float64)
    if n == 0 or m == 0:
        return result.to(boxes1.dtype)
    rows_per_chunk = max(1, _PAIRS_PER_CHUNK // m)
    for start in range(0, n, rows_per_chunk):
        rows = boxes1[start:start + rows_per_chunk]
        left = rows[:, None].expand(-1, m, -1).reshape(-1, 5)
        right = boxes2[None].expand(rows.shape[0], -1, -1).reshape(-1, 5)
        result[start:start + rows.shape[0]] = _paired_iou(left, right).view(rows.shape[0], m)
    return result.to(boxes1.dtype)


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression of rotated boxes.

    Args:
        boxes: (N, 5) rotated boxes.
        scores: (N,) scores.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scored box is
            ``>= iou_threshold`` (Detectron2's rule; torchvision's ``nms`` uses ``>``).

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 5 or scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"nms_rotated expects (N, 5) boxes and (N,) scores, got {tuple(boxes.shape)} and "
            f"{tuple(scores.shape)}"
        )
    order = scores.argsort(descending=True, stable=True)
    remaining = boxes[order]
    keep = []
    while remaining.shape[0] > 0:
        keep.append(order[0])
        ious = _paired_iou(remaining[:1].expand(remaining.shape[0] - 1, -1), remaining[1:])
        survivors = torch.nonzero(ious < iou_threshold).squeeze(1) + 1
        order, remaining = order[survivors], remaining[survivors]
    if not keep:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    return torch.stack(keep)


def _sample_bilinear(features: Tensor, batch_index: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Bilinear samples of (B, C, H, W) ``features`` at points (G, S) -> (G, S, C).

    RoIAlign's border rule: points more than one pixel outside the map give 0; points within that
    margin are clamped onto the map; there is no zero padding between the last pixel and the border.
    It mirrors ``mask_rcnn_ext.layers.rules.bilinear_samples`` and ``bilinear_sample_weights``:
    this package makes Detectron2 importable, so it cannot import the product, which imports
    Detectron2. tests/test_compat_rotated.py checks it at angle 0 against torchvision's
    ``roi_align``, the reference the product's rules are checked against.
    """
    height, width = features.shape[-2:]
    outside = (y < -1) | (y > height) | (x < -1) | (x > width)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y_low = y.floor().clamp(max=height - 1)
    x_low = x.floor().clamp(max=width - 1)
    y = torch.where(y_low >= height - 1, y_low, y)
    x = torch.where(x_low >= width - 1, x_low, x)
    y_high = (y_low + 1).clamp(max=height - 1)
    x_high = (x_low + 1).clamp(max=width - 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    zero = torch.zeros((), dtype=features.dtype, device=features.device)
    channels_last = features.permute(0, 2, 3, 1)
    b = batch_index[:, None].expand_as(y)
    y_low, y_high, x_low, x_high = (v.long() for v in (y_low, y_high, x_low, x_high))
    value = (
        channels_last[b, y_low, x_low] * (hy * hx)[..., None]
        + channels_last[b, y_low, x_high] * (hy * lx)[..., None]
        + channels_last[b, y_high, x_low] * (ly * hx)[..., None]
        + channels_last[b, y_high, x_high] * (ly * lx)[..., None]
    )
    return torch.where(outside[..., None], zero, value)


def roi_align_rotated_forward(
    features: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
) -> Tensor:
    """RoIAlign over rotated RoIs, as Detectron2's ``ROIAlignRotated``.

    Args:
        features: (B, C, H, W) feature map.
        rois: (K, 6) rows ``(batch_index, x_center, y_center, width, height, angle_degrees)`` in
            image pixels; ``spatial_scale`` maps them to feature-map coordinates, where pixel
            centres sit at half-integers (the RoI centre is shifted by -0.5: always "aligned").
        sampling_ratio: bilinear samples per bin side; ``<= 0`` means ceil(roi_side / pooled_side).

    Returns:
        (K, C, pooled_height, pooled_width): the mean of each bin's bilinear samples.
    """
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 6:
        raise ValueError(
            f"roi_align_rotated expects (B, C, H, W) features and (K, 6) rois, got "
            f"{tuple(features.shape)} and {tuple(rois.shape)}"
        )
    num_rois, channels = rois.shape[0], features.shape[1]
    output = features.new_zeros((num_rois, channels, pooled_height, pooled_width))
    if num_rois == 0:
        return output
    rois = rois.to(features.dtype)
    center_x = rois[:, 1] * spatial_scale - 0.5
    center_y = rois[:, 2] * spatial_scale - 0.5
    roi_w = rois[:, 3] * spatial_scale
    roi_h = rois[:, 4] * spatial_scale
    if bool((roi_w < 0).any()) or bool((roi_h < 0).any()):
        raise ValueError("roi_align_rotated: RoIs must have non-negative width and height")
    theta = torch.deg2rad(rois[:, 5])
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Samples per bin: mask_rcnn_ext.layers.rules.samples_per_bin's rule (restated, as the border
    # rule in _sample_bilinear is, and checked the same way).
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.int64)
    else:
        grid_h = torch.ceil(roi_h / pooled_height).long()
        grid_w = torch.ceil(roi_w / pooled_width).long()
    # RoIs that share a sample grid are sampled together.
    grids = torch.stack((grid_h, grid_w), dim=1)
    for gh, gw in torch.unique(grids, dim=0).tolist():
        if gh == 0 or gw == 0:
            continue  # an empty RoI pools to zero
        members = torch.nonzero((grids[:, 0] == gh) & (grids[:, 1] == gw)).squeeze(1)
        steps_h = (torch.arange(pooled_height * gh, device=features.device, dtype=features.dtype)
                   + 0.5) / gh
        steps_w = (torch.arange(pooled_width * gw, device=features.device, dtype=features.dtype)
                   + 0.5) / gw
        # Sample offsets from the RoI centre, in the RoI's own (unrotated) frame.
        yy = (steps_h[None] * (roi_h[members] / pooled_height)[:, None]
              - roi_h[members, None] / 2)[:, :, None]
        xx = (steps_w[None] * (roi_w[members] / pooled_width)[:, None]
              - roi_w[members, None] / 2)[:, None, :]
        c, s = cos[members, None, None], sin[members, None, None]
        y = yy * c - xx * s + center_y[members, None, None]
        x = yy * s + xx * c + center_x[members, None, None]
        samples = _sample_bilinear(
            features, rois[members, 0].long(), y.flatten(1), x.flatten(1)
        )  # (G, pooled_h*gh*pooled_w*gw, C)
        samples = samples.view(-1, pooled_height, gh, pooled_width, gw, channels)
        output[members] = samples.mean(dim=(2, 4)).permute(0, 3, 1, 2)
    return output


def roi_align_rotated_backward(
    grad_output: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
) -> Tensor:
    """Gradient of :func:`roi_align_rotated_forward` with respect to its features -> (B, C, H, W).

    The forward is linear in the features, so its vector-Jacobian product is taken by autograd at
    a zero feature map.
    """
    with torch.enable_grad():
        features = grad_output.new_zeros((batch_size, channels, height, width), requires_grad=True)
        pooled = roi_align_rotated_forward(
            features, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio
        )
        (grad_features,) = torch.autograd.grad(pooled, features, grad_output, allow_unused=True)
    return grad_features if grad_features is not None else torch.zeros_like(features)

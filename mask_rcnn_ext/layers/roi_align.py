"""RoIAlign (Mask R-CNN, He et al. 2017, Sec. 3) with average or max aggregation.

Coordinates: boxes are (x1, y1, x2, y2) in image pixels; ``spatial_scale`` maps them onto the
feature map. With ``aligned=True`` the box is shifted by -0.5 feature pixels first, so that a
feature pixel's centre sits at a half-integer image coordinate, as in Detectron2's ROIAlignV2;
with ``aligned=False`` it is not, and boxes smaller than one feature pixel are grown to one
(the original, legacy behaviour; Detectron2's ROIAlign).

Each of the P x Q output bins takes ``sampling_ratio`` x ``sampling_ratio`` regularly spaced
bilinear samples (``<= 0``: ceil(box side / bins) per side, per box, as Detectron2 and
torchvision). A sample more than one pixel outside the map reads 0; one within that margin is
clamped onto the map.

``mode="avg"`` averages a bin's samples: exactly torchvision's ``roi_align``.
``mode="max"`` takes the maximum over a bin's samples, each sample being the full bilinear
interpolation of its four neighbours. (ONNX Runtime's RoiAlign "max" takes the maximum of the four
weighted neighbour *terms* instead, and other implementations differ again; results are not
interchangeable.) Out-of-map samples (value 0) take part in the maximum; a bin with no samples
(an empty box with adaptive sampling) is 0. The gradient flows to the maximising sample (the
first one, on exact ties, as ``torch.max``).

Gradients are taken with respect to the features, not the boxes (as torchvision).
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_align as torchvision_roi_align

from . import traceable
from .backends import Backend, choose_backend, triton_ops
from .rules import (
    bilinear_sample_positions,
    bilinear_sample_weights,
    checked_rois,
    compute_dtype,
    full_precision,
    rois_from_boxes,
    scaled_boxes,
    validated_rois,
)
from .separable import AxisWeights, pool_separable, window_columns, window_pixels

__all__ = ["roi_align", "ROIAlign"]

_MODES = ("avg", "max")


class BilinearSamples(AxisWeights):
    """RoIAlign's regularly spaced bilinear samples along one axis.

    Args:
        roi_start, roi_length: (K,) the RoI along this axis, in feature-map pixels.
        pooled: number of bins.
        sampling_ratio: samples per bin; ``<= 0`` for ceil(roi_length / pooled).
        size: the feature map's extent along this axis.
        per_sample: one matrix row per sample (bins x samples rows, for max pooling) instead of
            one row per bin holding the average of its samples.
    """

    def __init__(self, roi_start: Tensor, roi_length: Tensor, pooled: int, sampling_ratio: int,
                 size: int, per_sample: bool):
        if sampling_ratio > 0:
            self.grid = torch.full_like(roi_start, sampling_ratio, dtype=torch.int64)
        else:
            self.grid = torch.ceil(roi_length / pooled).long()
        self.pooled, self.size, self.per_sample = pooled, size, per_sample
        steps = torch.arange(max(int(self.grid.max()), 1) if len(self.grid) else 1,
                             device=roi_start.device)
        self.real = steps[None, None, :] < self.grid[:, None, None]  # (K, 1, S)
        self.position = bilinear_sample_positions(roi_start, roi_length, pooled,
                                                  self.grid.clamp(min=1), steps)  # (K, P, S)
        self.valid = (self.grid[:, None, None] > 0) & (self.position >= -1) & (
            self.position <= size)
        # The window spans the valid samples, clamped onto the map.
        on_map = self.position.clamp(0, size - 1)
        low = torch.where(self.valid, on_map, math.inf).amin(dim=(1, 2))
        high = torch.where(self.valid, on_map, -math.inf).amax(dim=(1, 2))
        has_samples = self.valid.any(dim=2).any(dim=1)
        self.start = torch.where(has_samples, low, 0).floor().long()
        self.length = torch.where(has_samples, high.ceil().long() - self.start + 1, 1)
        self.rows = pooled * self.grid.clamp(min=1) if per_sample else None

    def samples_per_bin(self, rows: Tensor) -> int:
        return max(int(self.grid[rows].max()), 1)

    def matrix(self, rows: Tensor, length: int) -> Tensor:
        samples = self.samples_per_bin(rows)
        position = self.position[rows, :, :samples]
        valid = self.valid[rows, :, :samples]
        if not self.per_sample:
            valid = valid & self.real[rows, :, :samples]
        pixels = window_pixels(self.start[rows], length, position.dtype)
        weights = bilinear_sample_weights(position, valid, self.size, pixels)  # (G, P, S, L)
        if self.per_sample:
            return weights.reshape(rows.shape[0], self.pooled * samples, length)
        grid = self.grid[rows].clamp(min=1)[:, None, None].to(weights.dtype)
        return weights.sum(2) / grid


class _SampleMaximum(torch.autograd.Function):
    """Each bin's maximum over its Sy x Sx bilinear samples, from values interpolated along y.

    Forward: (G, R, Lx, C) values at the R = P*Sy sample rows, x weights (G, S, Lx) of the
    S = Q*Sx sample columns -> samples (one product per RoI) -> (G, Q, P, C) maxima. Only the
    winning samples' positions (uint8) are kept: the backward sends each bin's gradient to the two
    columns that its winning sample interpolates (the first of equal maxima in (y, x) order, like
    ``torch.max``), by scatters into the y-interpolated values, instead of a dense gradient over
    every sample (measured: that was half of max pooling's backward).
    """

    @staticmethod
    def forward(ctx, along_y: Tensor, weights_x: Tensor, pooled_y: int, pooled_x: int) -> Tensor:
        num, rows, _, channels = along_y.shape
        columns = weights_x.shape[1]
        samples = torch.bmm(weights_x, window_columns(along_y))
        grid = samples.view(num, pooled_x, columns // pooled_x, pooled_y, rows // pooled_y,
                            channels)
        best_in_column, winner_x = grid.max(dim=2)  # (G, Q, P, Sy, C)
        best, winner_y = best_in_column.max(dim=3)  # (G, Q, P, C)
        winner_x = winner_x.gather(3, winner_y.unsqueeze(3)).squeeze(3)
        ctx.save_for_backward(weights_x, winner_x.to(torch.uint8), winner_y.to(torch.uint8))
        ctx.rows = rows
        return best

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        weights_x, winner_x, winner_y = ctx.saved_tensors
        num, pooled_x, pooled_y, channels = grad.shape
        columns, length_x = weights_x.shape[1:]
        samples_x, samples_y = columns // pooled_x, ctx.rows // pooled_y
        steps_x = torch.arange(pooled_x, device=grad.device)[:, None, None] * samples_x
        steps_y = torch.arange(pooled_y, device=grad.device)[:, None] * samples_y
        column = (steps_x + winner_x.long()).view(num, -1)  # (G, Q*P*C)
        row = (steps_y + winner_y.long()).view(num, -1)
        # A sample's x weights are two neighbouring window columns, the first one positive.
        low = (weights_x > 0).to(torch.uint8).argmax(dim=2).gather(1, column)
        flat_weights = weights_x.reshape(num, columns * length_x)
        grad_along_y = grad.new_zeros((num, ctx.rows * length_x, channels))
        grad = grad.reshape(num, -1, channels)
        for tap in (low, low + 1):
            inside = tap < length_x
            tap = tap.clamp(max=length_x - 1)
            weight = flat_weights.gather(1, column * length_x + tap) * inside
            grad_along_y.scatter_add_(1, (row * length_x + tap).view(grad.shape),
                                      grad * weight.view(grad.shape))
        return grad_along_y.view(num, ctx.rows, length_x, channels), None, None, None


def _bin_maximum(axis_y: BilinearSamples, axis_x: BilinearSamples):
    """``reduce`` for :func:`pool_separable`: the maximum over each bin's samples."""

    def reduce(along_y: Tensor, weights_x: Tensor) -> Tensor:
        return _SampleMaximum.apply(along_y, weights_x, axis_y.pooled, axis_x.pooled)

    return reduce


@checked_rois
def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: str = "avg",
) -> Tensor:
    """RoIAlign with average or max aggregation (see the module docstring for the conventions).

    Args:
        input: (N, C, H, W) features.
        boxes: (K, 5) rows (batch_index, x1, y1, x2, y2), or a list of N Tensor[L, 4].
        output_size: (P, Q) bins, or one int for both.
        spatial_scale: feature-map pixels per image pixel (e.g. 1/16).
        sampling_ratio: samples per bin side; ``<= 0`` is adaptive.
        aligned: shift boxes by -0.5 feature pixels (half-pixel convention).
        mode: "avg" or "max".

    Returns:
        (K, C, P, Q).
    """
    if mode not in _MODES:
        raise ValueError(f"roi_align: mode must be one of {_MODES}, got {mode!r}")
    pooled_h, pooled_w = _pair(output_size)
    rois = validated_rois(boxes, input).detach()
    backend = choose_backend(f"roi_align_{mode}", input)
    if backend is Backend.TORCHVISION:
        if mode != "avg":
            raise ValueError(f"roi_align: torchvision has no mode={mode!r}")
        # As torchvision's own autocast wrapper: low-precision features are pooled in float32.
        dtype = compute_dtype(input)
        return torchvision_roi_align(input.to(dtype), rois, (pooled_h, pooled_w), spatial_scale,
                                     sampling_ratio, aligned).to(input.dtype)
    if backend is Backend.TRACEABLE:
        return traceable.roi_align(input, rois, (pooled_h, pooled_w), spatial_scale,
                                   sampling_ratio, aligned, mode)
    if rois.shape[0] == 0:
        return input.new_zeros((0, input.shape[1], pooled_h, pooled_w))
    start, extent = scaled_boxes(rois, spatial_scale, aligned, legacy_min_size=True)
    with full_precision(input):
        if backend is Backend.TRITON:
            return triton_ops().roi_align_triton(input, rois, (pooled_h, pooled_w), start,
                                                 extent, sampling_ratio, mode)
        height, width = input.shape[-2:]
        per_sample = mode == "max"
        axis_y = BilinearSamples(start[:, 1], extent[:, 1], pooled_h, sampling_ratio, height,
                                 per_sample)
        axis_x = BilinearSamples(start[:, 0], extent[:, 0], pooled_w, sampling_ratio, width,
                                 per_sample)
        reduce = _bin_maximum(axis_y, axis_x) if per_sample else None
        return pool_separable(input, rois[:, 0].long(), axis_y, axis_x, reduce)


class ROIAlign(nn.Module):
    """:func:`roi_align` as a module: ``forward(input, boxes)``."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float,
                 sampling_ratio: int, aligned: bool = False, mode: str = "avg"):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"ROIAlign: mode must be one of {_MODES}, got {mode!r}")
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.mode = mode

    def forward(self, input: Tensor,
                boxes: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007 (TorchScript)
        if torch.jit.is_scripting():  # TorchScript cannot compile the dispatch (see .backends)
            return traceable.roi_align(input, rois_from_boxes(boxes, input), self.output_size,
                                       self.spatial_scale, self.sampling_ratio, self.aligned,
                                       self.mode)
        return roi_align(input, boxes, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned, self.mode)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, mode={self.mode!r}")

"""Precise RoI pooling (PrRoI Pooling; Jiang et al., "Acquisition of Localization Confidence for
Accurate Object Detection", ECCV 2018 / IoU-Net).

The feature map is read as the continuous function f(y, x) = sum_ij F[i, j] hat(y - i) hat(x - j)
(bilinear interpolation, zero beyond one pixel outside the map), and each bin's value is its exact
integral over the bin divided by the bin's area: no sampling ratio, no sampling error. Because the
kernel is separable, a bin's weight on pixel i along one axis is the integral of hat(y - i) over
the bin's extent, in closed form. Bins of zero area give 0, as in the paper's implementation.

Gradients flow to the features and to the box coordinates (the integral is a differentiable
function of the bin edges).

Coordinates: as :func:`mask_rcnn_ext.layers.roi_align`, including ``aligned`` (shift by -0.5
feature pixels: the half-pixel convention). The paper's implementation uses ``aligned=False``.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from . import traceable
from .backends import Backend, choose_backend, triton_ops
from .rules import (
    checked_rois,
    full_precision,
    integrated_bin_weights,
    rois_from_boxes,
    scaled_boxes,
    validated_rois,
)
from .separable import AxisWeights, pool_separable, window_pixels

__all__ = ["precise_roi_pool", "PreciseROIPool"]


class IntegratedBins(AxisWeights):
    """Per bin, the integral of each pixel's interpolation kernel over the bin, per unit length.

    Args:
        roi_start, roi_length: (K,) the RoI along this axis, in feature-map pixels.
        pooled: number of bins.
        size: the feature map's extent along this axis.
    """

    def __init__(self, roi_start: Tensor, roi_length: Tensor, pooled: int, size: int):
        self.roi_start, self.roi_length, self.pooled = roi_start, roi_length, pooled
        # Pixel i contributes where |y - i| < 1 for some y in the RoI.
        low = roi_start.detach().floor().clamp(0, size - 1)
        high = (roi_start + roi_length).detach().ceil().clamp(0, size - 1)
        self.start = low.long()
        self.length = (high - low).long().clamp(min=0) + 1

    def matrix(self, rows: Tensor, length: int) -> Tensor:
        pixels = window_pixels(self.start[rows], length, self.roi_start.dtype)
        return integrated_bin_weights(self.roi_start[rows], self.roi_length[rows], self.pooled,
                                      pixels)


@checked_rois
def precise_roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    aligned: bool = False,
) -> Tensor:
    """Precise RoI pooling (see the module docstring).

    Args:
        input: (N, C, H, W) features.
        boxes: (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels, or a list of N
            Tensor[L, 4]; differentiable.
        output_size: (P, Q) bins, or one int for both.
        spatial_scale: feature-map pixels per image pixel.
        aligned: shift boxes by -0.5 feature pixels (half-pixel convention).

    Returns:
        (K, C, P, Q): each bin's mean of the interpolated feature.
    """
    pooled_h, pooled_w = _pair(output_size)
    rois = validated_rois(boxes, input)
    backend = choose_backend("precise_roi_pool", input, boxes_need_grad=rois.requires_grad)
    if backend is Backend.TRACEABLE:
        return traceable.precise_roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale,
                                          aligned)
    if rois.shape[0] == 0:
        return input.new_zeros((0, input.shape[1], pooled_h, pooled_w))
    start, extent = scaled_boxes(rois, spatial_scale, aligned, legacy_min_size=False)
    with full_precision(input):
        if backend is Backend.TRITON:
            return triton_ops().precise_roi_pool_triton(input, rois, (pooled_h, pooled_w), start,
                                                        extent)
        if backend is not Backend.SEPARABLE:
            raise ValueError(f"precise_roi_pool has no {backend.value} implementation")
        height, width = input.shape[-2:]
        axis_y = IntegratedBins(start[:, 1], extent[:, 1], pooled_h, height)
        axis_x = IntegratedBins(start[:, 0], extent[:, 0], pooled_w, width)
        return pool_separable(input, rois[:, 0].detach().long(), axis_y, axis_x)


class PreciseROIPool(nn.Module):
    """:func:`precise_roi_pool` as a module: ``forward(input, boxes)``."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float,
                 aligned: bool = False):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.aligned = aligned

    def forward(self, input: Tensor,
                boxes: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007 (TorchScript)
        if torch.jit.is_scripting():  # TorchScript cannot compile the dispatch (see .backends)
            return traceable.precise_roi_pool(input, rois_from_boxes(boxes, input),
                                              self.output_size, self.spatial_scale, self.aligned)
        return precise_roi_pool(input, boxes, self.output_size, self.spatial_scale, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"aligned={self.aligned}")

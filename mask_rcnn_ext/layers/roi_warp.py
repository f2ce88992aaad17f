"""RoIWarp (Dai et al., "Instance-aware Semantic Segmentation via Multi-task Network Cascades",
CVPR 2016), the Mask R-CNN paper's Table 2c ablation.

The RoI is first quantised to whole feature pixels, as RoIPool does: its edges are rounded to the
nearest pixel (halves up) after scaling, and clamped onto the map. The crop of pixels
``x_start .. x_end`` (inclusive) is then resized to the output size by bilinear interpolation with
``align_corners=False`` semantics (``torch.nn.functional.interpolate``): output column q samples
the crop at (q + 0.5) * crop_width / Q - 0.5, clamped onto the crop. The quantisation is what
RoIAlign removes; no gradient flows to the boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

from . import traceable
from ._utils import ScaledRoIModule
from .backends import Backend, choose_backend, triton_ops
from .rules import (
    checked_rois,
    full_precision,
    quantised_crop_extent,
    resized_crop_weights,
    validated_rois,
)
from .separable import AxisWeights, pool_separable, window_pixels

__all__ = ["roi_warp", "ROIWarp"]


class ResizedCrop(AxisWeights):
    """Bilinear resize of each crop ``start .. start + length - 1`` to ``pooled`` samples."""

    def __init__(self, start: Tensor, length: Tensor, pooled: int, dtype: torch.dtype):
        self.start, self.length, self.pooled, self.dtype = start, length, pooled, dtype

    def matrix(self, rows: Tensor, length: int) -> Tensor:
        offsets = window_pixels(torch.zeros_like(rows), length, self.dtype)
        return resized_crop_weights(self.length[rows], self.pooled, offsets)


@checked_rois
def roi_warp(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIWarp (see the module docstring): quantise, crop, bilinear resize -> (K, C, P, Q).

    Args:
        input: (N, C, H, W) features.
        boxes: (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels, or a list of N
            Tensor[L, 4].
        output_size: (P, Q), or one int for both.
        spatial_scale: feature-map pixels per image pixel.
    """
    pooled_h, pooled_w = _pair(output_size)
    rois = validated_rois(boxes, input).detach()
    backend = choose_backend("roi_warp", input)
    if backend is Backend.TRACEABLE:
        return traceable.roi_warp(input, rois, (pooled_h, pooled_w), spatial_scale)
    if rois.shape[0] == 0:
        return input.new_zeros((0, input.shape[1], pooled_h, pooled_w))
    height, width = input.shape[-2:]
    scaled = rois[:, 1:] * spatial_scale
    start_y, length_y = quantised_crop_extent(scaled[:, 1], scaled[:, 3], height)
    start_x, length_x = quantised_crop_extent(scaled[:, 0], scaled[:, 2], width)
    with full_precision(input):
        if backend is Backend.TRITON:
            return triton_ops().roi_warp_triton(input, rois, (pooled_h, pooled_w),
                                                torch.stack((start_x, start_y), 1),
                                                torch.stack((length_x, length_y), 1))
        if backend is not Backend.SEPARABLE:
            raise ValueError(f"roi_warp has no {backend.value} implementation")
        axis_y = ResizedCrop(start_y, length_y, pooled_h, rois.dtype)
        axis_x = ResizedCrop(start_x, length_x, pooled_w, rois.dtype)
        return pool_separable(input, rois[:, 0].long(), axis_y, axis_x)


class ROIWarp(ScaledRoIModule):
    """:func:`roi_warp` as a module: ``forward(input, boxes)``."""

    op = staticmethod(roi_warp)

    def scripted(self, input: Tensor, rois: Tensor) -> Tensor:
        return traceable.roi_warp(input, rois, self.output_size, self.spatial_scale)

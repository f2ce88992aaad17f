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

from torch import Tensor
from torch.nn.modules.utils import _pair

from .backends import RoIPoolingModule, pool

__all__ = ["roi_warp", "ROIWarp"]


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
    return pool("roi_warp", input, boxes, _pair(output_size), spatial_scale)


class ROIWarp(RoIPoolingModule):
    """:func:`roi_warp` as a module: ``forward(input, boxes)``."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__("roi_warp", output_size, spatial_scale)

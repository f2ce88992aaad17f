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

from torch import Tensor
from torch.nn.modules.utils import _pair

from .backends import RoIPoolingModule, pool

__all__ = ["precise_roi_pool", "PreciseROIPool"]


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
    return pool("precise_roi_pool", input, boxes, _pair(output_size), spatial_scale,
                aligned=aligned)


class PreciseROIPool(RoIPoolingModule):
    """:func:`precise_roi_pool` as a module: ``forward(input, boxes)``."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float,
                 aligned: bool = False):
        super().__init__("precise_roi_pool", output_size, spatial_scale, aligned=aligned)

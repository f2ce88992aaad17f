"""RoIPool (Fast R-CNN), the Mask R-CNN paper's Table 2c baseline: torchvision's kernel on every
device (CPU and CUDA), with boxes kept in float32 (:mod:`.torchvision_ops`)."""

from __future__ import annotations

from torch import Tensor
from torch.nn.modules.utils import _pair

from .backends import RoIPoolingModule, pool

__all__ = ["roi_pool", "ROIPool"]


def roi_pool(input: Tensor, boxes: Tensor | list[Tensor], output_size: int | tuple[int, int],
             spatial_scale: float = 1.0) -> Tensor:
    """torchvision's ``roi_pool`` with float32 boxes -> (K, C, P, Q) in the features' dtype.

    Args:
        input: (N, C, H, W) features.
        boxes: (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels, or a list of N
            Tensor[L, 4].
        output_size: (P, Q), or one int for both.
        spatial_scale: feature-map pixels per image pixel.
    """
    return pool("roi_pool", input, boxes, _pair(output_size), spatial_scale)


class ROIPool(RoIPoolingModule):
    """:func:`roi_pool` as a module: ``forward(input, boxes)``."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__("roi_pool", output_size, spatial_scale)

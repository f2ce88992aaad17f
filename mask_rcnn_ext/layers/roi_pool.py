"""RoIPool (Fast R-CNN), the Mask R-CNN paper's Table 2c baseline: torchvision's kernel on every
device (CPU and CUDA), with boxes kept in float32.

torchvision's ``roi_pool`` needs boxes in the features' dtype, and float16/bfloat16 boxes move by
whole pixels (1001 becomes 1000 in bfloat16). Low-precision features are therefore pooled in
float32 and the result cast back, as torchvision's own autocast wrapper does: a maximum of
float16 values is exact in float32, so only the boxes gain precision.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_pool as torchvision_roi_pool

from . import traceable
from ._utils import ScaledRoIModule, as_rois, checked_rois
from .backends import full_precision

__all__ = ["roi_pool", "ROIPool"]


@checked_rois
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
    rois = as_rois(boxes, input)
    with full_precision(input):
        return torchvision_roi_pool(input.to(rois.dtype), rois, _pair(output_size),
                                    spatial_scale).to(input.dtype)


class ROIPool(ScaledRoIModule):
    """:func:`roi_pool` as a module: ``forward(input, boxes)``."""

    op = staticmethod(roi_pool)

    def scripted(self, input: Tensor, rois: Tensor) -> Tensor:
        return traceable.roi_pool(input, rois, self.output_size, self.spatial_scale)

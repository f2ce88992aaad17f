"""RoIPool (Fast R-CNN), the Mask R-CNN paper's Table 2c baseline: torchvision's kernel on every
device (CPU and CUDA), with boxes kept in float32.

torchvision's ``roi_pool`` needs boxes in the features' dtype, and float16/bfloat16 boxes move by
whole pixels (1001 becomes 1000 in bfloat16). Low-precision features are therefore pooled in
float32 and the result cast back, as torchvision's own autocast wrapper does: a maximum of
float16 values is exact in float32, so only the boxes gain precision.

torchvision's CUDA backward adds with float atomics and refuses
``torch.use_deterministic_algorithms(True)``; there, the gradient is added instead by
``index_put_(accumulate=True)``, whose CUDA implementation is deterministic (it sorts the
indices), from the maxima's positions that torchvision's forward returns.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_pool as torchvision_roi_pool

from . import traceable
from ._utils import ScaledRoIModule
from .rules import checked_rois, full_precision, validated_rois

__all__ = ["roi_pool", "ROIPool"]


class _DeterministicRoIPool(torch.autograd.Function):
    """torchvision's RoIPool forward; each output's gradient added to its maximum's pixel by
    ``index_put_(accumulate=True)`` (deterministic on CUDA)."""

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: tuple[int, int],
                spatial_scale: float) -> Tensor:
        pooled, argmax = torch.ops.torchvision.roi_pool(features, rois, spatial_scale,
                                                        *output_size)
        ctx.save_for_backward(rois, argmax)
        ctx.shape = features.shape
        return pooled

    @staticmethod
    def backward(ctx, grad: Tensor):
        rois, argmax = ctx.saved_tensors
        _, channels, height, width = ctx.shape
        # argmax: the maximum's pixel within its (H, W) plane, -1 for an empty bin.
        plane = rois[:, 0].long()[:, None] * channels + torch.arange(channels, device=grad.device)
        found = argmax >= 0
        pixel = plane[:, :, None, None].expand_as(argmax) * (height * width) + argmax.long()
        grad_features = grad.new_zeros(ctx.shape)
        grad_features.view(-1).index_put_((pixel[found],), grad[found], accumulate=True)
        return grad_features, None, None, None


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
    rois = validated_rois(boxes, input)
    features = input.to(rois.dtype)
    with full_precision(input):
        if features.is_cuda and features.requires_grad and (
                torch.are_deterministic_algorithms_enabled()):
            pooled = _DeterministicRoIPool.apply(features, rois, _pair(output_size),
                                                 spatial_scale)
        else:
            pooled = torchvision_roi_pool(features, rois, _pair(output_size), spatial_scale)
    return pooled.to(input.dtype)


class ROIPool(ScaledRoIModule):
    """:func:`roi_pool` as a module: ``forward(input, boxes)``."""

    op = staticmethod(roi_pool)

    def scripted(self, input: Tensor, rois: Tensor) -> Tensor:
        return traceable.roi_pool(input, rois, self.output_size, self.spatial_scale)

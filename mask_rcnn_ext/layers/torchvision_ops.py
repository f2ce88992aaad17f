"""torchvision's RoI kernels as implementations of :mod:`.backends`' table, with boxes kept in
float32: torchvision's ops need boxes in the features' dtype, and float16/bfloat16 boxes move by
whole pixels (1001 becomes 1000 in bfloat16). Low-precision features are therefore pooled in
float32 and the result cast back, as torchvision's own autocast wrapper does (a maximum of float16
values is exact in float32, so only the boxes gain precision).

torchvision's CUDA RoIPool backward adds with float atomics and refuses
``torch.use_deterministic_algorithms(True)``; there, the gradient is added instead by
``index_put_(accumulate=True)``, whose CUDA implementation is deterministic (it sorts the
indices), from the maxima's positions that torchvision's forward returns.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align
from torchvision.ops import roi_pool as torchvision_roi_pool

__all__ = ["roi_align", "roi_pool"]


def roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool, mode: str) -> Tensor:
    """torchvision's ``roi_align`` (average only; ``mode`` is "avg")."""
    if mode != "avg":
        raise ValueError(f"roi_align: torchvision has no mode={mode!r}")
    return torchvision_roi_align(input.to(rois.dtype), rois, output_size, spatial_scale,
                                 sampling_ratio, aligned).to(input.dtype)


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


def roi_pool(input: Tensor, rois: Tensor, output_size: tuple[int, int],
             spatial_scale: float) -> Tensor:
    """torchvision's ``roi_pool``; in deterministic mode on CUDA, with the gradient above."""
    features = input.to(rois.dtype)
    if features.is_cuda and features.requires_grad and (
            torch.are_deterministic_algorithms_enabled()):
        pooled = _DeterministicRoIPool.apply(features, rois, output_size, spatial_scale)
    else:
        pooled = torchvision_roi_pool(features, rois, output_size, spatial_scale)
    return pooled.to(input.dtype)

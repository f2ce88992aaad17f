"""What the RoI ops share: boxes in the ops' (K, 5) format, the checks of their inputs, and the
module wrapper of the ops that have no options beyond output size and scale."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from . import traceable

__all__ = ["ScaledRoIModule", "as_rois", "checked_rois"]


def as_rois(boxes: Tensor | list[Tensor], features: Tensor) -> Tensor:
    """Boxes, validated, as a (K, 5) tensor of (batch_index, x1, y1, x2, y2), in float32 (float64
    for float64 features): never in a low-precision feature dtype, which would move boxes by whole
    pixels."""
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if isinstance(boxes, (list, tuple)):
        for i, per_image in enumerate(boxes):
            if per_image.dim() != 2 or per_image.shape[1] != 4:
                raise ValueError(
                    f"boxes[{i}] must be a Tensor[L, 4], got shape {tuple(per_image.shape)}"
                )
    elif not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {shape}")
    return traceable.as_rois(list(boxes) if isinstance(boxes, tuple) else boxes, features)


def _check_batch_indices(rois: Tensor, num_images: int) -> None:
    """Raise unless every RoI's batch index is an integer in 0 .. ``num_images`` - 1 (a -1 would
    pool the last image, as negative Python indices do). On CUDA, a device-side assertion, as
    PyTorch's own indexing kernels check their indices: no host synchronisation."""
    index = rois[:, 0]
    valid = (index >= 0) & (index < num_images) & (index == index.floor())
    if rois.device.type != "cuda":
        if not bool(valid.all()):
            row = int((~valid).nonzero()[0])
            raise ValueError(f"boxes row {row}: batch index {index[row].item()} is not the index "
                             f"of one of the {num_images} images (an integer 0 .. "
                             f"{num_images - 1})")
        return
    torch._assert_async(valid.all(), "RoI op: a batch index in boxes[:, 0] is not the index of "
                                     "an image in the features")


def checked_rois(op: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """An eager RoI op ``op(input, boxes, output_size, ...)`` with its inputs checked:

    - boxes validated (:func:`as_rois`) and batch indices checked (an error, see
      :func:`_check_batch_indices`);
    - a box with a NaN or Inf coordinate pools to zeros, with zero gradients, on every device and
      backend (torchvision's kernels read out of bounds or crash on them; a NaN box is what a
      diverged box regression gives, and it must not turn the other RoIs' values into NaN);
    - features with 0 channels give a (K, 0, P, Q) output.

    A trace records none of this: an exported graph has no data-dependent checks."""

    @functools.wraps(op)
    def checked(input: Tensor, boxes: Tensor | list[Tensor], output_size, *args, **kwargs):
        if torch.jit.is_tracing():
            return op(input, boxes, output_size, *args, **kwargs)
        rois = as_rois(boxes, input)
        if input.shape[1] == 0:
            return input.new_zeros((rois.shape[0], 0, *_pair(output_size)))
        _check_batch_indices(rois, input.shape[0])
        finite = torch.isfinite(rois[:, 1:]).all(dim=1)
        if rois.device.type != "cuda" and bool(finite.all()):  # known without a host sync
            return op(input, rois, output_size, *args, **kwargs)
        pooled = op(input, torch.where(finite[:, None], rois, 0.0), output_size, *args, **kwargs)
        return torch.where(finite[:, None, None, None], pooled, 0.0)

    return checked


class ScaledRoIModule(nn.Module):
    """An RoI op ``op(input, boxes, output_size, spatial_scale)`` as a module whose ``forward``
    takes (input, boxes); subclasses set ``op`` and define ``scripted``, the op in its
    :mod:`.traceable` formulation (TorchScript compiles no call through ``type(self)``)."""

    op: Callable[..., Tensor]

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor,
                boxes: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007 (TorchScript)
        if torch.jit.is_scripting():
            return self.scripted(input, traceable.as_rois(boxes, input))
        return type(self).op(input, boxes, self.output_size, self.spatial_scale)

    def scripted(self, input: Tensor, rois: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no scripted formulation")

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"

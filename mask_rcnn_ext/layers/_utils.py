"""What the RoI ops share: boxes in the ops' (K, 5) format, and the module wrapper of the ops that
have no options beyond output size and scale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from . import traceable

__all__ = ["ScaledRoIModule", "as_rois"]


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

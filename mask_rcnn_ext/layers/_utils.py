"""The module wrapper of the RoI ops that have no options beyond output size and scale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .rules import rois_from_boxes

__all__ = ["ScaledRoIModule"]


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
            return self.scripted(input, rois_from_boxes(boxes, input))
        return type(self).op(input, boxes, self.output_size, self.spatial_scale)

    def scripted(self, input: Tensor, rois: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no scripted formulation")

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"

"""The module form of the RoI ops: one class, whose ``forward`` is the one place that forks for
TorchScript."""

from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .backends import pool
from .rules import rois_from_boxes

__all__ = ["RoIPoolingModule"]


class RoIPoolingModule(nn.Module):
    """An RoI op as a module: ``forward(input, boxes)`` pools ``computation`` (a row of
    :data:`.backends.IMPLEMENTATIONS`) with the module's :meth:`options`. Scripted, it runs
    :meth:`scripted`, the op's :mod:`.traceable` formulation: TorchScript cannot compile the
    dispatch (and compiles no call through ``type(self)``)."""

    computation: str  # (no postponed annotations in this file: TorchScript reads this one)
    # Which implementation runs (see .backends.check_backend); "auto": the table's choice.
    backend: str = "auto"

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor,
                boxes: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007 (TorchScript)
        if torch.jit.is_scripting():
            return self.scripted(input, rois_from_boxes(boxes, input))
        return self.pooled(input, boxes)

    @torch.jit.unused
    def pooled(self, input: Tensor,
               boxes: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007 (TorchScript)
        """The eager (and traced) op: :func:`.backends.pool`."""
        return pool(self.computation, input, boxes, self.output_size, self.spatial_scale,
                    backend=self.backend, **self.options())

    def options(self) -> dict:
        """The computation's options beyond output size and scale."""
        return {}

    def scripted(self, input: Tensor, rois: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no scripted formulation")

    def extra_repr(self) -> str:
        options = {**self.options(), **({"backend": self.backend} if self.backend != "auto"
                                        else {})}
        listed = "".join(f", {key}={value!r}" for key, value in options.items())
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}{listed}"

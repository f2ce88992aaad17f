"""What the RoI ops share: boxes in the ops' (K, 5) format, their extent on the feature map, and
the module wrapper of the ops that have no options beyond output size and scale."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .backends import compute_dtype

__all__ = ["ScaledRoIModule", "as_rois", "scaled_boxes"]


def as_rois(boxes: Tensor | list[Tensor], features: Tensor) -> Tensor:
    """Boxes as a (K, 5) tensor of (batch_index, x1, y1, x2, y2), in float32 (float64 for float64
    features): never in a low-precision feature dtype, which would move boxes by whole pixels."""
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    dtype = compute_dtype(features)
    if isinstance(boxes, (list, tuple)):
        for i, per_image in enumerate(boxes):
            if per_image.dim() != 2 or per_image.shape[1] != 4:
                raise ValueError(
                    f"boxes[{i}] must be a Tensor[L, 4], got shape {tuple(per_image.shape)}"
                )
        index = torch.cat([
            torch.full((len(b), 1), i, dtype=dtype, device=features.device)
            for i, b in enumerate(boxes)
        ]) if boxes else features.new_zeros((0, 1), dtype=dtype)
        coordinates = (torch.cat(list(boxes)) if boxes
                       else features.new_zeros((0, 4), dtype=dtype))
        return torch.cat((index, coordinates.to(device=features.device, dtype=dtype)), dim=1)
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {shape}")
    return boxes.to(device=features.device, dtype=dtype)


def scaled_boxes(rois: Tensor, spatial_scale: float, aligned: bool,
                 legacy_min_size: bool) -> tuple[Tensor, Tensor]:
    """(x, y) start and extent (K, 2) of each RoI in feature pixels: scaled, shifted by -0.5 if
    ``aligned``; with ``legacy_min_size`` (unaligned RoIAlign) extents are at least 1 pixel."""
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:3] * spatial_scale - offset
    extent = rois[:, 3:5] * spatial_scale - offset - start
    if legacy_min_size and not aligned:
        extent = extent.clamp(min=1.0)
    return start, extent


class ScaledRoIModule(nn.Module):
    """An RoI op ``op(input, boxes, output_size, spatial_scale)`` as a module whose ``forward``
    takes (input, boxes); subclasses set ``op``."""

    op: Callable[..., Tensor]

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
        return type(self).op(input, boxes, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"

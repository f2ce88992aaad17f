"""A multi-level RoI pooler whose pooling op is looked up by name in :data:`POOLER_REGISTRY`.

:class:`ROIPooler` is a drop-in replacement for ``detectron2.modeling.poolers.ROIPooler`` (same
arguments, same FPN level assignment: Eqn. 1 of the FPN paper with a canonical box size of 224
pixels at level 4), which hard-codes four pooler types. Adding a type is registering it::

    @POOLER_REGISTRY.register()
    def MyPooler(output_size, spatial_scale, sampling_ratio):
        return MyPoolingModule(...)   # forward(features (N, C, H, W), rois (K, 5)) -> (K, C, P, Q)
"""

from __future__ import annotations

import math

import torch
from detectron2 import layers as detectron2_layers
from detectron2.modeling.poolers import assign_boxes_to_levels, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from detectron2.utils.registry import Registry
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from mask_rcnn_ext import layers
from mask_rcnn_ext.layers.backends import AUTO, RoIPoolingModule, check_backend
from mask_rcnn_ext.layers.rules import compute_dtype

__all__ = ["POOLER_REGISTRY", "ROIPooler"]

POOLER_REGISTRY = Registry("ROI_POOLER")
POOLER_REGISTRY.__doc__ = """
RoI pooler types for :class:`ROIPooler`. A registered object is called as
``obj(output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int)`` and returns an
``nn.Module`` mapping (features (N, C, H, W), rois (K, 5) of (batch_index, x1, y1, x2, y2) in image
pixels) to (K, C, *output_size). Types that do not sample ignore ``sampling_ratio``.
"""


# Each factory is named as its pooler type: the registry takes names from ``__name__``.


@POOLER_REGISTRY.register()
def ROIAlign(output_size, spatial_scale, sampling_ratio):
    """Average RoIAlign without the half-pixel shift (Detectron2's legacy "ROIAlign")."""
    return layers.ROIAlign(output_size, spatial_scale, sampling_ratio, aligned=False)


@POOLER_REGISTRY.register()
def ROIAlignV2(output_size, spatial_scale, sampling_ratio):
    """Average RoIAlign with the half-pixel shift (Detectron2's "ROIAlignV2")."""
    return layers.ROIAlign(output_size, spatial_scale, sampling_ratio, aligned=True)


@POOLER_REGISTRY.register()
def ROIAlignMax(output_size, spatial_scale, sampling_ratio):
    """RoIAlign taking the maximum of each bin's bilinear samples (paper Sec. 3), half-pixel."""
    return layers.ROIAlign(output_size, spatial_scale, sampling_ratio, aligned=True, mode="max")


@POOLER_REGISTRY.register()
def PreciseROIPool(output_size, spatial_scale, sampling_ratio):
    """Precise RoI pooling (exact bin integrals), with the half-pixel convention of ROIAlignV2."""
    return layers.PreciseROIPool(output_size, spatial_scale, aligned=True)


@POOLER_REGISTRY.register()
def ROIWarp(output_size, spatial_scale, sampling_ratio):
    """RoIWarp: RoI quantised to the feature grid, then bilinearly resized (paper Table 2c)."""
    return layers.ROIWarp(output_size, spatial_scale)


@POOLER_REGISTRY.register()
def ROIPool(output_size, spatial_scale, sampling_ratio):
    """RoIPool (torchvision's kernel): quantised bins, max pooling (paper Table 2c)."""
    return layers.ROIPool(output_size, spatial_scale)


@POOLER_REGISTRY.register()
def ROIAlignRotated(output_size, spatial_scale, sampling_ratio):
    """Detectron2's rotated RoIAlign; boxes are RotatedBoxes (rois (K, 6))."""
    return detectron2_layers.ROIAlignRotated(output_size, spatial_scale, sampling_ratio)


class ROIPooler(nn.Module):
    """Pools RoI features from an FPN, each box from the level its size selects.

    Args:
        output_size: (P, Q) or one int.
        scales: 1 / stride of each feature map, a decreasing sequence of powers of 1/2.
        sampling_ratio: passed to pooler types that sample.
        pooler_type: a name in :data:`POOLER_REGISTRY`.
        canonical_box_size, canonical_level: a box of ``canonical_box_size`` pixels (sqrt of its
            area) is pooled from level ``canonical_level`` (FPN paper: 224 and 4).
        backend: which implementation pools ("auto": the choice of
            :mod:`mask_rcnn_ext.layers.backends` by device and mode; or one of its backends,
            e.g. "separable" in place of a GPU kernel). Errors name it ``backend_key`` and,
            given ``device``, refuse a backend that cannot run there.
    """

    def __init__(self, output_size, scales, sampling_ratio, pooler_type,
                 canonical_box_size=224, canonical_level=4, backend: str = AUTO, *,
                 backend_key: str = "backend", device: str | None = None):
        super().__init__()
        self.output_size = _pair(output_size)
        if pooler_type not in POOLER_REGISTRY:
            known = ", ".join(sorted(name for name, _ in POOLER_REGISTRY))
            raise ValueError(f"Unknown pooler type {pooler_type!r}; registered: {known}")
        make = POOLER_REGISTRY.get(pooler_type)
        self.level_poolers = nn.ModuleList(
            make(self.output_size, scale, sampling_ratio) for scale in scales
        )
        for pooler in self.level_poolers:
            if isinstance(pooler, RoIPoolingModule):
                check_backend(pooler.computation, backend, device, key=backend_key)
                pooler.backend = backend
            elif backend != AUTO:
                raise ValueError(f"{backend_key} is {backend!r}, but pooler type {pooler_type!r} "
                                 "has no implementations to choose from; set it to 'auto'")
        min_level, max_level = -math.log2(scales[0]), -math.log2(scales[-1])
        if not (math.isclose(min_level, round(min_level))
                and math.isclose(max_level, round(max_level))):
            raise ValueError(f"ROIPooler: feature strides must be powers of 2, got scales {scales}")
        self.min_level, self.max_level = round(min_level), round(max_level)
        if len(scales) != self.max_level - self.min_level + 1:
            raise ValueError(f"ROIPooler: scales {scales} do not form a pyramid")
        if canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be positive, got {canonical_box_size}")
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, x: list[Tensor], box_lists: list[Boxes]) -> Tensor:
        """x: one (N, C, H, W) map per scale; box_lists: N Boxes in image pixels -> (M, C, P, Q)."""
        if len(x) != len(self.level_poolers):
            raise ValueError(f"ROIPooler has {len(self.level_poolers)} levels, got {len(x)} maps")
        # Traced, the batch size is a tensor: the check would become a constant of the trace.
        if not torch.jit.is_tracing() and len(box_lists) != x[0].shape[0]:
            raise ValueError(f"{len(box_lists)} box lists for a batch of {x[0].shape[0]} images")
        height, width = self.output_size
        if len(box_lists) == 0:
            return x[0].new_zeros((0, x[0].shape[1], height, width))
        # Boxes stay float32 (float64 for float64 features) whatever the features' dtype: in
        # float16/bfloat16 they would move by whole pixels. Every registered op accepts them.
        rois = convert_boxes_to_pooler_format(box_lists).to(compute_dtype(x[0]))
        if len(self.level_poolers) == 1:
            return self.level_poolers[0](x[0], rois)
        levels = assign_boxes_to_levels(box_lists, self.min_level, self.max_level,
                                        self.canonical_box_size, self.canonical_level)
        indices, pooled = [], []
        # Indexing by position, not zip: TorchScript iterates a ModuleList only by itself.
        for level, pooler in enumerate(self.level_poolers):
            # Every level pools, even without boxes: a trace records only the calls it sees.
            index = torch.nonzero(levels == level).squeeze(1)
            indices.append(index)
            pooled.append(pooler(x[level], rois[index]))
        # One write back into RoI order: a write per level would make autograd copy the whole
        # output gradient once per level (measured: 8% of the box head's forward+backward on CPU).
        # Zeros, not empty: a box whose level is undefined (NaN) pools zeros, as in Detectron2.
        output = x[0].new_zeros((rois.shape[0], x[0].shape[1], height, width))
        return output.index_put_((torch.cat(indices),), torch.cat(pooled))

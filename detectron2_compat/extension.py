"""The stand-in for Detectron2's compiled module ``detectron2._C``.

When ``make setup`` builds the registry's Detectron2 sources (which lack the C++ sources), it
installs ``detectron2/_C.py`` as a one-line re-export of this module. Every entry point that
Detectron2 v0.6 calls through ``_C`` or ``torch.ops.detectron2`` is here and works:

==================================  =================================================
entry point                         implementation
==================================  =================================================
box_iou_rotated, nms_rotated        PyTorch (:mod:`detectron2_compat.rotated`)
roi_align_rotated_forward/backward  PyTorch (:mod:`detectron2_compat.rotated`)
deform_conv_*, modulated_*          torchvision.ops.deform_conv2d
COCOevalEvaluateImages/Accumulate   faster-coco-eval's C++ evaluator
==================================  =================================================
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cocoeval import (
    COCOevalAccumulate,
    COCOevalEvaluateImages,
    ImageEvaluation,
    InstanceAnnotation,
)
from .deform_conv import (
    deform_conv_backward_filter,
    deform_conv_backward_input,
    deform_conv_forward,
    modulated_deform_conv_backward,
    modulated_deform_conv_forward,
)
from .rotated import (
    box_iou_rotated,
    nms_rotated,
    roi_align_rotated_backward,
    roi_align_rotated_forward,
)

__all__ = [
    "IS_COMPAT_LAYER",
    "COCOevalAccumulate",
    "COCOevalEvaluateImages",
    "ImageEvaluation",
    "InstanceAnnotation",
    "box_iou_rotated",
    "deform_conv_backward_filter",
    "deform_conv_backward_input",
    "deform_conv_forward",
    "get_compiler_version",
    "get_cuda_version",
    "has_cuda",
    "modulated_deform_conv_backward",
    "modulated_deform_conv_forward",
    "nms_rotated",
    "roi_align_rotated_backward",
    "roi_align_rotated_forward",
]

# Lets tools tell this layer from an upstream compiled extension.
IS_COMPAT_LAYER = True


def get_compiler_version() -> str:
    return "none: mask_rcnn_ext compatibility layer (PyTorch, torchvision, faster-coco-eval)"


def get_cuda_version() -> str:
    return "not compiled: the ops run on CUDA through PyTorch and torchvision"


def has_cuda() -> bool:
    """Whether compiled CUDA kernels are present (Detectron2 then inspects their arch flags)."""
    return False


def _register_torch_ops() -> None:
    """Define ``torch.ops.detectron2.nms_rotated`` for ``batched_nms_rotated``."""
    if hasattr(torch.ops.detectron2, "nms_rotated"):
        return

    @torch.library.custom_op("detectron2::nms_rotated", mutates_args=())
    def _nms_rotated_op(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
        return nms_rotated(dets, scores, iou_threshold)


_register_torch_ops()

"""Detectron2 components; importing this module registers them."""

from .mask_head import MaskHeadBase, MaskRCNNFCNHead, MaskRCNNMLPHead
from .mask_scoring import MaskIoUHead, MaskScoringHead
from .poolers import POOLER_REGISTRY, ROIPooler
from .roi_heads import MaskRCNNExtRes5ROIHeads, MaskRCNNExtROIHeads
from .speedups import apply_speedups, fold_frozen_batchnorm

__all__ = ["POOLER_REGISTRY", "ROIPooler", "MaskHeadBase", "MaskRCNNFCNHead", "MaskRCNNMLPHead",
           "MaskIoUHead", "MaskScoringHead", "MaskRCNNExtROIHeads", "MaskRCNNExtRes5ROIHeads",
           "apply_speedups",
           "fold_frozen_batchnorm"]

"""R-50-FPN 1x with mask scoring: configs/COCO/mask_scoring_R_50_FPN_1x.yaml as a LazyConfig."""

from ..common.mask_rcnn_ext_fpn import with_mask_scoring
from .mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

with_mask_scoring(model)

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

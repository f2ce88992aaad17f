"""The small CPU model with mask scoring: configs/Synthetic/mask_scoring_R_18_FPN_cpu.yaml as a
LazyConfig."""

from ..common.mask_rcnn_ext_fpn import with_mask_scoring
from .mask_rcnn_R_18_FPN_cpu import dataloader, lr_multiplier, model, optimizer, train

with_mask_scoring(model, conv_dim=128, fc_dim=512)

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

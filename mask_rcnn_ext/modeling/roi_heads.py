"""``MaskRCNNExtROIHeads``: Detectron2's StandardROIHeads with poolers from
:data:`POOLER_REGISTRY` and an optional mask-scoring branch.

Proposal sampling, the box head and its losses are StandardROIHeads' own. Only the poolers and
the mask branch change, and with the defaults (a stock pooler type, mask scoring off) the model is
stock Mask R-CNN: the same parameters under the same names, the same losses and outputs.
"""

from __future__ import annotations

import logging

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    StandardROIHeads,
    select_foreground_proposals,
)
from detectron2.structures import Instances
from torch import Tensor

from .mask_head import MaskRCNNFCNHead, cropped_gt_masks, mask_probabilities
from .mask_scoring import MaskIoUHead, full_gt_areas, mask_iou_loss, mask_iou_targets
from .poolers import ROIPooler

__all__ = ["MaskRCNNExtROIHeads"]

logger = logging.getLogger(__name__)


def _with_registry_pooler(init, cfg, input_shape, head_cfg_name: str, branch: str) -> dict:
    """Build a branch with StandardROIHeads' own ``_init_*_head``, then give it a pooler from
    POOLER_REGISTRY. Detectron2's builder only knows its own four pooler types; the branch's other
    parts do not depend on the type, so they are built with a stock one."""
    head_cfg = getattr(cfg.MODEL, head_cfg_name)
    pooler_type = head_cfg.POOLER_TYPE
    stock = cfg.clone()
    stock.defrost()
    if pooler_type:
        getattr(stock.MODEL, head_cfg_name).POOLER_TYPE = "ROIAlignV2"
    ret = init(stock, input_shape)
    if pooler_type and f"{branch}_pooler" in ret:
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        ret[f"{branch}_pooler"] = ROIPooler(
            output_size=head_cfg.POOLER_RESOLUTION,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
            pooler_type=pooler_type,
        )
    return ret


@ROI_HEADS_REGISTRY.register()
class MaskRCNNExtROIHeads(StandardROIHeads):
    """StandardROIHeads with registry poolers and optional mask scoring (MaskIoU head)."""

    @configurable
    def __init__(self, *, mask_iou_head: MaskIoUHead | None = None,
                 mask_iou_loss_weight: float = 1.0, mask_iou_threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.mask_iou_head = mask_iou_head
        self.mask_iou_loss_weight = mask_iou_loss_weight
        self.mask_iou_threshold = mask_iou_threshold
        if mask_iou_head is not None and not isinstance(self.mask_head, MaskRCNNFCNHead):
            raise ValueError(
                "MODEL.ROI_MASK_SCORING.ENABLED needs MODEL.ROI_MASK_HEAD.NAME: MaskRCNNFCNHead, "
                f"got {type(self.mask_head).__name__}"
            )

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        if cfg.MODEL.MASK_ON and cfg.MODEL.ROI_MASK_SCORING.ENABLED:
            in_channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
            ret["mask_iou_head"] = MaskIoUHead(cfg, in_channels)
            ret["mask_iou_loss_weight"] = cfg.MODEL.ROI_MASK_SCORING.LOSS_WEIGHT
            ret["mask_iou_threshold"] = cfg.MODEL.ROI_MASK_SCORING.MASK_THRESHOLD
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        return _with_registry_pooler(super()._init_box_head, cfg, input_shape, "ROI_BOX_HEAD",
                                     "box")

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return _with_registry_pooler(super()._init_mask_head, cfg, input_shape, "ROI_MASK_HEAD",
                                     "mask")

    def _forward_mask(self, features: dict[str, Tensor], instances: list[Instances]):
        if self.mask_iou_head is None:
            return super()._forward_mask(features, instances)
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        pooled = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        logits = self.mask_head.layers(pooled)
        if self.training:
            return {
                "loss_mask": self.mask_head.losses(logits, instances) * self.mask_head.loss_weight,
                "loss_maskiou": self._mask_iou_loss(pooled, logits, instances),
            }
        self.mask_head.inference(logits, instances)
        self._rescore(pooled, logits, instances)
        return instances

    def _mask_iou_loss(self, pooled: Tensor, logits: Tensor, instances: list[Instances]) -> Tensor:
        gt_masks, classes = cropped_gt_masks(instances, logits.shape[-1])
        if classes.numel() == 0:
            return logits.sum() * 0
        gt_masks, classes = gt_masks.to(logits.device), classes.to(logits.device)
        # The MaskIoU branch reads the predicted mask but does not train the mask head.
        probabilities = mask_probabilities(logits, classes, self.mask_head.loss).detach()
        gt_areas, box_areas = full_gt_areas(instances)
        targets = mask_iou_targets(probabilities, gt_masks, gt_areas.to(logits.device),
                                   box_areas.to(logits.device), self.mask_iou_threshold)
        predicted = self.mask_iou_head(pooled, probabilities)
        return mask_iou_loss(predicted, classes, targets) * self.mask_iou_loss_weight

    def _rescore(self, pooled: Tensor, logits: Tensor, instances: list[Instances]) -> None:
        """score = class score x predicted IoU of the predicted class's mask (kept as
        ``pred_mask_iou``; the class score stays as ``box_scores``)."""
        classes = cat([i.pred_classes for i in instances]) if instances else None
        if classes is None or classes.numel() == 0:
            for per_image in instances:
                per_image.pred_mask_iou = per_image.scores.new_zeros(0)
                per_image.box_scores = per_image.scores
            return
        probabilities = mask_probabilities(logits, classes.long(), self.mask_head.loss)
        predicted = self.mask_iou_head(pooled, probabilities)
        iou = predicted[torch.arange(len(classes), device=classes.device), classes.long()]
        iou = iou.clamp(0, 1)
        for per_image, per_image_iou in zip(instances, iou.split([len(i) for i in instances]),
                                            strict=True):
            per_image.pred_mask_iou = per_image_iou
            per_image.box_scores = per_image.scores
            per_image.scores = per_image.scores * per_image_iou

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Stock Mask R-CNN checkpoints have no MaskIoU branch: say which keys start untrained."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self.mask_iou_head is not None and not any(
                key.startswith(prefix + "mask_iou_head.") for key in state_dict):
            names = sorted(prefix + "mask_iou_head." + k for k in self.mask_iou_head.state_dict())
            logger.warning("The checkpoint has no mask-scoring branch; these %d parameters keep "
                           "their initial values: %s", len(names), ", ".join(names))


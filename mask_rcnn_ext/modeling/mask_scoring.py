"""Mask scoring (Huang et al., "Mask Scoring R-CNN", CVPR 2019): a MaskIoU head regresses the IoU
between each predicted mask and its ground truth, and at inference an instance's score becomes
class score x predicted mask IoU.

``MaskScoringHead`` (``MODEL.ROI_MASK_HEAD.NAME: MaskScoringHead``) is the FCN mask head with the
MaskIoU branch inside it, so that any ROI heads that run a mask head run it.
"""

from __future__ import annotations

import logging

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import BitMasks, Instances, PolygonMasks
from torch import Tensor, nn

from .mask_head import (
    HeadBranch,
    MaskRCNNFCNHead,
    cropped_gt_masks,
    instance_counts,
    mask_probabilities,
    predicted_classes,
)

__all__ = ["MaskIoUHead", "MaskScoringHead", "full_gt_areas", "mask_iou_loss",
           "mask_iou_targets"]

logger = logging.getLogger(__name__)


class MaskIoUHead(HeadBranch):
    """[pooled mask features, max-pooled predicted mask] -> predicted IoU per class (N, K).

    Convolutions (3x3, ReLU; the last with stride 2), fc layers (ReLU), and an fc to K outputs,
    as the paper's MaskIoU head; its children are these layers in order.
    """

    @configurable
    def __init__(self, *, in_channels: int, pooled_side: int, mask_side: int, num_classes: int,
                 num_conv: int, conv_dim: int, num_fc: int, fc_dim: int):
        super().__init__()
        self.downsample = mask_side // pooled_side
        channels = in_channels + 1
        convs, fcs = [], []
        for k in range(num_conv):
            stride = 2 if k == num_conv - 1 else 1
            conv = Conv2d(channels, conv_dim, kernel_size=3, stride=stride, padding=1,
                          activation=nn.ReLU())
            self.add_module(f"maskiou_conv{k + 1}", conv)
            convs.append(conv)
            channels = conv_dim
        self.flatten = nn.Flatten()
        side = (pooled_side + 1) // 2 if num_conv else pooled_side
        inputs = channels * side * side
        for k in range(num_fc):
            fc = nn.Linear(inputs, fc_dim)
            self.add_module(f"maskiou_fc{k + 1}", fc)
            self.add_module(f"maskiou_fc{k + 1}_relu", nn.ReLU())
            fcs.append(fc)
            inputs = fc_dim
        self.predictor = nn.Linear(inputs, num_classes)
        for conv in convs:
            weight_init.c2_msra_fill(conv)
        for fc in fcs:
            weight_init.c2_xavier_fill(fc)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        """input_shape: the mask head's input (in the res5 head, res5's output, not the pooled
        features)."""
        scoring = cfg.MODEL.ROI_MASK_SCORING
        head = cfg.MODEL.ROI_MASK_HEAD
        return {
            "in_channels": input_shape.channels,
            "pooled_side": input_shape.height,
            "mask_side": head.OUTPUT_RESOLUTION,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "num_conv": scoring.NUM_CONV,
            "conv_dim": scoring.CONV_DIM,
            "num_fc": scoring.NUM_FC,
            "fc_dim": scoring.FC_DIM,
        }

    def forward(self, features: Tensor, mask_probabilities: Tensor) -> Tensor:
        """features (N, C, P, P), mask_probabilities (N, R, R) -> (N, K)."""
        masks = F.max_pool2d(mask_probabilities[:, None], self.downsample, self.downsample)
        x = torch.cat((features, masks), dim=1)
        for layer in self.children():
            x = layer(x)
        return x


def mask_iou_targets(mask_probabilities: Tensor, gt_masks: Tensor, gt_areas: Tensor,
                     box_areas: Tensor, threshold: float) -> Tensor:
    """IoU of each binarised predicted mask with its whole ground-truth object -> (N,).

    Args:
        mask_probabilities: (N, R, R) predicted probabilities over each proposal box.
        gt_masks: (N, R, R) bool, the matched ground truth cropped to the box and resized.
        gt_areas: (N,) the ground-truth objects' full areas, in image pixels.
        box_areas: (N,) the proposal boxes' areas, in image pixels.
        threshold: probability above which a pixel belongs to the predicted mask.

    The prediction lives inside the box, but the object may extend past it: the union uses the
    object's full area, rescaled to the R x R grid (R^2 / box area grid cells per image pixel), as
    the paper does with its area ratio.
    """
    predicted = mask_probabilities > threshold
    intersection = (predicted & gt_masks).flatten(1).sum(1).float()
    predicted_area = predicted.flatten(1).sum(1).float()
    cells = mask_probabilities.shape[-1] * mask_probabilities.shape[-2]
    gt_area = gt_areas.float() * cells / box_areas.float().clamp(min=1e-6)
    union = predicted_area + gt_area - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-6), 0)


def mask_iou_loss(predicted_iou: Tensor, classes: Tensor, targets: Tensor) -> Tensor:
    """L2 between the ground-truth class's predicted IoU and its target, averaged over proposals
    whose target is positive (mmdetection's MaskIoUHead does the same); 0 if there are none."""
    chosen = predicted_iou[torch.arange(len(classes), device=classes.device), classes]
    positive = targets > 0
    if not bool(positive.any()):
        return predicted_iou.sum() * 0
    return F.mse_loss(chosen[positive], targets[positive])


def _mask_areas(masks: PolygonMasks | BitMasks) -> Tensor:
    if isinstance(masks, BitMasks):  # Detectron2 v0.6's BitMasks has no area()
        return masks.tensor.flatten(1).sum(1)
    return masks.area()


def full_gt_areas(instances: list[Instances]) -> tuple[Tensor, Tensor]:
    """Per foreground proposal: its object's full area and its box's area, in image pixels."""
    areas = [_mask_areas(i.gt_masks).to(i.proposal_boxes.device).float()
             for i in instances if len(i)]
    boxes = [i.proposal_boxes.area() for i in instances if len(i)]
    if not areas:
        return torch.zeros(0), torch.zeros(0)
    return cat(areas), cat(boxes)


@ROI_MASK_HEAD_REGISTRY.register()
class MaskScoringHead(MaskRCNNFCNHead):
    """:class:`MaskRCNNFCNHead` plus a MaskIoU branch (``mask_iou_head``) on the same pooled
    features: trained with an extra ``loss_maskiou``; at inference each instance gets
    ``pred_mask_iou``, keeps its class score as ``box_scores``, and ``scores`` becomes
    class score x predicted IoU."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, mask_iou_head: MaskIoUHead,
                 mask_iou_loss_weight: float = 1.0, mask_iou_threshold: float = 0.5, **kwargs):
        """
        Args:
            mask_iou_head: the MaskIoU branch.
            mask_iou_loss_weight: weight of ``loss_maskiou``.
            mask_iou_threshold: probability above which a pixel is in the predicted mask, for
                the IoU targets.
            input_shape, kwargs: as for :class:`MaskRCNNFCNHead`.
        """
        super().__init__(input_shape, **kwargs)
        self.mask_iou_head = mask_iou_head
        self.mask_iou_loss_weight = mask_iou_loss_weight
        self.mask_iou_threshold = mask_iou_threshold

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        scoring = cfg.MODEL.ROI_MASK_SCORING
        ret.update(mask_iou_head=MaskIoUHead(cfg, input_shape),
                   mask_iou_loss_weight=scoring.LOSS_WEIGHT,
                   mask_iou_threshold=scoring.MASK_THRESHOLD)
        return ret

    def forward(self, x: Tensor, instances: list[Instances]):
        logits = self.layers(x)
        if self.training:
            assert not torch.jit.is_scripting(), "scripted mask heads run inference only"
            return {"loss_mask": self.losses(logits, instances) * self.loss_weight,
                    "loss_maskiou": self._mask_iou_loss(x, logits, instances)}
        self.inference(logits, instances)
        self._rescore(x, logits, instances)
        return instances

    @torch.jit.unused
    def _mask_iou_loss(self, pooled: Tensor, logits: Tensor, instances: list[Instances]) -> Tensor:
        gt_masks, classes = cropped_gt_masks(instances, logits.shape[-1])
        if classes.numel() == 0:
            return logits.sum() * 0
        gt_masks, classes = gt_masks.to(logits.device), classes.to(logits.device)
        # The MaskIoU branch reads the predicted mask but does not train the mask head.
        probabilities = mask_probabilities(logits, classes, self.loss).detach()
        gt_areas, box_areas = full_gt_areas(instances)
        targets = mask_iou_targets(probabilities, gt_masks, gt_areas.to(logits.device),
                                   box_areas.to(logits.device), self.mask_iou_threshold)
        predicted = self.mask_iou_head(pooled, probabilities)
        return mask_iou_loss(predicted, classes, targets) * self.mask_iou_loss_weight

    def _rescore(self, pooled: Tensor, logits: Tensor, instances: list[Instances]) -> None:
        classes = predicted_classes(instances, logits.device)
        predicted = self.mask_iou_head(pooled, mask_probabilities(logits, classes, self.loss))
        iou = predicted[torch.arange(classes.shape[0], device=classes.device), classes]
        iou = iou.clamp(0, 1)
        for per_image, per_image_iou in zip(instances, iou.split(  # noqa: B905 (TorchScript)
                instance_counts(instances))):
            per_image.pred_mask_iou = per_image_iou
            per_image.box_scores = per_image.scores
            per_image.scores = per_image.scores * per_image_iou

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Stock Mask R-CNN checkpoints have no MaskIoU branch: say which keys start untrained."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        branch = prefix + "mask_iou_head."
        if not any(key.startswith(branch) for key in state_dict):
            names = sorted(branch + key for key in self.mask_iou_head.state_dict())
            logger.warning("The checkpoint has no mask-scoring branch; these %d parameters keep "
                           "their initial values: %s", len(names), ", ".join(names))

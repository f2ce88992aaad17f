"""Mask scoring (Huang et al., "Mask Scoring R-CNN", CVPR 2019): a MaskIoU head regresses the IoU
between each predicted mask and its ground truth, and at inference an instance's score becomes
class score x predicted mask IoU.
"""

from __future__ import annotations

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, cat
from detectron2.structures import BitMasks, Instances, PolygonMasks
from torch import Tensor, nn

__all__ = ["MaskIoUHead", "full_gt_areas", "mask_iou_loss", "mask_iou_targets"]


class MaskIoUHead(nn.Module):
    """[pooled mask features, max-pooled predicted mask] -> predicted IoU per class (N, K).

    Convolutions (3x3, ReLU; the last with stride 2), fc layers (ReLU), and an fc to K outputs,
    as the paper's MaskIoU head.
    """

    @configurable
    def __init__(self, *, in_channels: int, pooled_side: int, mask_side: int, num_classes: int,
                 num_conv: int, conv_dim: int, num_fc: int, fc_dim: int):
        super().__init__()
        self.downsample = mask_side // pooled_side
        self.convs = []
        channels = in_channels + 1
        for k in range(num_conv):
            stride = 2 if k == num_conv - 1 else 1
            conv = Conv2d(channels, conv_dim, kernel_size=3, stride=stride, padding=1,
                          activation=nn.ReLU())
            self.add_module(f"maskiou_conv{k + 1}", conv)
            self.convs.append(conv)
            channels = conv_dim
        side = (pooled_side + 1) // 2 if num_conv else pooled_side
        inputs = channels * side * side
        self.fcs = []
        for k in range(num_fc):
            fc = nn.Linear(inputs, fc_dim)
            self.add_module(f"maskiou_fc{k + 1}", fc)
            self.fcs.append(fc)
            inputs = fc_dim
        self.predictor = nn.Linear(inputs, num_classes)
        for conv in self.convs:
            weight_init.c2_msra_fill(conv)
        for fc in self.fcs:
            weight_init.c2_xavier_fill(fc)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        scoring = cfg.MODEL.ROI_MASK_SCORING
        head = cfg.MODEL.ROI_MASK_HEAD
        return {
            "in_channels": in_channels,
            "pooled_side": head.POOLER_RESOLUTION,
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
        for conv in self.convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.predictor(x)


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

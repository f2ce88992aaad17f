"""Mask R-CNN's mask heads (He et al. 2017, Sec. 3 and Fig. 4) with the paper's ablation options.

``MaskRCNNFCNHead`` with its defaults is Detectron2's ``MaskRCNNConvUpsampleHead``: the same
layers under the same names (``mask_fcn{k}``, ``deconv``, ``predictor``), the same
initialisation, loss and inference, so stock weights load unchanged. ``MaskRCNNMLPHead`` is the
paper's Table 2e alternative: two fc layers on the flattened pooled features, then one fc
predicting all masks. Options (``add_mask_rcnn_ext_config``), for both heads unless said:

* ``OUTPUT_RESOLUTION``: 28, 56 or 112; for the FCN head each doubling past the first adds a 2x
  deconvolution (``deconv2``, ``deconv3``);
* ``LOSS``: "sigmoid", a binary cross-entropy on the ground-truth class's channel only (the
  paper's decoupling of mask and class), or "softmax", a per-pixel multinomial over background and
  the K classes (the paper's Table 2b alternative, which couples them);
* ``NORM``: "", "GN", "BN", ... (Detectron2's ``get_norm``) after each 3x3 convolution (FCN);
* ``MLP_DIM``: the hidden width of the MLP head.
"""

from __future__ import annotations

import math

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    BaseMaskRCNNHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances
from torch import Tensor, nn

__all__ = [
    "HeadBranch",
    "MaskHeadBase",
    "MaskRCNNFCNHead",
    "MaskRCNNMLPHead",
    "cropped_gt_masks",
    "instance_counts",
    "mask_probabilities",
    "mask_rcnn_softmax_loss",
]

_LOSSES = ("sigmoid", "softmax")


def cropped_gt_masks(instances: list[Instances], side: int) -> tuple[Tensor, Tensor]:
    """Ground-truth masks of the proposals' matched objects, cropped to each proposal box and
    resized to side x side -> (bool (N, side, side), int64 classes (N,))."""
    masks, classes = [], []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        masks.append(per_image.gt_masks.crop_and_resize(per_image.proposal_boxes.tensor, side))
        classes.append(per_image.gt_classes)
    if not masks:
        return torch.zeros(0, side, side, dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
    return cat(masks) > 0.5, cat(classes)


def mask_rcnn_softmax_loss(logits: Tensor, instances: list[Instances]) -> Tensor:
    """Per-pixel multinomial mask loss (paper Table 2b).

    Args:
        logits: (N, K + 1, R, R): channel 0 is background, channel k + 1 class k (class-agnostic:
            (N, 2, R, R)).
        instances: per image, the foreground proposals with ``gt_classes`` and ``gt_masks``.

    Returns:
        The cross-entropy averaged over all pixels of all proposals: a pixel inside the matched
        ground-truth mask should be its class, one outside it background.
    """
    masks, classes = cropped_gt_masks(instances, logits.shape[-1])
    if masks.shape[0] == 0:
        return logits.sum() * 0
    masks, classes = masks.to(logits.device), classes.to(logits.device)
    foreground = classes + 1 if logits.shape[1] > 2 else torch.ones_like(classes)
    target = torch.where(masks, foreground[:, None, None], 0)
    return F.cross_entropy(logits, target)


def mask_probabilities(logits: Tensor, classes: Tensor, loss: str) -> Tensor:
    """Each instance's mask probabilities for its class: (N, C, R, R) logits -> (N, R, R).

    Softmax: as in FCN's per-pixel multinomial, a pixel belongs to the instance where the
    instance's class is its most likely label. The soft mask is the softmax restricted to that
    class and its strongest rival (background or another class), which is above 0.5 exactly
    there. (The class's plain softmax probability would split a pixel among classes that the mask
    head has not yet learned to tell apart, leaving it below 0.5 although the pixel is
    confidently foreground.) Class-agnostic, it is the foreground's softmax probability.
    """
    index = torch.arange(logits.shape[0], device=logits.device)
    if loss == "softmax":
        channel = classes + 1 if logits.shape[1] > 2 else torch.ones_like(classes)
        own = logits[index, channel]
        rivals = logits.index_put((index, channel), torch.full_like(own, -math.inf))
        return (own - rivals.amax(dim=1)).sigmoid()
    channel = classes if logits.shape[1] > 1 else torch.zeros_like(classes)
    return logits[index, channel].sigmoid()


def predicted_classes(instances: list[Instances], device: torch.device) -> Tensor:
    """Every image's ``pred_classes``, concatenated -> (N,) int64."""
    classes = [per_image.pred_classes for per_image in instances]
    if len(classes) == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    return torch.cat(classes).long()


def instance_counts(instances: list[Instances]) -> list[int]:
    """Each image's number of instances. ``__len__``, not ``len()``, which would make them Python
    ints that a trace freezes (Detectron2's tracing patches ``len`` in its own heads' modules)."""
    return [per_image.__len__() for per_image in instances]


def _init_predictor(layer: nn.Module) -> None:
    """Initialise ``layer`` as Detectron2 initialises its mask predictor (after the other layers,
    as Detectron2 does, so that a seed gives stock Detectron2's initial weights)."""
    nn.init.normal_(layer.weight, std=0.001)
    nn.init.constant_(layer.bias, 0)


class HeadBranch(nn.Module):
    """A module that a mask head holds beside its mask layers (e.g. the MaskIoU branch): the
    head's ``layers`` skip it."""

    def __init__(self):
        super().__init__()
        # What ``layers`` tests (hasattr, which TorchScript resolves when compiling; it resolves
        # no isinstance test against a type that the compiled head does not hold).
        self.beside_mask_layers = True


class MaskHeadBase(BaseMaskRCNNHead):
    """What the FCN and MLP heads share: (N, C, P, P) pooled features -> (N, K or K + 1, R, R)
    mask logits through the subclass's ``layers``, trained with the sigmoid or softmax loss."""

    @configurable
    def __init__(self, *, output_side: int, loss: str = "sigmoid", **kwargs):
        """
        Args:
            output_side: side R of the predicted masks.
            loss: "sigmoid" or "softmax" (softmax predicts a background channel too).
        """
        super().__init__(**kwargs)
        if loss not in _LOSSES:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.LOSS must be one of {_LOSSES}, got {loss!r}")
        self.loss = loss
        self.output_side = output_side

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        head = cfg.MODEL.ROI_MASK_HEAD
        doublings = math.log2(head.OUTPUT_RESOLUTION / input_shape.height)
        if doublings < 1 or not doublings.is_integer():
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.OUTPUT_RESOLUTION={head.OUTPUT_RESOLUTION} must be "
                f"POOLER_RESOLUTION ({input_shape.height}) times 2, 4, 8, ..."
            )
        num_classes = 1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        ret.update(output_side=head.OUTPUT_RESOLUTION, loss=head.LOSS,
                   out_channels=num_classes + 1 if head.LOSS == "softmax" else num_classes)
        return ret

    @torch.jit.unused
    def losses(self, logits: Tensor, instances: list[Instances]) -> Tensor:
        """The (unweighted) mask loss of ``logits`` for the foreground proposals ``instances``."""
        if self.loss == "softmax":
            return mask_rcnn_softmax_loss(logits, instances)
        return mask_rcnn_loss(logits, instances, self.vis_period)

    def inference(self, logits: Tensor, instances: list[Instances]) -> None:
        """Set ``pred_masks`` (N, 1, R, R) probabilities of each instance's predicted class."""
        if self.loss == "sigmoid":
            mask_rcnn_inference(logits, instances)
            return
        classes = predicted_classes(instances, logits.device)
        probabilities = mask_probabilities(logits, classes, self.loss)[:, None]
        # No zip(strict=...) here and in what follows: TorchScript compiles no keyword to zip.
        for per_image, masks in zip(instances, probabilities.split(  # noqa: B905
                instance_counts(instances))):
            per_image.pred_masks = masks

    def forward(self, x: Tensor, instances: list[Instances]):
        logits = self.layers(x)
        if self.training:
            assert not torch.jit.is_scripting(), "scripted mask heads run inference only"
            return {"loss_mask": self.losses(logits, instances) * self.loss_weight}
        self.inference(logits, instances)
        return instances


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNFCNHead(MaskHeadBase):
    """The paper's FCN mask head: 3x3 convolutions, 2x deconvolution(s), a 1x1 predictor."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, out_channels: int, conv_dims: list[int],
                 conv_norm: str = "", **kwargs):
        """
        Args:
            input_shape: the pooled features (channels, height = width = P).
            out_channels: K foreground classes, 1 for class-agnostic masks, plus 1 with the
                softmax loss.
            conv_dims: widths of the 3x3 convolutions, then of the deconvolution(s).
            conv_norm: normalisation after each 3x3 convolution.
        """
        super().__init__(**kwargs)
        doublings = math.log2(self.output_side / input_shape.height)
        channels = input_shape.channels
        convs = []
        for k, conv_dim in enumerate(conv_dims[:-1]):
            conv = Conv2d(channels, conv_dim, kernel_size=3, padding=1, bias=not conv_norm,
                          norm=get_norm(conv_norm, conv_dim), activation=nn.ReLU())
            self.add_module(f"mask_fcn{k + 1}", conv)
            convs.append(conv)
            channels = conv_dim
        upsamples = []
        for k in range(round(doublings)):
            # The first keeps Detectron2's name, so that stock weights load.
            name = "deconv" if k == 0 else f"deconv{k + 1}"
            deconv = ConvTranspose2d(channels, conv_dims[-1], kernel_size=2, stride=2)
            self.add_module(name, deconv)
            self.add_module(f"{name}_relu", nn.ReLU())
            upsamples.append(deconv)
            channels = conv_dims[-1]
        self.predictor = Conv2d(channels, out_channels, kernel_size=1)
        for layer in convs + upsamples:
            weight_init.c2_msra_fill(layer)
        _init_predictor(self.predictor)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        head = cfg.MODEL.ROI_MASK_HEAD
        ret.update(input_shape=input_shape, conv_dims=[head.CONV_DIM] * (head.NUM_CONV + 1),
                   conv_norm=head.NORM)
        return ret

    def layers(self, x: Tensor) -> Tensor:
        # The children in their order (3x3 convolutions, each deconvolution and its ReLU, the
        # predictor): a loop over children is what TorchScript compiles, where a list attribute
        # of modules is not.
        for layer in self.children():
            if not hasattr(layer, "beside_mask_layers"):
                x = layer(x)
        return x


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNMLPHead(MaskHeadBase):
    """The paper's Table 2e MLP mask head: fc, fc, then one fc predicting every R x R mask."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, out_channels: int, mlp_dim: int = 1024,
                 **kwargs):
        """
        Args:
            input_shape: the pooled features (channels, height, width).
            out_channels: as for :class:`MaskRCNNFCNHead`.
            mlp_dim: width of the two hidden fc layers (paper: 1024).
        """
        super().__init__(**kwargs)
        inputs = input_shape.channels * input_shape.height * input_shape.width
        self.mask_fc1 = nn.Linear(inputs, mlp_dim)
        self.mask_fc2 = nn.Linear(mlp_dim, mlp_dim)
        self.predictor = nn.Linear(mlp_dim, out_channels * self.output_side ** 2)
        for layer in (self.mask_fc1, self.mask_fc2):
            weight_init.c2_xavier_fill(layer)
        _init_predictor(self.predictor)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(input_shape=input_shape, mlp_dim=cfg.MODEL.ROI_MASK_HEAD.MLP_DIM)
        return ret

    def layers(self, x: Tensor) -> Tensor:
        x = F.relu(self.mask_fc1(x.flatten(1)))
        x = F.relu(self.mask_fc2(x))
        return self.predictor(x).view(x.shape[0], -1, self.output_side, self.output_side)

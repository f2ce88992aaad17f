"""``MaskRCNNExtROIHeads``: Detectron2's StandardROIHeads whose box, mask and keypoint poolers
come from :data:`POOLER_REGISTRY`; ``MaskRCNNExtRes5ROIHeads``: the same for Res5ROIHeads, the C4
models' head, whose box and mask branches share one pooler and a res5 stage.

Everything else is StandardROIHeads' own (proposal sampling, the branches' forward passes and
losses), and every behaviour of a branch lives in its head (``MODEL.ROI_MASK_HEAD.NAME``...), as
in Detectron2's PointRend project. With the defaults (a stock pooler type, a stock-equivalent mask
head) the model is stock Mask R-CNN: the same parameters under the same names, the same losses
and outputs.
"""


import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    FastRCNNOutputLayers,
    Res5ROIHeads,
    ROIHeads,
    StandardROIHeads,
    build_box_head,
    build_keypoint_head,
    build_mask_head,
)
from torch import nn

from .poolers import ROIPooler

__all__ = ["MaskRCNNExtROIHeads", "MaskRCNNExtRes5ROIHeads"]


def _pooler_and_input(cfg, head_cfg, in_features: list[str],
                      input_shape: dict[str, ShapeSpec]):
    """A branch's pooler (None without ``POOLER_TYPE``), with the model's
    ``MODEL.ROI_POOLER_BACKEND``, and what its head receives: the pooled features' shape, or the
    feature maps' shapes when there is no pooler."""
    if not head_cfg.POOLER_TYPE:
        return None, {f: input_shape[f] for f in in_features}
    channels = {input_shape[f].channels for f in in_features}
    if len(channels) != 1:
        raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES {in_features} have different channel "
                         f"counts {sorted(channels)}; one pooler needs one")
    pooler = ROIPooler(
        output_size=head_cfg.POOLER_RESOLUTION,
        scales=tuple(1.0 / input_shape[f].stride for f in in_features),
        sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
        pooler_type=head_cfg.POOLER_TYPE,
        backend=cfg.MODEL.ROI_POOLER_BACKEND,
        backend_key="MODEL.ROI_POOLER_BACKEND",
        device=cfg.MODEL.DEVICE,
    )
    side = head_cfg.POOLER_RESOLUTION
    return pooler, ShapeSpec(channels=channels.pop(), height=side, width=side)


def _branch(name: str, head_cfg, build_head, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
    """StandardROIHeads' arguments for branch ``name`` ("box", "mask", "keypoint"): its input
    features, its registry pooler and its head, built by ``build_head(cfg, input)``."""
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    pooler, pooled = _pooler_and_input(cfg, head_cfg, in_features, input_shape)
    return {f"{name}_in_features": in_features, f"{name}_pooler": pooler,
            f"{name}_head": build_head(cfg, pooled)}


@ROI_HEADS_REGISTRY.register()
class MaskRCNNExtROIHeads(StandardROIHeads):
    """StandardROIHeads with poolers from :data:`POOLER_REGISTRY` in every branch."""

    # Constants for TorchScript, so that a branch that is off is not compiled: Detectron2's
    # scripting patch declares them on StandardROIHeads, and a subclass has its own annotations.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        if not cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE:
            raise ValueError("MODEL.ROI_BOX_HEAD.POOLER_TYPE is empty; the box head needs one")
        ret = _branch("box", cfg.MODEL.ROI_BOX_HEAD, build_box_head, cfg, input_shape)
        ret["box_predictor"] = FastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            return {}
        return _branch("mask", cfg.MODEL.ROI_MASK_HEAD, build_mask_head, cfg, input_shape)

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        if not cfg.MODEL.KEYPOINT_ON:
            return {}
        return _branch("keypoint", cfg.MODEL.ROI_KEYPOINT_HEAD, build_keypoint_head, cfg,
                       input_shape)


# Blocks in res5 of the ResNets built of basic blocks (ResNet paper, Table 1).
_BASIC_RES5_BLOCKS = {18: 2, 34: 3}


@ROI_HEADS_REGISTRY.register()
class MaskRCNNExtRes5ROIHeads(Res5ROIHeads):
    """Res5ROIHeads (ResNet-C4: one pooler on one feature map, then res5 for both branches) with
    its pooler from :data:`POOLER_REGISTRY` (``MODEL.ROI_BOX_HEAD.POOLER_*``) and any registered
    mask head. With the defaults it is stock Res5ROIHeads, parameter for parameter.

    Unlike stock, res5 of an R18/R34 backbone is built of basic blocks, like the backbone's own
    res5, so that ImageNet-style weights of those ResNets load into it.
    """

    @classmethod
    def from_config(cls, cfg, input_shape):
        # Not Res5ROIHeads.from_config: it builds Detectron2's pooler, which knows four types.
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        if len(in_features) != 1:
            raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES is {in_features}; "
                             "MaskRCNNExtRes5ROIHeads pools from exactly one feature map")
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("MODEL.KEYPOINT_ON: MaskRCNNExtRes5ROIHeads has no keypoint branch")
        box = cfg.MODEL.ROI_BOX_HEAD
        if not box.POOLER_TYPE:
            raise ValueError("MODEL.ROI_BOX_HEAD.POOLER_TYPE is empty; the res5 head needs one")
        pooler, _ = _pooler_and_input(cfg, box, in_features, input_shape)
        res5, channels = cls._build_res5_block(cfg)
        ret = {**ROIHeads.from_config(cfg), "in_features": in_features, "pooler": pooler,
               "res5": res5, "box_predictor": FastRCNNOutputLayers(
                   cfg, ShapeSpec(channels=channels, height=1, width=1))}
        if cfg.MODEL.MASK_ON:
            # res5 halves the pooled side. (Stock passes the pooled side; only heads with fully
            # connected layers read it, and they need the true one.)
            side = (box.POOLER_RESOLUTION + 1) // 2
            ret["mask_head"] = build_mask_head(
                cfg, ShapeSpec(channels=channels, height=side, width=side))
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        resnets = cfg.MODEL.RESNETS
        if resnets.DEPTH not in _BASIC_RES5_BLOCKS:
            return super()._build_res5_block(cfg)
        channels = resnets.RES2_OUT_CHANNELS * 8  # res5 has 8x the channels of res2
        count = _BASIC_RES5_BLOCKS[resnets.DEPTH]
        blocks = ResNet.make_stage(BasicBlock, count, stride_per_block=[2] + [1] * (count - 1),
                                   in_channels=channels // 2, out_channels=channels,
                                   norm=resnets.NORM)
        return nn.Sequential(*blocks), channels

"""``MaskRCNNExtROIHeads``: Detectron2's StandardROIHeads whose box, mask and keypoint poolers
come from :data:`POOLER_REGISTRY`.

Everything else is StandardROIHeads' own (proposal sampling, the branches' forward passes and
losses), and every behaviour of a branch lives in its head (``MODEL.ROI_MASK_HEAD.NAME``...), as
in Detectron2's PointRend project. With the defaults (a stock pooler type, a stock-equivalent mask
head) the model is stock Mask R-CNN: the same parameters under the same names, the same losses
and outputs.
"""


import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    FastRCNNOutputLayers,
    StandardROIHeads,
    build_box_head,
    build_keypoint_head,
    build_mask_head,
)

from ..config import upgrade_deprecated_keys
from .poolers import ROIPooler

__all__ = ["MaskRCNNExtROIHeads"]


def _pooler_and_input(head_cfg, in_features: list[str], input_shape: dict[str, ShapeSpec]):
    """A branch's pooler (None without ``POOLER_TYPE``) and what its head receives: the pooled
    features' shape, or the feature maps' shapes when there is no pooler."""
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
    )
    side = head_cfg.POOLER_RESOLUTION
    return pooler, ShapeSpec(channels=channels.pop(), height=side, width=side)


def _branch(name: str, head_cfg, build_head, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
    """StandardROIHeads' arguments for branch ``name`` ("box", "mask", "keypoint"): its input
    features, its registry pooler and its head, built by ``build_head(cfg, input)``."""
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    pooler, pooled = _pooler_and_input(head_cfg, in_features, input_shape)
    return {f"{name}_in_features": in_features, f"{name}_pooler": pooler,
            f"{name}_head": build_head(cfg, pooled)}


@ROI_HEADS_REGISTRY.register()
class MaskRCNNExtROIHeads(StandardROIHeads):
    """StandardROIHeads with poolers from :data:`POOLER_REGISTRY` in every branch.

    Checkpoint versions: 1 kept the mask-scoring branch here, as ``mask_iou_head``; since 2 it
    is part of the mask head (:class:`MaskScoringHead`), and version-1 keys are moved there.
    """

    _version = 2
    # Constants for TorchScript, so that a branch that is off is not compiled: Detectron2's
    # scripting patch declares them on StandardROIHeads, and a subclass has its own annotations.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @classmethod
    def from_config(cls, cfg, input_shape):
        return super().from_config(upgrade_deprecated_keys(cfg), input_shape)

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

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        version = local_metadata.get("version")
        if version is None or version < 2:
            old, new = prefix + "mask_iou_head.", prefix + "mask_head.mask_iou_head."
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[new + key[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

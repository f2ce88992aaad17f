"""Every config in configs/ loads into a fresh config and builds its model."""

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from mask_rcnn_ext import add_mask_rcnn_ext_config
from mask_rcnn_ext.modeling import (
    POOLER_REGISTRY,
    MaskHeadBase,
    MaskRCNNExtRes5ROIHeads,
    MaskRCNNExtROIHeads,
    MaskScoringHead,
)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def load(path):
    cfg = add_mask_rcnn_ext_config(get_cfg())
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_configs_are_found():
    names = {path.relative_to(path.parents[1]).as_posix() for path in CONFIGS}
    assert {"COCO/mask_rcnn_R_50_FPN_1x.yaml", "COCO/mask_rcnn_R_101_FPN_3x.yaml",
            "Synthetic/mask_rcnn_R_18_FPN_cpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_config_builds_its_model(path):
    cfg = load(path)
    # What is checked is the model's structure: built on the meta device, its weights are not
    # initialised (4 s for an R-50 on CPU, 0.1 s here).
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    heads = model.roi_heads
    if cfg.MODEL.ROI_HEADS.NAME == "MaskRCNNExtRes5ROIHeads":
        assert isinstance(heads, MaskRCNNExtRes5ROIHeads)
        pooler, branch = heads.pooler, cfg.MODEL.ROI_BOX_HEAD  # shared by both branches
    else:
        assert isinstance(heads, MaskRCNNExtROIHeads)
        pooler, branch = heads.mask_pooler, cfg.MODEL.ROI_MASK_HEAD
    assert isinstance(heads.mask_head, MaskHeadBase)
    assert type(heads.mask_head).__name__ == cfg.MODEL.ROI_MASK_HEAD.NAME
    assert heads.mask_head.output_side == cfg.MODEL.ROI_MASK_HEAD.OUTPUT_RESOLUTION
    assert isinstance(heads.mask_head, MaskScoringHead) == ("scoring" in path.name)
    stride = model.backbone.output_shape()[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].stride
    side = branch.POOLER_RESOLUTION
    expected = POOLER_REGISTRY.get(branch.POOLER_TYPE)((side, side), 1 / stride,
                                                        branch.POOLER_SAMPLING_RATIO)
    assert repr(pooler.level_poolers[0]) == repr(expected)

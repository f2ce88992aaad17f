"""MaskRCNNExtRes5ROIHeads (ResNet-C4) against Detectron2's stock Res5ROIHeads."""

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

from helpers import small_mask_rcnn_cfg, training_batch
from mask_rcnn_ext.modeling import POOLER_REGISTRY, MaskRCNNExtRes5ROIHeads


def _c4_cfg(depth=50, heads="MaskRCNNExtRes5ROIHeads", mask_head="MaskRCNNFCNHead"):
    """A small C4 model: pooled from res4 (stride 16), res5 shared by both branches."""
    cfg = small_mask_rcnn_cfg(depth=depth)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    if depth >= 50:  # a narrow bottleneck ResNet keeps the test fast
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 32  # group norm: 32 groups
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32, 64]]
    cfg.MODEL.ROI_HEADS.NAME = heads
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.ROI_MASK_HEAD.NAME = mask_head
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
    cfg.MODEL.ROI_MASK_HEAD.OUTPUT_RESOLUTION = 14
    return cfg


def _losses(model, batch, seed=123):
    model.train()
    torch.manual_seed(seed)  # proposal sampling draws random numbers
    with EventStorage():
        return {k: v.item() for k, v in model(batch).items()}


def test_defaults_are_stock_res5_heads():
    torch.manual_seed(0)
    stock = build_model(_c4_cfg(heads="Res5ROIHeads", mask_head="MaskRCNNConvUpsampleHead"))
    ours = build_model(_c4_cfg())
    assert type(ours.roi_heads) is MaskRCNNExtRes5ROIHeads
    assert ours.roi_heads.mask_head.output_side == 14
    result = ours.load_state_dict(stock.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(ours.state_dict()) == set(stock.state_dict())

    expected, got = _losses(stock, training_batch()), _losses(ours, training_batch())
    assert set(got) == set(expected) and "loss_mask" in got
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    outputs = []
    for model in (stock, ours):
        model.eval()
        with torch.no_grad():
            outputs.append([o["instances"] for o in model(training_batch())])
    for theirs, mine in zip(*outputs, strict=True):
        assert len(theirs) > 0
        torch.testing.assert_close(mine.pred_boxes.tensor, theirs.pred_boxes.tensor)
        torch.testing.assert_close(mine.scores, theirs.scores)
        torch.testing.assert_close(mine.pred_masks, theirs.pred_masks)


@pytest.mark.parametrize("pooler_type", ["ROIPool", "ROIWarp", "ROIAlignMax", "PreciseROIPool"])
def test_the_shared_pooler_comes_from_the_registry(pooler_type):
    cfg = _c4_cfg(depth=18)
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = pooler_type
    model = build_model(cfg)
    expected = POOLER_REGISTRY.get(pooler_type)((14, 14), 1 / 16, 0)
    assert repr(model.roi_heads.pooler.level_poolers[0]) == repr(expected)
    losses = _losses(model, training_batch(seed=4))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_r18_res5_is_the_backbones_res5_so_its_weights_load():
    """Stock builds bottleneck blocks whatever the depth: an R18's res5 weights cannot load."""
    cfg = _c4_cfg(depth=18)
    res5 = build_model(cfg).roi_heads.res5.state_dict()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    backbone = build_backbone(cfg).state_dict()
    backbone_res5 = {k[len("res5."):]: v for k, v in backbone.items() if k.startswith("res5.")}
    assert {k: v.shape for k, v in res5.items()} == {k: v.shape for k, v in backbone_res5.items()}


@pytest.mark.parametrize("mask_head", ["MaskRCNNMLPHead", "MaskScoringHead"])
def test_mask_heads_see_res5s_output_side(mask_head):
    """Stock tells the mask head the pooled side (14), not res5's output side (7): the MLP head's
    fc layers and the MaskIoU branch would be built for the wrong input."""
    cfg = _c4_cfg(depth=18, mask_head=mask_head)
    model = build_model(cfg)
    losses = _losses(model, training_batch(seed=5))
    assert "loss_mask" in losses
    assert ("loss_maskiou" in losses) == (mask_head == "MaskScoringHead")
    model.eval()
    with torch.no_grad():
        instances = model(training_batch(seed=5))[0]["instances"]
    assert len(instances) > 0 and instances.pred_masks.shape[1:] == (64, 80)


def test_what_the_res5_head_cannot_do_is_named():
    cfg = _c4_cfg(depth=18)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4", "res5"]
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_model(cfg)
    cfg = _c4_cfg(depth=18)
    cfg.MODEL.KEYPOINT_ON = True
    with pytest.raises(ValueError, match="KEYPOINT_ON"):
        build_model(cfg)

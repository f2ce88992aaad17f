"""MaskRCNNExtROIHeads and the mask heads: stock Detectron2 with defaults, and each option."""

import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from helpers import small_mask_rcnn_cfg, training_batch
from mask_rcnn_ext import add_mask_rcnn_ext_config, load_config
from mask_rcnn_ext.modeling import (
    POOLER_REGISTRY,
    MaskRCNNFCNHead,
    MaskRCNNMLPHead,
)
from mask_rcnn_ext.modeling.mask_head import mask_probabilities, mask_rcnn_softmax_loss
from mask_rcnn_ext.modeling.mask_scoring import mask_iou_targets


def _ext(cfg):
    cfg = cfg.clone()
    cfg.MODEL.ROI_HEADS.NAME = "MaskRCNNExtROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNFCNHead"
    return cfg


def test_config_defaults_are_stock():
    stock, ext = get_cfg(), add_mask_rcnn_ext_config(get_cfg())

    def flatten(node, prefix=""):
        for key, value in node.items():
            if hasattr(value, "items"):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    stock_keys = dict(flatten(stock))
    ext_keys = dict(flatten(ext))
    assert {k: ext_keys[k] for k in stock_keys} == stock_keys
    mask = ext.MODEL.ROI_MASK_HEAD
    assert mask.OUTPUT_RESOLUTION == 2 * mask.POOLER_RESOLUTION


@pytest.fixture(scope="module")
def stock_and_ext():
    cfg = small_mask_rcnn_cfg(depth=18)
    torch.manual_seed(0)
    stock = build_model(cfg)
    ext = build_model(_ext(cfg))
    result = ext.load_state_dict(stock.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return stock, ext


def test_stock_weights_load_without_missing_or_unexpected_keys(stock_and_ext):
    stock, ext = stock_and_ext
    assert set(stock.state_dict()) == set(ext.state_dict())
    assert type(ext.roi_heads).__name__ == "MaskRCNNExtROIHeads"
    assert type(ext.roi_heads.mask_head).__name__ == "MaskRCNNFCNHead"


def test_training_losses_equal_stock(stock_and_ext):
    stock, ext = stock_and_ext
    losses = []
    for model in (stock, ext):
        model.train()
        torch.manual_seed(123)  # proposal sampling draws random numbers
        with EventStorage():  # the heads log metrics, as under a trainer
            losses.append({k: v.item() for k, v in model(training_batch()).items()})
    assert set(losses[0]) == set(losses[1]) and "loss_mask" in losses[0]
    for key, value in losses[0].items():
        assert losses[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_inference_outputs_equal_stock(stock_and_ext):
    stock, ext = stock_and_ext
    outputs = []
    for model in (stock, ext):
        model.eval()
        with torch.no_grad():
            outputs.append([o["instances"] for o in model(training_batch())])
    for ours, theirs in zip(outputs[1], outputs[0], strict=True):
        assert len(theirs) > 0
        torch.testing.assert_close(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
        torch.testing.assert_close(ours.scores, theirs.scores)
        torch.testing.assert_close(ours.pred_masks, theirs.pred_masks)


def _scoring_cfg():
    cfg = _ext(small_mask_rcnn_cfg(depth=18))
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskScoringHead"
    return cfg


def test_mask_scoring_adds_exactly_its_keys_and_logs_them(stock_and_ext, caplog):
    stock, _ = stock_and_ext
    scored = build_model(_scoring_cfg())
    with caplog.at_level(logging.WARNING, logger="mask_rcnn_ext.modeling.mask_scoring"):
        result = scored.load_state_dict(stock.state_dict(), strict=False)
    new_keys = {k for k in scored.state_dict()
                if k.startswith("roi_heads.mask_head.mask_iou_head.")}
    assert new_keys and set(result.missing_keys) == new_keys
    assert not result.unexpected_keys
    assert all(key in caplog.text for key in new_keys)

    scored.train()
    with EventStorage():
        losses = scored(training_batch())
    assert "loss_maskiou" in losses and torch.isfinite(losses["loss_maskiou"])
    scored.eval()
    with torch.no_grad():
        (first, _) = scored(training_batch())
    instances = first["instances"]
    torch.testing.assert_close(instances.scores, instances.box_scores * instances.pred_mask_iou)


def _head(loss="sigmoid", arch="fcn", agnostic=False, resolution=28, norm=""):
    cfg = add_mask_rcnn_ext_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    head = cfg.MODEL.ROI_MASK_HEAD
    head.LOSS, head.CLS_AGNOSTIC_MASK = loss, agnostic
    head.OUTPUT_RESOLUTION, head.NORM, head.NUM_CONV, head.CONV_DIM = resolution, norm, 2, 32
    head.MLP_DIM = 32
    head_class = MaskRCNNMLPHead if arch == "mlp" else MaskRCNNFCNHead
    return head_class(cfg, ShapeSpec(channels=4, height=14, width=14))


def _proposals():
    instances = Instances((40, 40))
    instances.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 30.0, 25.0],
                                                   [10.0, 10.0, 10.0, 10.0]]))  # degenerate
    instances.gt_classes = torch.tensor([0, 2, 1])
    square = [[2.0, 2.0, 18.0, 2.0, 18.0, 18.0, 2.0, 18.0]]
    instances.gt_masks = PolygonMasks([square, square, square])
    return [instances]


def test_sigmoid_loss_gradient_is_zero_off_the_ground_truth_class():
    head = _head()
    logits = torch.randn(3, 3, 28, 28, requires_grad=True)
    with EventStorage():
        (grad,) = torch.autograd.grad(head.losses(logits, _proposals()), logits)
    for roi, gt_class in enumerate([0, 2, 1]):
        for channel in range(3):
            nonzero = bool(grad[roi, channel].abs().sum() > 0)
            assert nonzero == (channel == gt_class), (roi, channel)


def test_softmax_loss_on_a_hand_computed_case():
    # One RoI, 2 classes (+ background), a 2 x 2 mask whose ground truth is class 1 on the left
    # column and background on the right.
    instances = Instances((10, 10))
    instances.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    instances.gt_classes = torch.tensor([1])
    instances.gt_masks = PolygonMasks([[[0.0, 0.0, 1.0, 0.0, 1.0, 2.0, 0.0, 2.0]]])
    logits = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]],     # background
                            [[1.0, 0.0], [0.0, 3.0]],     # class 0
                            [[2.0, 0.5], [1.0, -1.0]]]])  # class 1
    # Target per pixel: left column -> channel 2 (class 1), right column -> channel 0.
    expected = 0.0
    for (row, col), target in {(0, 0): 2, (1, 0): 2, (0, 1): 0, (1, 1): 0}.items():
        column = logits[0, :, row, col]
        expected += -(float(column[target]) - math.log(float(column.exp().sum())))
    loss = mask_rcnn_softmax_loss(logits, [instances])
    assert loss.item() == pytest.approx(expected / 4, rel=1e-6)


def test_softmax_masks_are_the_pixels_whose_most_likely_label_is_the_class():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 5, 5, generator=generator) * 3  # background + 3 classes
    classes = torch.tensor([0, 1, 2, 2, 1, 0])
    probabilities = mask_probabilities(logits, classes, "softmax")
    for roi, gt_class in enumerate(classes.tolist()):
        for row in range(5):
            for col in range(5):
                label = int(logits[roi, :, row, col].argmax())
                expected = label == gt_class + 1
                assert bool(probabilities[roi, row, col] > 0.5) == expected, (roi, row, col)
    # A pixel split evenly among three classes over a weaker background is foreground, and
    # belongs to each of those classes' instances at the boundary value 0.5 ...
    tie = torch.tensor([0.0, 2.0, 2.0, 2.0]).view(1, 4, 1, 1)
    assert mask_probabilities(tie, torch.tensor([1]), "softmax").item() == pytest.approx(0.5)
    # ... and class-agnostic, it is the plain softmax probability of the foreground.
    agnostic = torch.randn(2, 2, 3, 3, generator=generator)
    torch.testing.assert_close(mask_probabilities(agnostic, torch.tensor([0, 0]), "softmax"),
                               agnostic.softmax(1)[:, 1])


def test_mask_iou_target_on_a_hand_built_case():
    # A 4 x 4 RoI (16 image pixels, 1 per grid cell) over the left half of an 8 x 4 object
    # (32 pixels); the prediction covers half of the RoI, inside the object: IoU = 8 / 32.
    probabilities = torch.zeros(1, 4, 4)
    probabilities[0, :2] = 0.9
    gt = torch.ones(1, 4, 4, dtype=torch.bool)
    target = mask_iou_targets(probabilities, gt, torch.tensor([32.0]), torch.tensor([16.0]), 0.5)
    assert target.item() == pytest.approx(0.25)
    # A perfect prediction of an object wholly inside its RoI has IoU 1.
    inside = mask_iou_targets(torch.full((1, 4, 4), 0.9), gt, torch.tensor([16.0]),
                              torch.tensor([16.0]), 0.5)
    assert inside.item() == pytest.approx(1.0)


@pytest.mark.parametrize("options", [
    {"loss": "softmax"}, {"arch": "mlp"}, {"agnostic": True}, {"resolution": 56},
    {"resolution": 112}, {"norm": "GN"}, {"norm": "BN"}, {"loss": "softmax", "agnostic": True},
])
def test_head_options_train_and_infer(options):
    head = _head(**options)
    resolution = options.get("resolution", 28)
    features = torch.randn(3, 4, 14, 14)
    logits = head.layers(features)
    classes = 1 if options.get("agnostic") else 3
    assert logits.shape == (3, classes + (options.get("loss") == "softmax"), resolution,
                            resolution)
    head.train()
    with EventStorage():
        loss = head(features, _proposals())["loss_mask"]
    assert torch.isfinite(loss)
    loss.backward()
    head.eval()
    instances = Instances((40, 40))
    instances.pred_classes = torch.tensor([0, 2, 1])
    head(features, [instances])
    assert instances.pred_masks.shape == (3, 1, resolution, resolution)
    assert (instances.pred_masks >= 0).all() and (instances.pred_masks <= 1).all()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="OUTPUT_RESOLUTION=42"):
        _head(resolution=42)
    with pytest.raises(ValueError, match="LOSS must be one of"):
        _head(loss="focal")


def test_images_without_instances_and_degenerate_proposals_train(stock_and_ext):
    _, ext = stock_and_ext
    ext.train()
    with EventStorage():
        losses = ext(training_batch(seed=3, empty_second=True))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in ext.parameters() if p.grad is not None)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIAlignMax", "PreciseROIPool", "ROIWarp",
                                         "ROIPool"])
def test_every_pooler_type_trains_in_both_branches(pooler_type, autocast):
    """Also under CPU bfloat16 autocast (mixed precision), where our ops used to raise."""
    cfg = _ext(small_mask_rcnn_cfg(depth=18))
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = pooler_type
    cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = pooler_type
    model = build_model(cfg)
    for branch, resolution in (("box", 7), ("mask", 14)):
        level = getattr(model.roi_heads, f"{branch}_pooler").level_poolers[0]
        expected = POOLER_REGISTRY.get(pooler_type)((resolution, resolution), 1 / 4, 0)
        assert repr(level) == repr(expected)
    model.train()
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = model(training_batch(seed=4))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mask_iou_target_of_a_degenerate_proposal_is_finite():
    probabilities = torch.rand(2, 28, 28)
    gt = torch.zeros(2, 28, 28, dtype=torch.bool)
    targets = mask_iou_targets(probabilities, gt, torch.tensor([50.0, 0.0]),
                               torch.tensor([0.0, 0.0]), 0.5)
    assert torch.isfinite(targets).all() and (targets >= 0).all() and (targets <= 1).all()


@pytest.mark.parametrize("head, key", [("ROI_MASK_HEAD", "ARCH"), ("ROI_MASK_SCORING", "ENABLED")])
def test_keys_of_unreleased_versions_are_refused_by_name(head, key, tmp_path):
    """ARCH and ENABLED only ever existed inside this repository (now MODEL.ROI_MASK_HEAD.NAME):
    a config that sets one is refused naming it, not silently given another head."""
    path = tmp_path / "old.yaml"
    base = Path(__file__).parents[1] / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.yaml"
    path.write_text(yaml.safe_dump({"_BASE_": str(base), "MODEL": {head: {key: "mlp"}}}))
    with pytest.raises(KeyError, match=rf"{head}\.{key}"):
        load_config(str(path))


def _keypoint_cfg(roi_heads: str, pooler_type: str = "ROIAlignV2"):
    cfg = small_mask_rcnn_cfg(depth=18)
    cfg.MODEL.KEYPOINT_ON = True
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 4
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (32, 32)
    cfg.MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE = pooler_type
    return cfg


def test_keypoint_branch_is_stock_and_takes_registry_poolers():
    torch.manual_seed(0)
    stock = build_model(_keypoint_cfg("StandardROIHeads")).eval()
    ext = build_model(_keypoint_cfg("MaskRCNNExtROIHeads")).eval()
    result = ext.load_state_dict(stock.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        theirs, ours = stock(training_batch()), ext(training_batch())
    for mine, stock_output in zip(ours, theirs, strict=True):
        assert len(stock_output["instances"]) > 0
        torch.testing.assert_close(mine["instances"].pred_keypoints,
                                   stock_output["instances"].pred_keypoints)
    maximum = build_model(_keypoint_cfg("MaskRCNNExtROIHeads", "ROIAlignMax"))
    level = maximum.roi_heads.keypoint_pooler.level_poolers[0]
    assert repr(level) == repr(POOLER_REGISTRY.get("ROIAlignMax")((14, 14), 1 / 4, 0))


def test_a_seed_gives_stock_initial_weights():
    """With the defaults, our heads draw their initial weights as stock Detectron2's do."""
    cfg = small_mask_rcnn_cfg(depth=18)
    torch.manual_seed(7)
    stock = build_model(cfg).state_dict()
    torch.manual_seed(7)
    ours = build_model(_ext(cfg)).state_dict()
    assert set(ours) == set(stock)
    for key, value in stock.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)

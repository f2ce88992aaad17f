"""Backbone pretraining on semantic masks (mask_rcnn_ext.pretrain) and loading its weights."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from helpers import small_mask_rcnn_cfg
from mask_rcnn_ext.pretrain import object_crops, pretrain


def test_object_crops_on_a_hand_built_case(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    record = {"file_name": str(tmp_path / "a.png"), "height": 40, "width": 50, "annotations": [
        {"bbox": [10, 20, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3},
        {"bbox": [0, 0, 5, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 1}]}
    crops, categories = object_crops([record], side=16)
    assert crops.shape == (1, 3, 16, 16) and categories.tolist() == [3]
    # Margin 0.15 x 20 = 3 px on every side: x 7..33, y 17..33.
    expected = cv2.resize(image[17:33, 7:33], (16, 16), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(crops[0], torch.from_numpy(expected).permute(2, 0, 1))


def _cfg(tiny_coco_dataset, **changes):
    cfg = small_mask_rcnn_cfg(tiny_coco_dataset, depth=18)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.PRETRAIN.BASE_LR = 0.01
    for key, value in changes.items():
        cfg.merge_from_list([key, value])
    return cfg


def test_pretrained_resnet_loads_into_fpn_c4_and_c5_models(tiny_coco_dataset, tmp_path):
    output = tmp_path / "pretrained" / "R18.pth"
    measured = pretrain(_cfg(tiny_coco_dataset), iterations=3, output=str(output))
    assert measured["iterations"] == 3 and measured["objects"] > 4
    assert 0 <= measured["held_out_accuracy"] <= 1
    saved = torch.load(output, weights_only=True)["model"]
    assert "res5.1.conv2.weight" in saved and "stem.conv1.norm.weight" in saved

    fpn = small_mask_rcnn_cfg(depth=18)
    c4 = _cfg(tiny_coco_dataset)
    c4.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    c4.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    c4.MODEL.RPN.IN_FEATURES = c4.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    c4.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32, 64]]
    c4.MODEL.ROI_HEADS.NAME = "MaskRCNNExtRes5ROIHeads"
    c4.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
    c4.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNFCNHead"
    c4.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
    c4.MODEL.ROI_MASK_HEAD.OUTPUT_RESOLUTION = 14
    c5 = c4.clone()
    c5.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    c5.MODEL.RPN.IN_FEATURES = c5.MODEL.ROI_HEADS.IN_FEATURES = ["res5"]
    c5.MODEL.ROI_HEADS.NAME = "MaskRCNNExtROIHeads"
    c5.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    c5.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    c5.MODEL.ROI_MASK_HEAD.OUTPUT_RESOLUTION = 28
    for cfg, prefixes in ((fpn, {"backbone.bottom_up."}),
                          (c4, {"backbone.", "roi_heads."}),
                          (c5, {"backbone."})):
        model = build_model(cfg)
        DetectionCheckpointer(model).load(str(output))
        state = model.state_dict()
        loaded = {}
        for key, value in state.items():
            for prefix in prefixes:
                name = key[len(prefix):] if key.startswith(prefix) else None
                if name in saved:
                    loaded[name] = value
        # Every ResNet weight came from the file (C4: res5 into the res5 head).
        assert set(loaded) == set(saved)
        for name, value in loaded.items():
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)


def test_an_existing_checkpoint_is_not_replaced_unless_asked(tmp_path, capsys):
    from mask_rcnn_ext.pretrain import main

    existing = tmp_path / "R-18.pth"
    existing.write_bytes(b"the user's own weights")
    config = Path(__file__).parent.parent / "configs" / "Synthetic" / \
        "mask_rcnn_R_18_FPN_small_cpu.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["--config-file", str(config), "MODEL.WEIGHTS", str(existing)])
    assert exit_info.value.code == 2
    assert f"{existing} exists (the weights the config starts from?): give --overwrite" in (
        capsys.readouterr().err)
    assert existing.read_bytes() == b"the user's own weights"

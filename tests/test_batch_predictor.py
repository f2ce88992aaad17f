"""BatchPredictor: a list of images of any sizes in, each image's outputs out, equal to what
Predictor (Detectron2's DefaultPredictor) gives for that image alone."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from helpers import small_mask_rcnn_cfg
from mask_rcnn_ext.checkpoint import SafeCheckpointer
from mask_rcnn_ext.engine import BatchPredictor, Predictor


@pytest.fixture
def saved_cfg(tmp_path):
    cfg = small_mask_rcnn_cfg(depth=18)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 100
    torch.manual_seed(0)
    SafeCheckpointer(build_model(cfg), str(tmp_path)).save("model_final")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    return cfg


def test_outputs_equal_one_by_one_prediction(saved_cfg):
    rng = np.random.default_rng(0)
    # Padded to three sizes: 64 x 96 (images 0 and 2), 64 x 64 (1 and 4) and 128 x 64 (3).
    shapes = [(60, 80), (90, 90), (120, 160), (150, 94), (45, 45)]
    images = [rng.integers(0, 255, (*shape, 3), dtype=np.uint8) for shape in shapes]
    single = Predictor(saved_cfg)
    batched = BatchPredictor(saved_cfg, batch_size=2)
    calls = []
    forward = batched.model.forward
    batched.model.forward = lambda inputs: calls.append(len(inputs)) or forward(inputs)
    outputs = batched(images)
    assert sorted(calls) == [1, 2, 2]  # same-size images together, never more than batch_size
    assert len(outputs) == len(images)
    for image, output in zip(images, outputs, strict=True):
        expected = single(image)["instances"]
        got = output["instances"]
        assert got.image_size == image.shape[:2] and len(got) == len(expected) > 0
        torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor,
                                   rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(got.scores, expected.scores, rtol=1e-4, atol=1e-5)
        assert torch.equal(got.pred_classes, expected.pred_classes)
        assert (got.pred_masks != expected.pred_masks).float().mean() < 1e-3
    assert batched([]) == []


def test_batch_size_must_be_positive(saved_cfg):
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        BatchPredictor(saved_cfg, batch_size=0)

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


_REFUSED = {
    "None": (None, "is None; expected an \\(H, W, 3\\) uint8 array in BGR order"),
    "a tensor": (torch.zeros(3, 40, 50, dtype=torch.uint8), "is a torch.Tensor; expected"),
    "0..1 floats": (np.full((40, 50, 3), 0.5), "has dtype float64: its values lie in 0..1; "
                                                "scale them to 0..255 first"),
    "16 bits": (np.full((40, 50, 3), 300, np.uint16), "has dtype uint16: read image files with "
                                                      "mask_rcnn_ext.data.images.read_image"),
    "4 channels": (np.zeros((40, 50, 4), np.uint8), "has shape \\(40, 50, 4\\) \\(4 channels: "
                                                    "drop the alpha channel"),
    "0 x 0": (np.zeros((0, 0, 3), np.uint8), "is empty \\(0 x 0 pixels\\)"),
    "channels first": (np.zeros((3, 40, 50), np.uint8), "has shape \\(3, 40, 50\\); expected"),
}


def test_images_the_model_cannot_take_are_refused_saying_what_and_why(saved_cfg):
    predictor, batched = Predictor(saved_cfg), BatchPredictor(saved_cfg)
    good = np.zeros((40, 50, 3), np.uint8)
    for image, message in _REFUSED.values():
        with pytest.raises(ValueError, match=f"^the image {message}"):
            predictor(image)
        with pytest.raises(ValueError, match=f"^image 1 of the list {message}"):
            batched([good, image])


def test_grayscale_images_are_predicted_as_their_three_channel_copies(saved_cfg):
    from detectron2.engine import DefaultPredictor

    grey = np.random.default_rng(1).integers(0, 255, (60, 80), dtype=np.uint8)
    colour = np.repeat(grey[:, :, None], 3, axis=2)
    expected = DefaultPredictor(saved_cfg)(colour)["instances"]
    assert len(expected) > 0
    predictor, batched = Predictor(saved_cfg), BatchPredictor(saved_cfg)
    for got in (predictor(grey)["instances"], predictor(grey[:, :, None])["instances"],
                batched([grey])[0]["instances"]):
        torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor,
                                   rtol=1e-4, atol=1e-3)
        assert torch.equal(got.pred_classes, expected.pred_classes)
    # One array where a list is expected: its rows are not taken for images.
    with pytest.raises(ValueError, match=r"takes a list of images, got one array of shape "
                                         r"\(60, 80, 3\); for one image, pass \[image\]"):
        batched(colour)

"""Bad data: degenerate annotations are dropped with counts in the log, and an unreadable image is
named (skipped in training with a count, fatal in evaluation and in demo.py)."""

import json
import logging
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BoxMode

from helpers import small_mask_rcnn_cfg
from mask_rcnn_ext.data import synthetic
from mask_rcnn_ext.data.annotations import drop_degenerate_annotations
from mask_rcnn_ext.data.mapper import ImageCheckingMapper, UnreadableImageError, read_image_or_raise

NAN = float("nan")
SQUARE = [10, 10, 20, 10, 20, 20, 10, 20]


def _annotation(bbox, segmentation=None, iscrowd=0):
    return {"bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": iscrowd,
            "segmentation": [SQUARE] if segmentation is None else segmentation}


def test_degenerate_annotations_are_dropped_and_counted(caplog):
    good = _annotation([10, 10, 10, 10])
    partly_good = _annotation([10, 10, 10, 10], [[1, 1, 2, 2], SQUARE, [0, 0, NAN, 0, 5, 5]])
    crowd = _annotation([10, 10, 0, 0], {"size": [64, 64], "counts": "abc"}, iscrowd=1)
    rle = _annotation([10, 10, 10, 10], {"size": [64, 64], "counts": "abc"})
    degenerate = {
        "non_finite_box": [_annotation([NAN, 10, 5, 5]), _annotation([10, 10, math.inf, 5])],
        "empty_box": [_annotation([10, 10, 0, 5]), _annotation([10, 10, 5, -5])],
        "box_outside_image": [_annotation([200, 10, 5, 5]), _annotation([-20, 10, 5, 5])],
        "degenerate_polygons": [
            _annotation([10, 10, 10, 10], [[10, 10, 20, 10]]),                    # 2 points
            _annotation([10, 10, 10, 10], [[10, 10, 15, 10, 20, 10]]),            # collinear
            _annotation([10, 10, 10, 10], [[10, 10, NAN, 10, 20, 20]]),           # NaN
            _annotation([10, 10, 10, 10], [[10, 10, 20, 10, 20]]),                # odd length
        ],
    }
    records = [
        {"file_name": "a.png", "width": 100, "height": 80,
         "annotations": [good, degenerate["non_finite_box"][0], partly_good, crowd, rle,
                         *degenerate["empty_box"], *degenerate["box_outside_image"]]},
        {"file_name": "b.png", "width": 100, "height": 80,
         "annotations": [degenerate["non_finite_box"][1], *degenerate["degenerate_polygons"]]},
    ]
    with caplog.at_level(logging.WARNING):
        kept = drop_degenerate_annotations(records, "my_set")
    assert kept[0]["annotations"] == [good, partly_good, crowd, rle]
    assert partly_good["segmentation"] == [SQUARE]
    assert kept[1]["annotations"] == []
    assert ("Dropped 10 of 14 annotations in my_set: 2 with a box wholly outside its image; "
            "4 with only degenerate polygons") in caplog.text
    assert ("2 with a box of zero or negative width or height; 2 with a NaN or Inf box "
            "coordinate") in caplog.text
    assert "Dropped 2 degenerate polygons in my_set from annotations that keep other" in caplog.text


@pytest.fixture
def flawed_dataset(tmp_path):
    """A 4-image synthetic set in which image 0 also carries degenerate annotations, image 1 has
    nothing else, image 2 is truncated and image 3 is not an image at all."""
    json_path = synthetic.write_split(tmp_path, "train", 4, seed=0)
    data = json.loads(json_path.read_text())
    images = {image["id"]: image for image in data["images"]}
    first, second, third, fourth = sorted(images)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != second]
    bad = [([NAN, 10, 5, 10], [SQUARE]), ([10, 10, 0, 10], [SQUARE]),
           ([10, 10, 10, 10], [[10, 10, 15, 10, 20, 10]]), ([1000, 1000, 10, 10], [SQUARE])]
    for index, (image_id, (bbox, segmentation)) in enumerate(
            [(first, b) for b in bad] + [(second, b) for b in bad]):
        data["annotations"].append({"id": 10_000 + index, "image_id": image_id, "bbox": bbox,
                                    "category_id": data["categories"][0]["id"], "iscrowd": 0,
                                    "segmentation": segmentation, "area": 100.0})
    json_path.write_text(json.dumps(data))
    truncated = tmp_path / "train" / images[third]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:2000])
    (tmp_path / "train" / images[fourth]["file_name"]).write_text("not an image")
    name = f"flawed_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_path), str(tmp_path / "train"))
    yield name, [str(tmp_path / "train" / images[i]["file_name"]) for i in (third, fourth)]
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_unreadable_images_are_named_skipped_in_training_and_fatal_in_evaluation(flawed_dataset):
    name, (truncated, not_an_image) = flawed_dataset
    cfg = small_mask_rcnn_cfg(name, depth=18)
    records = {r["file_name"]: r for r in DatasetCatalog.get(name)}
    training, evaluation = ImageCheckingMapper(cfg, is_train=True), ImageCheckingMapper(cfg, False)
    assert training(dict(records[truncated])) is None
    assert training(dict(records[not_an_image])) is None
    assert training.skipped_images == 2
    for path in (truncated, not_an_image):
        with pytest.raises(UnreadableImageError, match=f"cannot read image {path}"):
            evaluation(dict(records[path]))
        with pytest.raises(UnreadableImageError, match=f"cannot read image {path}"):
            read_image_or_raise(path, "BGR")  # what demo.py reads its inputs with

    # A readable image with a wrong size in its record is another error: not skipped, raised.
    good = next(r for path, r in records.items() if path not in (truncated, not_an_image))
    with pytest.raises(SizeMismatchError):
        training({**good, "width": good["width"] + 1})


def test_training_on_flawed_data_drops_skips_counts_and_stays_finite(flawed_dataset, tmp_path,
                                                                      caplog):
    from detectron2.utils.events import get_event_storage

    from mask_rcnn_ext.engine import Trainer

    name, (truncated, not_an_image) = flawed_dataset
    cfg = small_mask_rcnn_cfg(name, tmp_path, depth=18)
    cfg.SOLVER.MAX_ITER = 3
    np.random.seed(0)  # the training sampler's seed: which images are drawn
    losses = []

    def train():
        trainer = Trainer(cfg)
        forward = trainer.model.forward

        def recording_forward(batch):
            result = forward(batch)
            losses.append({key: float(value) for key, value in result.items()})
            assert get_event_storage().iter < 3
            return result

        trainer.model.forward = recording_forward
        trainer.train()
        return trainer

    detectron2_logger = logging.getLogger("detectron2")  # which Detectron2 keeps from propagating
    detectron2_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            trainer = train()
    finally:
        detectron2_logger.removeHandler(caplog.handler)
    assert "Dropped 8 of" in caplog.text and "annotations in DATASETS.TRAIN" in caplog.text
    assert "Removed 1 images with no usable annotations" in caplog.text  # Detectron2's count
    # Of the 3 images left, 2 are bad: each time one is drawn, it is named and counted.
    skips = [r.getMessage() for r in caplog.records if "Skipping a training image" in r.message]
    assert skips and all(truncated in m or not_an_image in m for m in skips)
    assert f"{len(skips)} image(s) skipped so far" in skips[-1]
    assert len(losses) == 3 and all(math.isfinite(v) for step in losses for v in step.values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

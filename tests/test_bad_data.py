"""Bad data: degenerate annotations are dropped with counts in the log (and refused in evaluation
ground truth, by the same rule), an unreadable image is named (skipped in training with a count,
fatal in evaluation and in demo.py), high-bit-depth images are converted or refused by name, and
data sets that cannot be trained on say why."""

import json
import logging
import math
import re
import uuid

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, detection_utils
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from helpers import ROOT, evaluate, root_script, small_mask_rcnn_cfg
from mask_rcnn_ext.data import synthetic
from mask_rcnn_ext.data.annotations import drop_degenerate_annotations
from mask_rcnn_ext.data.images import UnreadableImageError, read_image
from mask_rcnn_ext.data.mapper import ImageCheckingMapper

NAN = float("nan")
SQUARE = [10, 10, 20, 10, 20, 20, 10, 20]


def _annotation(bbox, segmentation=None, iscrowd=0):
    return {"bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": iscrowd,
            "segmentation": [SQUARE] if segmentation is None else segmentation}


def test_degenerate_annotations_are_dropped_and_counted(caplog):
    good = _annotation([10, 10, 10, 10])
    partly_good = _annotation([10, 10, 10, 10], [[1, 1, 2, 2], SQUARE, [0, 0, NAN, 0, 5, 5]])
    crowd = _annotation([10, 10, 10, 10], {"size": [64, 64], "counts": "abc"}, iscrowd=1)
    rle = _annotation([10, 10, 10, 10], {"size": [64, 64], "counts": "abc"})
    # A box that misses the mask's edge by 2 pixels keeps it: 64% of its extent is in the box.
    loose_box = _annotation([12, 12, 10, 10])
    far_square = [50, 50, 60, 50, 60, 60, 50, 60]
    partly_outside = _annotation([10, 10, 10, 10], [SQUARE, far_square])
    degenerate = {
        "non_finite_box": [_annotation([NAN, 10, 5, 5]), _annotation([10, 10, math.inf, 5])],
        "empty_box": [_annotation([10, 10, 0, 5]), _annotation([10, 10, 5, -5]),
                      _annotation([10, 10, 0, 0], {"size": [64, 64], "counts": "abc"},
                                  iscrowd=1)],  # crowd annotations are checked too
        "box_outside_image": [_annotation([200, 10, 5, 5]), _annotation([-20, 10, 5, 5])],
        "degenerate_polygons": [
            _annotation([10, 10, 10, 10], [[10, 10, 20, 10]]),                    # 2 points
            _annotation([10, 10, 10, 10], [[10, 10, 15, 10, 20, 10]]),            # collinear
            _annotation([10, 10, 10, 10], [[10, 10, NAN, 10, 20, 20]]),           # NaN
            _annotation([10, 10, 10, 10], [[10, 10, 20, 10, 20]]),                # odd length
            _annotation([10, 10, 10, 10], [[10, 10, 20, 10]], iscrowd=1),         # crowd
        ],
        "polygons_outside_box": [_annotation([10, 10, 10, 10], [far_square]),
                                 _annotation([10, 10, 10, 10], [[14, 10, 40, 10, 40, 30]])],
    }
    records = [
        {"file_name": "a.png", "width": 100, "height": 80,
         "annotations": [good, degenerate["non_finite_box"][0], partly_good, crowd, rle,
                         *degenerate["empty_box"], *degenerate["box_outside_image"],
                         loose_box, partly_outside]},
        {"file_name": "b.png", "width": 100, "height": 80,
         "annotations": [degenerate["non_finite_box"][1], *degenerate["degenerate_polygons"],
                         *degenerate["polygons_outside_box"]]},
    ]
    with caplog.at_level(logging.WARNING):
        kept = drop_degenerate_annotations(records, "my_set")
    assert kept[0]["annotations"] == [good, partly_good, crowd, rle, loose_box, partly_outside]
    assert partly_good["segmentation"] == [SQUARE]
    assert partly_outside["segmentation"] == [SQUARE] and loose_box["segmentation"] == [SQUARE]
    assert kept[1]["annotations"] == []
    assert ("Dropped 14 of 20 annotations in my_set: 2 with a box wholly outside its image; "
            "5 with only degenerate polygons") in caplog.text
    assert ("3 with a box of zero or negative width or height; 2 with a NaN or Inf box "
            "coordinate; 2 with only polygons that lie outside its box") in caplog.text
    assert "Dropped 2 degenerate polygons in my_set from annotations that keep other" in caplog.text
    assert ("Dropped 1 polygons that lie outside their annotation's box in my_set from "
            "annotations that keep other, usable polygons") in caplog.text


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
            read_image(path, "BGR")  # what demo.py reads its inputs with

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


def _grey_image(tmp_path):
    """An 8-bit grayscale synthetic image (values well inside 1..254) and its PNG."""
    pixels, _ = synthetic.make_image(np.random.default_rng(5))
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    path = tmp_path / "grey8.png"
    cv2.imwrite(str(path), grey)
    return grey, path


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    grey, grey_path = _grey_image(tmp_path)
    assert 0 < grey.min() and grey.max() < 255
    sixteen = tmp_path / "grey16.png"
    cv2.imwrite(str(sixteen), grey.astype(np.uint16) * 257)  # the exact 16-bit copy
    # Detectron2's own reading clips: the copy reads (almost) all white.
    assert detection_utils.read_image(str(sixteen), "BGR").min() == 255
    np.testing.assert_array_equal(read_image(str(sixteen), "BGR"),
                                  read_image(str(grey_path), "BGR"))

    # Any 16-bit values: round(v * 255 / 65535), and OpenCV's own conversion agrees within 1.
    values = np.random.default_rng(0).integers(0, 65536, size=(37, 41), dtype=np.uint16)
    values[0, :2] = (0, 65535)
    cv2.imwrite(str(sixteen), values)
    ours = read_image(str(sixteen), "BGR")
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(ours, np.repeat(expected[:, :, None], 3, axis=2))
    assert np.abs(ours.astype(int) - cv2.imread(str(sixteen), cv2.IMREAD_COLOR)).max() <= 1

    # 16-bit colour PNGs (PIL reduces them itself) read as their 8-bit originals too.
    colour = np.stack([grey, 255 - grey, grey // 2], axis=2)
    cv2.imwrite(str(tmp_path / "colour8.png"), colour)
    cv2.imwrite(str(tmp_path / "colour16.png"), colour.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(str(tmp_path / "colour16.png"), "BGR"), colour)
    np.testing.assert_array_equal(read_image(str(tmp_path / "colour8.png"), "BGR"), colour)


@pytest.mark.parametrize("mode, kind", [("I", "32-bit integer"), ("F", "floating-point")])
def test_images_of_unknown_value_range_are_refused_by_name(tmp_path, mode, kind):
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(np.full((8, 9), 70000, np.int32 if mode == "I" else np.float32),
                    mode=mode).save(path)
    with pytest.raises(UnreadableImageError, match=f"cannot read image {path}: it is a {kind} "
                                                   f"image \\(PIL mode {mode}\\)"):
        read_image(str(path), "BGR")


def _single_image_set(tmp_path, image_path):
    """Records of one image without annotations, as a data set would give them."""
    height, width = cv2.imread(str(image_path)).shape[:2]
    return {"file_name": str(image_path), "height": height, "width": width, "image_id": 1,
            "annotations": [_annotation([10, 10, 30, 20])]}


def test_mapper_maps_as_detectron2_and_reads_sixteen_bits(tmp_path):
    grey, grey_path = _grey_image(tmp_path)
    sixteen = tmp_path / "grey16.png"
    cv2.imwrite(str(sixteen), grey.astype(np.uint16) * 257)
    cfg = small_mask_rcnn_cfg(depth=18)
    cfg.INPUT.MIN_SIZE_TRAIN = (48, 64, 80)  # random sizes and flips: the same draws for both
    record = _single_image_set(tmp_path, grey_path)
    for is_train in (True, False):
        for seed in range(3):
            np.random.seed(seed)
            stock = DatasetMapper(cfg, is_train=is_train)(record)
            np.random.seed(seed)
            ours = ImageCheckingMapper(cfg, is_train=is_train)(record)
            np.random.seed(seed)
            from_sixteen = ImageCheckingMapper(cfg, is_train=is_train)(
                {**record, "file_name": str(sixteen)})
            assert ours.keys() == stock.keys() == from_sixteen.keys()
            assert torch.equal(ours["image"], stock["image"])
            assert torch.equal(from_sixteen["image"], stock["image"])
            if is_train:
                for field in ("gt_boxes", "gt_classes", "gt_masks"):
                    a, b = ours["instances"].get(field), stock["instances"].get(field)
                    assert (torch.equal(a.tensor, b.tensor) if field == "gt_boxes" else
                            torch.equal(a, b) if field == "gt_classes" else
                            all(np.array_equal(p, q) for x, y in zip(a.polygons, b.polygons,
                                                                     strict=True)
                                for p, q in zip(x, y, strict=True)))
    assert record["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS  # the input is not modified


def test_a_training_set_without_one_readable_image_is_an_error(flawed_dataset):
    name, (truncated, not_an_image) = flawed_dataset
    cfg = small_mask_rcnn_cfg(name, depth=18)
    records = {r["file_name"]: r for r in DatasetCatalog.get(name)}
    mapper = ImageCheckingMapper(cfg, is_train=True, images_in_dataset=2)
    assert mapper(dict(records[truncated])) is None
    assert mapper(dict(records[truncated])) is None  # the same image again: still one of two
    with pytest.raises(UnreadableImageError, match="none of the 2 training images can be read; "
                                                   f"the last one tried: cannot read image "
                                                   f"{not_an_image}"):
        mapper(dict(records[not_an_image]))


def _write_registered(tmp_path, name, data):
    from mask_rcnn_ext.data import register_coco_format
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(data if isinstance(data, str) else json.dumps(data))
    register_coco_format(name, str(json_file), str(tmp_path / "train"))
    return json_file


@pytest.fixture
def written_set(tmp_path):
    """The COCO dict of a 2-image synthetic set written under tmp_path; the names registered by
    the test are removed afterwards."""
    data = json.loads(synthetic.write_split(tmp_path, "train", 2, seed=0).read_text())
    names = []
    yield data, names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_training_sets_that_cannot_be_trained_on_say_why(written_set, tmp_path, caplog):
    from mask_rcnn_ext.engine import Trainer

    data, names = written_set
    names += [f"bad_json_{uuid.uuid4().hex[:6]}", f"no_annotations_{uuid.uuid4().hex[:6]}",
              f"rle_{uuid.uuid4().hex[:6]}"]
    bad_json = _write_registered(tmp_path, names[0], '{"images": [')
    with pytest.raises(ValueError, match=f"{bad_json} is not valid JSON"):
        DatasetCatalog.get(names[0])

    without = _write_registered(tmp_path, names[1], {k: v for k, v in data.items()
                                                     if k != "annotations"})
    with caplog.at_level(logging.WARNING):
        DatasetCatalog.get(names[1])
    assert f"{without} holds no annotations for its 2 images" in caplog.text
    with pytest.raises(ValueError, match=r"none of its 2 images has a usable annotation left to "
                                         f"train on \\(annotations from {without}\\)"):
        Trainer.build_train_loader(small_mask_rcnn_cfg(names[1], depth=18))

    rle = dict(data, annotations=[dict(a) for a in data["annotations"]])
    height, width = data["images"][0]["height"], data["images"][0]["width"]
    rle["annotations"][1]["segmentation"] = mask_util.merge(
        mask_util.frPyObjects(rle["annotations"][1]["segmentation"], height, width))
    rle["annotations"][1]["segmentation"]["counts"] = (
        rle["annotations"][1]["segmentation"]["counts"].decode())
    _write_registered(tmp_path, names[2], rle)
    cfg = small_mask_rcnn_cfg(names[2], depth=18)
    with pytest.raises(ValueError, match=re.escape("has an RLE mask, and INPUT.MASK_FORMAT is "
                                                   "'polygon'; set INPUT.MASK_FORMAT bitmask")):
        Trainer.build_train_loader(cfg)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert all(len(item["instances"]) for item in batch)


def _exact_predictions(data):
    """Predictions equal to the ground truth of ``data``, as COCO results."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in data["annotations"]]


def test_evaluation_refuses_degenerate_ground_truth_by_the_training_rule(written_set, tmp_path,
                                                                        caplog):
    from mask_rcnn_ext.evaluation import FastCOCOEvaluator

    data, names = written_set
    flawed = dict(data, annotations=[dict(a) for a in data["annotations"]])
    flawed["annotations"][0]["bbox"] = [10, 10, -5, 10]                       # negative width
    flawed["annotations"][1]["bbox"] = [1000, 1000, 10, 10]                   # outside the image
    flawed["annotations"][2]["segmentation"] = [[10, 10, 20, 20]]             # 2 points
    ids = [a["id"] for a in flawed["annotations"][:3]]
    names += [f"flawed_gt_{uuid.uuid4().hex[:6]}", f"good_gt_{uuid.uuid4().hex[:6]}"]
    json_file = _write_registered(tmp_path, names[0], flawed)
    with pytest.raises(ValueError, match=f"{json_file}: 3 ground-truth annotation\\(s\\) cannot be "
                                         f"evaluated as given \\(id {ids[0]}: a box of zero or "
                                         f"negative width or height; id {ids[1]}: a box wholly "
                                         f"outside its image; id {ids[2]}: only degenerate"):
        FastCOCOEvaluator(names[0], tasks=("bbox",))
    # What pycocotools scores instead: exact predictions lose AP to the flawed objects.
    flawed["annotations"][2]["segmentation"] = [SQUARE]  # pycocotools' bbox AP crashes on it
    json_file.write_text(json.dumps(flawed))
    stock = evaluate(COCOeval, COCO(str(json_file)), _exact_predictions(flawed), "bbox", 1)
    assert stock.stats[0] < 0.95

    # The same rule keeps good data: exact predictions of the intact set score 100.
    _write_registered(tmp_path, names[1], data)
    good = FastCOCOEvaluator(names[1], tasks=("bbox",))
    evaluation = good._evaluate(_exact_predictions(data), "bbox", [1, 10, 100], None)
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_evaluation_without_annotations_warns_naming_the_file(written_set, tmp_path, caplog):
    from mask_rcnn_ext.evaluation import FastCOCOEvaluator

    data, names = written_set
    names.append(f"test_dev_like_{uuid.uuid4().hex[:6]}")
    json_file = _write_registered(tmp_path, names[0], {k: v for k, v in data.items()
                                                       if k != "annotations"})
    detectron2_logger = logging.getLogger("detectron2")
    detectron2_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            FastCOCOEvaluator(names[0], tasks=("bbox",))
    finally:
        detectron2_logger.removeHandler(caplog.handler)
    assert f"{json_file} has no annotations: the predictions are written, and no AP" in caplog.text


def test_images_listed_twice_are_refused_in_training_and_evaluation(written_set, tmp_path):
    from mask_rcnn_ext.data.build import training_dataset_dicts
    from mask_rcnn_ext.evaluation import FastCOCOEvaluator

    data, names = written_set
    first, second = data["images"]
    same_id = dict(data, images=[first, {**second, "id": first["id"]}],
                   annotations=[{**a, "image_id": first["id"]} for a in data["annotations"]])
    same_file = dict(data, images=[first, {**second, "file_name": first["file_name"]}])
    names += [f"same_id_{uuid.uuid4().hex[:6]}", f"same_file_{uuid.uuid4().hex[:6]}"]
    same_id_json = _write_registered(tmp_path, names[0], same_id)
    same_file_json = _write_registered(tmp_path, names[1], same_file)
    # What the COCO API makes of the first, silently: one image, holding both images' objects.
    coco = COCO(str(same_id_json))
    assert len(coco.imgs) == 1 and len(coco.getAnnIds(imgIds=[first["id"]])) == len(
        data["annotations"])
    id_message = (f"{same_id_json}: 1 image id\\(s\\) appear in more than one image entry "
                  f"\\({first['id']}\\); the COCO API would keep one entry per id")
    file_message = (f"{same_file_json}: 1 image file\\(s\\) appear in more than one image entry "
                    f"\\({first['file_name']} \\(ids {first['id']}, {second['id']}\\)\\)")
    for name, message in ((names[0], id_message), (names[1], file_message)):
        with pytest.raises(ValueError, match=message):
            training_dataset_dicts(name)
        with pytest.raises(ValueError, match=message):
            FastCOCOEvaluator(name, tasks=("bbox", "segm"))


def test_evaluation_refuses_polygons_outside_their_box_and_degenerate_crowds(written_set,
                                                                            tmp_path):
    from mask_rcnn_ext.evaluation import FastCOCOEvaluator

    data, names = written_set
    moved = dict(data, annotations=[dict(a) for a in data["annotations"]])
    # The first object's outline moved 40 px right of its (in-image) box.
    outline = moved["annotations"][0]
    outline["segmentation"] = [[v + 40 * (i % 2 == 0) for i, v in enumerate(polygon)]
                               for polygon in outline["segmentation"]]
    names += [f"moved_{uuid.uuid4().hex[:6]}", f"crowd_{uuid.uuid4().hex[:6]}"]
    moved_json = _write_registered(tmp_path, names[0], moved)
    with pytest.raises(ValueError, match=f"{moved_json}: 1 ground-truth annotation\\(s\\) cannot "
                                         f"be evaluated as given \\(id {outline['id']}: only "
                                         "polygons that lie outside its box\\)"):
        FastCOCOEvaluator(names[0], tasks=("segm",))
    # What pycocotools scores instead: predictions equal to the ground truth lose mask AP.
    exact = [dict(prediction, segmentation=annotation["segmentation"])
             for prediction, annotation in zip(_exact_predictions(moved), moved["annotations"],
                                               strict=True)]
    exact[0]["segmentation"] = data["annotations"][0]["segmentation"]  # the object's true mask
    assert evaluate(COCOeval, COCO(str(moved_json)), exact, "segm", 1).stats[0] < 0.99

    crowd = dict(data, annotations=[*data["annotations"], {
        "id": 999, "image_id": data["images"][0]["id"], "category_id": 1, "iscrowd": 1,
        "bbox": [10, 10, 10, 10], "area": 100.0, "segmentation": [[10, 10, 20, 20]]}])
    crowd_json = _write_registered(tmp_path, names[1], crowd)
    with pytest.raises(ValueError, match=f"{crowd_json}: 1 ground-truth annotation\\(s\\) cannot "
                                         "be evaluated as given \\(id 999: only degenerate"):
        FastCOCOEvaluator(names[1], tasks=("segm",))
    # pycocotools fails on it (its message depends on the version), naming neither the file nor
    # the annotation.
    with pytest.raises(Exception):  # noqa: B017
        evaluate(COCOeval, COCO(str(crowd_json)), _exact_predictions(data), "segm", 1)


def test_a_class_count_that_differs_from_the_data_is_refused_naming_sets_numbers_and_key(
        written_set, tmp_path):
    from detectron2.engine import default_argument_parser

    from mask_rcnn_ext.config import load_lazy_config
    from mask_rcnn_ext.engine import LazyTrainer, Trainer

    data, names = written_set
    # One more category, which some objects now belong to.
    more = dict(data, categories=[*data["categories"], {"id": 99, "name": "extra"}],
                annotations=[dict(a, category_id=99) if index % 3 == 0 else a
                             for index, a in enumerate(data["annotations"])])
    names += [f"five_{uuid.uuid4().hex[:6]}", f"four_{uuid.uuid4().hex[:6]}"]
    five = _write_registered(tmp_path, names[0], more)
    _write_registered(tmp_path, names[1], data)
    message = (f"DATASETS.{{split}} \\('{names[0]}',\\): {names[0]} \\({five}\\) has 5 "
               "categories, but MODEL.ROI_HEADS.NUM_CLASSES is 4. .*: set "
               "MODEL.ROI_HEADS.NUM_CLASSES to 5")
    cfg = small_mask_rcnn_cfg(names[0], tmp_path / "train", depth=18)  # 4 classes
    with pytest.raises(ValueError, match=message.format(split="TRAIN")):
        Trainer(cfg)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (names[1],), (names[0],)
    with pytest.raises(ValueError, match=message.format(split="TEST")):
        Trainer(cfg)  # refused before training, not at its final evaluation

    # --eval-only: refused before inference.
    train_net = root_script("train_net")
    config = tmp_path / "config.yaml"
    config.write_text(cfg.dump())
    arguments = default_argument_parser().parse_args(
        ["--config-file", str(config), "--eval-only", "OUTPUT_DIR", str(tmp_path / "eval")])
    with pytest.raises(ValueError, match=message.format(split="TEST")):
        train_net.main(arguments)

    # A LazyConfig: its own keys are named.
    lazy = load_lazy_config(str(ROOT / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.py"),
                            [f"dataloader.train.dataset.names={names[0]}",
                             f"train.output_dir={tmp_path / 'lazy'}"])
    with pytest.raises(ValueError, match=f"dataloader.train.dataset.names \\('{names[0]}',\\): "
                                         f"{names[0]} .* has 5 categories, but "
                                         "model.roi_heads.num_classes is 4"):
        LazyTrainer(lazy)


def test_drop_and_skip_counts_reach_the_runs_log_file(flawed_dataset, tmp_path):
    from detectron2.engine import default_argument_parser

    name, (truncated, not_an_image) = flawed_dataset
    train_net = root_script("train_net")
    cfg = small_mask_rcnn_cfg(name, tmp_path / "output", depth=18)
    cfg.SOLVER.MAX_ITER, cfg.SEED = 3, 0  # the seed decides which images are drawn
    config = tmp_path / "config.yaml"
    config.write_text(cfg.dump())
    train_net.main(default_argument_parser().parse_args(["--config-file", str(config)]))
    log = (tmp_path / "output" / "log.txt").read_text()
    assert f"Dropped 8 of 22 annotations in DATASETS.TRAIN ('{name}',)" in log
    assert "Removed 1 images with no usable annotations" in log  # Detectron2's, as before
    skips = [line for line in log.splitlines() if "Skipping a training image" in line]
    assert skips and all(truncated in line or not_an_image in line for line in skips)

"""FastCOCOEvaluator: its mask encoding equals pycocotools', and its AP equals pycocotools'
COCOeval (the official implementation) and Detectron2's COCOEvaluator on the same predictions."""

import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from helpers import evaluate, registered
from mask_rcnn_ext import load_config
from mask_rcnn_ext.engine import Trainer
from mask_rcnn_ext.evaluation import FastCOCOEvaluator, encode_masks
from support.evaluation import detections_to_instances, evaluation_problem


def _reference_rles(masks):
    return [mask_util.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            for mask in masks]


def _edge_case_masks(height, width):
    def column(j):
        return min(j, width - 1)

    masks = torch.zeros(10, height, width, dtype=torch.bool)
    masks[1] = True                                   # all foreground
    masks[2, 0, 0] = True                             # first pixel
    masks[3, -1, -1] = True                           # last pixel
    masks[4, :, 0] = True                             # first column
    masks[5, :, -1] = True                            # last column
    masks[6, -1, column(3)] = masks[6, 0, column(4)] = True  # a run across a column boundary
    masks[7, 2:5, 1:3] = True                         # a block
    masks[8, :, 2:4] = True                           # whole columns in the middle
    masks[9] = torch.rand(height, width, generator=torch.Generator().manual_seed(0)) > 0.5
    return masks                                      # masks[0]: empty


@pytest.mark.parametrize("size", [(7, 5), (1, 1), (1, 9), (9, 1)])
def test_mask_encoding_equals_pycocotools(size):
    masks = _edge_case_masks(*size)
    ours, reference = encode_masks(masks), _reference_rles(masks)
    assert [r["counts"] for r in ours] == [r["counts"].decode() for r in reference]
    assert all(r["size"] == list(size) for r in ours)
    assert encode_masks(torch.zeros(0, *size, dtype=torch.bool)) == []


def test_mask_encoding_of_pasted_masks_in_non_contiguous_memory():
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(40, 90, 120, generator=generator) > 0.97  # sparse, scattered
    masks[:20, 30:60, 40:100] = True
    for layout in (masks, masks.transpose(1, 2).contiguous().transpose(1, 2)):
        ours = encode_masks(layout)
        assert [r["counts"] for r in ours] == [r["counts"].decode()
                                               for r in _reference_rles(layout)]


@pytest.fixture
def registered_problem(tmp_path):
    dataset, detections = evaluation_problem(12, seed=3)
    name = "mask_rcnn_ext_test_fast_evaluator"
    with registered(dataset, tmp_path, name) as json_file:
        yield name, dataset, detections, json_file


def _run(evaluator, dataset, detections):
    contiguous = MetadataCatalog.get(evaluator._metadata.name).thing_dataset_id_to_contiguous_id
    evaluator.reset()
    for image in dataset["images"]:
        evaluator.process([{"image_id": image["id"]}],
                          [{"instances": detections_to_instances(image, detections, contiguous)}])
    return evaluator.evaluate()


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_ap_equals_pycocotools_and_coco_evaluator(registered_problem, tmp_path, use_fast_impl):
    name, dataset, detections, json_file = registered_problem
    ours = _run(FastCOCOEvaluator(name, output_dir=str(tmp_path / "ours"),
                                  use_fast_impl=use_fast_impl), dataset, detections)
    stock = _run(COCOEvaluator(name, output_dir=str(tmp_path / "stock"),
                               use_fast_impl=use_fast_impl), dataset, detections)
    written = json.loads((tmp_path / "ours" / "coco_instances_results.json").read_text())
    assert written == json.loads((tmp_path / "stock" / "coco_instances_results.json").read_text())

    ground_truth = COCO(str(json_file))
    for task in ("bbox", "segm"):
        # The official implementation on the written predictions: AP, AP50, AP75, APs/m/l.
        reference = evaluate(COCOeval, ground_truth, written, task, use_cats=1)
        ours_stats = [ours[task][key] for key in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        expected = np.where(reference.stats[:6] < 0, np.nan, reference.stats[:6])  # -1: no objects
        np.testing.assert_allclose(np.array(ours_stats) / 100, expected, atol=1e-6)
        assert ours[task] == pytest.approx(stock[task], abs=1e-12, nan_ok=True)  # per class too
    assert ours["segm"]["AP"] > 10 and ours["bbox"]["AP"] > 10


class _Death(BaseException):
    """Stands for the process being killed (not an Exception: nothing may swallow it)."""


def test_an_evaluation_killed_while_writing_leaves_the_previous_results(registered_problem,
                                                                         tmp_path, monkeypatch):
    name, dataset, detections, _ = registered_problem
    output = tmp_path / "inference"
    _run(FastCOCOEvaluator(name, output_dir=str(output)), dataset, detections)
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    assert sorted(before) == ["coco_instances_results.json", "instances_predictions.pth"]
    real_dump = json.dump

    def dying_dump(data, stream):
        text = json.dumps(data)
        stream.write(text[: len(text) // 2])
        raise _Death

    monkeypatch.setattr(json, "dump", dying_dump)
    with pytest.raises(_Death):
        _run(FastCOCOEvaluator(name, output_dir=str(output)), dataset, detections[::2])
    monkeypatch.setattr(json, "dump", real_dump)
    # The predictions' file was replaced whole (it was written first); the results file, killed
    # half-way, is the previous complete one, and no temporary file is left.
    assert sorted(path.name for path in output.iterdir()) == sorted(before)
    assert (output / "coco_instances_results.json").read_bytes() == (
        before["coco_instances_results.json"])
    assert len(torch.load(output / "instances_predictions.pth", weights_only=False)) == len(
        dataset["images"])


def _inner_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Boundary IoU's band (Cheng et al. 2021): the mask pixels with a pixel outside the mask (or
    outside the image) within ``width`` pixels in x and y."""
    padded = np.pad(mask, width)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * width + 1, 2 * width + 1))
    return mask & ~windows.all(axis=(2, 3))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("shift", [0, 1, 2, 4])
def test_boundary_ap_on_a_hand_built_case(tmp_path, shift):
    """One 40 x 40 square and one prediction moved ``shift`` px right: AP at each COCO IoU
    threshold is 1 if min(mask IoU, band IoU) reaches it, else 0."""
    height = width = 100
    dataset = {"images": [{"id": 1, "height": height, "width": width, "file_name": "1.png"}],
               "categories": [{"id": 1, "name": "square"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                "area": 1600.0, "bbox": [10, 10, 40, 40],
                                "segmentation": [[10, 10, 50, 10, 50, 50, 10, 50]]}]}
    truth = np.zeros((height, width), dtype=bool)
    truth[10:50, 10:50] = True
    predicted = np.roll(truth, shift, axis=1)
    instances = Instances((height, width), pred_boxes=Boxes(torch.tensor([[10.0 + shift, 10,
                                                                            50 + shift, 50]])),
                          scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]),
                          pred_masks=torch.from_numpy(predicted)[None])
    name = f"mask_rcnn_ext_test_boundary_{shift}"
    with registered(dataset, tmp_path, name):
        evaluator = FastCOCOEvaluator(name, output_dir=None, boundary_ap=True)
        evaluator.reset()
        evaluator.process([{"image_id": 1}], [{"instances": instances}])
        results = evaluator.evaluate()
    band = max(1, round(0.02 * math.hypot(height, width)))  # the paper's dilation ratio
    mask_iou = _iou(truth, predicted)
    boundary_iou = min(mask_iou, _iou(_inner_band(truth, band), _inner_band(predicted, band)))
    thresholds = np.linspace(0.5, 0.95, 10)
    assert results["segm"]["AP"] == pytest.approx(100 * np.mean(mask_iou >= thresholds))
    assert results["boundary"]["AP"] == pytest.approx(100 * np.mean(boundary_iou >= thresholds))
    assert results["boundary"]["AP75"] == pytest.approx(100 * (boundary_iou >= 0.75))
    if shift == 2:  # mask AP hardly sees a 2 px shift; boundary AP does
        assert results["segm"]["AP"] - results["boundary"]["AP"] >= 50


def test_boundary_ap_is_off_unless_asked_and_on_in_our_configs(registered_problem):
    name, dataset, detections, _ = registered_problem
    assert "boundary" not in _run(FastCOCOEvaluator(name, output_dir=None), dataset, detections)
    cfg = load_config(str(Path(__file__).parent.parent / "configs/Synthetic/"
                          "mask_rcnn_R_18_FPN_cpu.yaml"))
    evaluator = Trainer.build_evaluator(cfg, name, output_folder=None)
    results = _run(evaluator, dataset, detections)
    assert 0 < results["boundary"]["AP"] < results["segm"]["AP"]

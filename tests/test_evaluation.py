"""FastCOCOEvaluator: its mask encoding equals pycocotools', and its AP equals pycocotools'
COCOeval (the official implementation) and Detectron2's COCOEvaluator on the same predictions."""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from helpers import evaluate, registered
from mask_rcnn_ext.data.synthetic import detections_to_instances, evaluation_problem
from mask_rcnn_ext.evaluation import FastCOCOEvaluator, encode_masks


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

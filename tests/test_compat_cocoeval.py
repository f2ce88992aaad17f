"""Detectron2's fast COCOeval path (on the compat layer's faster-coco-eval adapter) against
pycocotools' reference COCOeval, and COCOEvaluator with its default arguments."""

import json

import numpy as np
import pytest
from detectron2.evaluation.fast_eval_api import COCOeval_opt
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from helpers import evaluate, registered
from support.evaluation import detections_to_instances, evaluation_problem


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("use_cats", [1, 0])
def test_fast_cocoeval_equals_pycocotools(iou_type, use_cats):
    dataset, detections = evaluation_problem(15, seed=0)
    ground_truth = COCO()
    ground_truth.dataset = dataset
    ground_truth.createIndex()
    reference = evaluate(COCOeval, ground_truth, detections, iou_type, use_cats)
    fast = evaluate(COCOeval_opt, ground_truth, detections, iou_type, use_cats)
    assert reference.stats[0] > 0.1  # a non-trivial problem
    np.testing.assert_allclose(fast.stats, reference.stats, atol=1e-12)
    np.testing.assert_allclose(fast.eval["precision"], reference.eval["precision"], atol=1e-12)
    np.testing.assert_allclose(fast.eval["recall"], reference.eval["recall"], atol=1e-12)


def test_coco_evaluator_with_default_arguments(tmp_path):
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import COCOEvaluator

    dataset, detections = evaluation_problem(8, seed=1)
    name = "mask_rcnn_ext_test_cocoeval"
    with registered(dataset, tmp_path, name) as json_file:
        evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"))
        evaluator.reset()
        contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
        for image in dataset["images"]:
            instances = detections_to_instances(image, detections, contiguous)
            evaluator.process([{"image_id": image["id"]}], [{"instances": instances}])
        results = evaluator.evaluate()
    # Reference: pycocotools on the predictions the evaluator wrote (rasterised masks as RLE).
    written = json.loads((tmp_path / "eval" / "coco_instances_results.json").read_text())
    ground_truth = COCO(str(json_file))
    for iou_type in ("bbox", "segm"):
        reference = evaluate(COCOeval, ground_truth, written, iou_type, 1)
        assert results[iou_type]["AP"] == pytest.approx(100 * reference.stats[0], abs=1e-6)
        assert results[iou_type]["AP75"] == pytest.approx(100 * reference.stats[2], abs=1e-6)
    assert results["segm"]["AP"] > 10

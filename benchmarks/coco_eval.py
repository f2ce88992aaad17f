"""COCO evaluation time (bbox + segm): mask_rcnn_ext's FastCOCOEvaluator against Detectron2's
default COCOEvaluator, on the same Mask R-CNN-style predictions, in one process.

The predictions are what Mask R-CNN gives COCOEvaluator: per image, 100 detections (boxes, scores,
classes, full-image bool masks, as DETECTIONS_PER_IMAGE = 100 and a low score threshold give),
three near each of 2-11 ground-truth objects and the rest scattered, on 480 x 640 images
(``support.evaluation.evaluation_problem``).
Each side runs process() on every image and then evaluate(); the AP of both is checked equal.
A second table times the COCO API backends alone on the same detections (loadRes + evaluate +
accumulate for bbox and segm): pycocotools' official COCOeval, Detectron2's COCOeval_opt (C++
matching), and faster-coco-eval's COCOeval_faster.

Usage: python -m benchmarks.coco_eval [--images 200] [--repeats 5] [--output PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import tempfile
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.fast_eval_api import COCOeval_opt

from benchmarks.common import compare, environment, peak_memory, print_table, write_results
from mask_rcnn_ext.evaluation import FastCOCOEvaluator
from support.evaluation import detections_to_instances, evaluation_problem

HEIGHT, WIDTH, DETECTIONS, CATEGORIES = 480, 640, 100, 5
TARGET = 0.5  # FastCOCOEvaluator / COCOEvaluator


def make_problem(num_images: int, seed: int = 0):
    """COCO ground truth (a dict) and, per image, (inputs, outputs) as Mask R-CNN gives them."""
    ground_truth, detections = evaluation_problem(
        num_images, seed, image_size=(HEIGHT, WIDTH), num_categories=CATEGORIES,
        objects_per_image=(2, 11), object_sizes=(12.0, 300.0), crowd_fraction=0.0,
        detections_per_object=(3, 3), detections_per_image=DETECTIONS)
    identity = {k: k - 1 for k in range(1, CATEGORIES + 1)}
    outputs = [({"image_id": image["id"]},
                {"instances": detections_to_instances(image, detections, identity)})
               for image in ground_truth["images"]]
    return ground_truth, outputs


EVALUATORS = {"detectron2 COCOEvaluator": COCOEvaluator,
              "mask_rcnn_ext FastCOCOEvaluator": FastCOCOEvaluator}
DATASET = "benchmark_coco_eval"


def _register(json_file: Path) -> None:
    register_coco_instances(DATASET, {}, str(json_file), str(json_file.parent))
    DatasetCatalog.get(DATASET)  # fills the metadata's category-id mapping


def side_evaluation(side: str, json_file: Path, images: int):
    """One side's evaluation of the problem (for measuring its memory in a fresh process)."""
    _, outputs = make_problem(images)
    _register(json_file)
    return lambda: _evaluate_with(EVALUATORS[side], DATASET, outputs)


def _evaluate_with(evaluator_class, name, outputs):
    evaluator = evaluator_class(name, output_dir=None)
    evaluator.reset()
    for inputs, output in outputs:
        evaluator.process([inputs], [output])
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()


def _backend(evaluator_class, ground_truth, results):
    with contextlib.redirect_stdout(io.StringIO()):
        for task in ("bbox", "segm"):
            detections = copy.deepcopy(results)
            if task == "segm":
                for detection in detections:
                    detection.pop("bbox")
            evaluation = evaluator_class(ground_truth, ground_truth.loadRes(detections), task)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    ground_truth, outputs = make_problem(args.images)
    with tempfile.TemporaryDirectory() as folder:
        json_file = Path(folder) / "ground_truth.json"
        json_file.write_text(json.dumps(ground_truth))
        _register(json_file)
        try:
            ours = _evaluate_with(FastCOCOEvaluator, DATASET, outputs)
            stock = _evaluate_with(COCOEvaluator, DATASET, outputs)
            gap = max(abs(ours[task][key] - stock[task][key]) for task in ("bbox", "segm")
                      for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
            evaluators = compare({
                side: lambda evaluator=evaluator: _evaluate_with(evaluator, DATASET, outputs)
                for side, evaluator in EVALUATORS.items()}, args.repeats)
            for side in EVALUATORS:
                evaluators[side]["peak_memory_mib"] = peak_memory(side_evaluation, side,
                                                                  json_file, args.images)
            backends = _compare_backends(json_file, DATASET, outputs, args.repeats)
        finally:
            DatasetCatalog.remove(DATASET)
            MetadataCatalog.remove(DATASET)

    ratio = (evaluators["mask_rcnn_ext FastCOCOEvaluator"]["median_s"]
             / evaluators["detectron2 COCOEvaluator"]["median_s"])
    print(f"{args.images} images x {DETECTIONS} detections of {HEIGHT} x {WIDTH}; bbox AP "
          f"{ours['bbox']['AP']:.2f}, segm AP {ours['segm']['AP']:.2f}; largest AP difference "
          f"from COCOEvaluator: {gap:.2e}")
    _print(evaluators)
    print(f"FastCOCOEvaluator / COCOEvaluator: {ratio:.2f} (target <= {TARGET})\n")
    _print(backends)
    path = write_results("coco_eval", {
        "environment": environment(), "images": args.images, "detections_per_image": DETECTIONS,
        "image_size": [HEIGHT, WIDTH], "ap": {"ours": ours, "detectron2": stock},
        "largest_ap_difference": gap, "evaluators": evaluators, "backends": backends,
        "ratio_fast_to_stock": ratio, "target_ratio": TARGET, "meets_target": ratio <= TARGET,
    }, args.output)
    print(f"written: {path}")


def _compare_backends(json_file, name, outputs, repeats):
    import faster_coco_eval
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mask_rcnn_ext.evaluation import instances_to_coco_results

    to_dataset = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    from_contiguous = {contiguous: dataset for dataset, contiguous in to_dataset.items()}
    results = []
    for inputs, output in outputs:
        for result in instances_to_coco_results(output["instances"], inputs["image_id"]):
            results.append({**result, "category_id": from_contiguous[result["category_id"]]})
    with contextlib.redirect_stdout(io.StringIO()):
        official, faster = COCO(str(json_file)), faster_coco_eval.COCO(str(json_file))
    return compare({
        "pycocotools COCOeval": lambda: _backend(COCOeval, official, results),
        "detectron2 COCOeval_opt": lambda: _backend(COCOeval_opt, official, results),
        "faster-coco-eval COCOeval_faster":
            lambda: _backend(faster_coco_eval.COCOeval_faster, faster, results),
    }, repeats)


def _print(measured: dict[str, dict]) -> None:
    print_table([(name, f"{m['median_s']:.3f}", f"{m['min_s']:.3f}-{m['max_s']:.3f}",
                  f"{m['peak_memory_mib']:.0f}" if "peak_memory_mib" in m else "-")
                 for name, m in measured.items()], ("", "median s", "range s", "peak MiB"))


if __name__ == "__main__":
    main()

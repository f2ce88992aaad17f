"""COCO evaluation of instance segmentation: Detectron2's COCOEvaluator, with the same AP in less
time.

Where Detectron2's COCOEvaluator spends its time on Mask R-CNN outputs (profiled): run-length
encoding each full-image mask with pycocotools (most of it), then deep-copying every prediction
before the mask evaluation. :class:`FastCOCOEvaluator` encodes only the columns between a mask's
first and last foreground column (the rest of a COCO RLE, which runs down the columns, is two runs
of zeros), and copies predictions shallowly. Matching and AP are Detectron2's own
(``COCOeval_opt``, or pycocotools' ``COCOeval`` with ``use_fast_impl=False``). Figures:
benchmarks/results/summary.md.

faster-coco-eval's own ``COCOeval_faster`` was measured too: faster for boxes, slower for masks on
this machine, so not used for them; it computes the boundary AP (``boundary_ap=True``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Callable
from typing import IO

import faster_coco_eval
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.fast_eval_api import COCOeval_opt
from detectron2.structures import BoxMode, Instances
from detectron2.utils.logger import create_small_table
from pycocotools.cocoeval import COCOeval

from .data.annotations import (
    DEGENERATE_KINDS,
    check_unique_images,
    degenerate_coco_annotations,
)
from .files import atomic_write, remove_interrupted_writes

__all__ = ["FastCOCOEvaluator", "encode_masks", "instances_to_coco_results"]


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """COCO RLEs of (N, H, W) bool masks on the CPU, equal to ``pycocotools.mask.encode`` of each
    (``counts`` as a UTF-8 string, as Detectron2 writes them).

    A COCO RLE runs down the columns, so only the columns from a mask's first to its last
    foreground column need scanning: before and after them are two runs of zeros. The runs of all
    masks' column strips are found in one vectorised pass; pycocotools compresses each.
    """
    count, height, width = masks.shape
    if count == 0:
        return []
    # (N, W): nonzero where a column holds foreground. A max over uint8 is ~8x faster than
    # torch's bool any() over the rows. An empty mask gets the one-column strip 0..0.
    occupied_columns = masks.view(torch.uint8).amax(dim=1)
    first = occupied_columns.argmax(dim=1).numpy()
    last = width - 1 - occupied_columns.flip(1).argmax(dim=1).numpy()
    pixels = masks.numpy()
    # Each strip flattened column by column (its transpose in C order), all in one array.
    flat = np.concatenate([pixels[index, :, start:stop + 1].T
                           for index, (start, stop) in enumerate(zip(first, last, strict=True))],
                          axis=None)
    starts = np.concatenate(([0], np.cumsum((last - first + 1) * height)))
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    # Every run ends at a change or at a strip's end: the sorted union of both (np.union1d
    # hashes, which is several times slower here).
    boundaries = np.sort(np.concatenate((changes, starts)))
    boundaries = boundaries[np.concatenate(([True], boundaries[1:] != boundaries[:-1]))]
    lengths = np.diff(boundaries).tolist()
    first_run = np.searchsorted(boundaries, starts).tolist()
    starts_with_foreground = flat[starts[:-1]].tolist()
    zeros_before = (first * height).tolist()
    zeros_after = ((width - 1 - last) * height).tolist()
    rles = []
    for index in range(count):
        runs = lengths[first_run[index]:first_run[index + 1]]
        if starts_with_foreground[index]:
            runs.insert(0, 0)  # a COCO RLE starts with a (possibly empty) run of zeros
        runs[0] += zeros_before[index]
        if len(runs) % 2:  # the last run is background
            runs[-1] += zeros_after[index]
        elif zeros_after[index]:
            runs.append(zeros_after[index])
        rle = mask_util.frPyObjects({"size": [height, width], "counts": runs}, height, width)
        rles.append({"size": [height, width], "counts": rle["counts"].decode("utf-8")})
    return rles


def instances_to_coco_results(instances: Instances, image_id: int) -> list[dict]:
    """COCO result dicts of one image's predictions (boxes in XYWH pixels, contiguous class ids,
    masks as RLE), as Detectron2's ``instances_to_coco_json`` writes them for boxes and masks."""
    if len(instances) == 0:
        return []
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS,
                            BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    results = [{"image_id": image_id, "category_id": category, "bbox": box, "score": score}
               for box, score, category in zip(boxes, scores, classes, strict=True)]
    if instances.has("pred_masks"):
        for result, rle in zip(results, encode_masks(instances.pred_masks.bool()), strict=True):
            result["segmentation"] = rle
    return results


# The files an evaluation writes into its output folder (COCOEvaluator's names).
_RESULT_FILES = ("instances_predictions.pth", "coco_instances_results.json")

# COCO's standard metrics, in the order of COCOeval.stats.
_AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class FastCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator (same arguments, same results: bbox and segm AP) with faster mask
    encoding and no deep copies. Keypoints, proposals and detection limits other than COCO's 100
    are left to COCOEvaluator's own code.

    With ``boundary_ap=True`` the masks are also scored by boundary AP (Cheng et al., "Boundary
    IoU", CVPR 2021), reported as task "boundary" (``boundary/AP``, ...): a match's IoU is the
    smaller of the mask IoU and the IoU of the two masks' inner boundary bands, each band being
    the mask pixels within ``boundary_dilation_ratio`` x the image diagonal of the mask's edge
    (the image border counts as edge). Mask AP is dominated by the object's interior, so it barely
    sees a mask that is a pixel or two off; boundary AP does.

    The ground truth is checked first, before any inference: an image id or file listed twice
    (:func:`~mask_rcnn_ext.data.annotations.check_unique_images`) is an error naming the file and
    the ids, and so is a degenerate annotation, crowd or not, by the rule that drops them from
    training (:func:`~mask_rcnn_ext.data.annotations.degenerate_coco_annotations`). It is not
    dropped, as training does, because evaluation scores the ground truth as given: an object that
    can never be matched lowers the AP (a box of negative width makes exact predictions score 91
    instead of 100; a polygon outside its box, 92), and a 2-point polygon crashes pycocotools
    after the whole inference pass.
    """

    def __init__(self, dataset_name: str, *args, boundary_ap: bool = False,
                 boundary_dilation_ratio: float = 0.02, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        # COCOEvaluator writes its files in place when _output_dir is set, so an evaluation killed
        # while writing leaves a truncated file; this class writes them itself, atomically.
        self._results_dir, self._output_dir = self._output_dir, None
        if self._results_dir and os.path.isdir(self._results_dir):
            remove_interrupted_writes(self._results_dir, "|".join(map(re.escape, _RESULT_FILES)),
                                      "evaluations")
        self._boundary_ap = boundary_ap
        self._boundary_dilation_ratio = boundary_dilation_ratio
        source = self._metadata.get("json_file", dataset_name)
        check_unique_images(self._coco_api.dataset, source)
        if not self._do_evaluation:
            self._logger.warning(f"{source} has no annotations: the predictions are written, "
                                 "and no AP is computed")
            return
        degenerate = degenerate_coco_annotations(self._coco_api.dataset)
        if degenerate:
            listed = "; ".join(f"id {annotation_id}: {DEGENERATE_KINDS[kind]}"
                               for annotation_id, kind in degenerate[:10])
            more = f"; and {len(degenerate) - 10} more" if len(degenerate) > 10 else ""
            raise ValueError(
                f"{source}: {len(degenerate)} ground-truth annotation(s) cannot be evaluated as "
                f"given ({listed}{more}). Fix or remove them: training drops such annotations "
                "with a count, but evaluation scores the ground truth as it is "
                "(datasets/README.md, 'Flawed data').")

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs, strict=True):
            instances = output.get("instances")
            if instances is None or instances.has("pred_keypoints") or "proposals" in output:
                super().process([input], [output])
                continue
            self._predictions.append({
                "image_id": input["image_id"],
                "instances": instances_to_coco_results(instances.to("cpu"), input["image_id"]),
            })

    def _write_result(self, name: str, write: Callable[[IO], None], mode: str) -> None:
        """``write(stream)`` into the file ``name`` of the output folder (if any), atomically."""
        if not self._results_dir:
            return
        os.makedirs(self._results_dir, exist_ok=True)
        path = os.path.join(self._results_dir, name)
        self._logger.info(f"Saving results to {path}")
        with atomic_write(path, mode) as stream:
            write(stream)

    def _write_predictions(self, predictions: list[dict]) -> None:
        """What COCOEvaluator.evaluate writes first, whatever the predictions are."""
        self._write_result("instances_predictions.pth",
                           lambda stream: torch.save(predictions, stream), "wb")

    def _eval_box_proposals(self, predictions):
        self._write_predictions(predictions)
        # RPN-only models are Detectron2's business: its code writes box_proposals.pkl.
        self._output_dir = self._results_dir
        try:
            super()._eval_box_proposals(predictions)
        finally:
            self._output_dir = None

    def _eval_predictions(self, predictions, img_ids=None):
        self._write_predictions(predictions)
        results = list(itertools.chain.from_iterable(p["instances"] for p in predictions))
        tasks = self._tasks or self._tasks_from_predictions(results)
        max_detections = self._max_dets_per_image or [1, 10, 100]
        if "keypoints" in tasks or max_detections[-1] != 100:
            # Detectron2's own evaluation handles keypoints and other detection limits; it maps
            # the results' class ids to the data set's in place, and (without _output_dir)
            # writes nothing.
            super()._eval_predictions(predictions, img_ids)
            self._write_result("coco_instances_results.json",
                               lambda stream: json.dump(results, stream), "w")
            return
        to_dataset_id = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if to_dataset_id is not None:
            from_contiguous = {contiguous: dataset for dataset, contiguous in to_dataset_id.items()}
            for result in results:
                if result["category_id"] not in from_contiguous:
                    raise ValueError(f"a prediction has class {result['category_id']}, but "
                                     f"{self._metadata.name} has {len(from_contiguous)} classes")
                result["category_id"] = from_contiguous[result["category_id"]]
        self._write_result("coco_instances_results.json",
                           lambda stream: json.dump(results, stream), "w")
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        for task in sorted(tasks):
            evaluation = (self._evaluate(results, task, max_detections, img_ids) if results
                          else None)  # pycocotools fails on empty results
            self._results[task] = self._derive_coco_results(
                evaluation, task, class_names=self._metadata.get("thing_classes"))
        if self._boundary_ap and "segm" in tasks:
            self._results["boundary"] = self._boundary_results(results, img_ids)

    def _evaluate(self, results: list[dict], task: str, max_detections: list[int],
                  img_ids) -> COCOeval:
        if task == "segm":
            # Without "bbox", COCO takes a detection's area from its mask (as Detectron2 does).
            results = [{key: value for key, value in r.items() if key != "bbox"} for r in results]
        else:
            results = [dict(r) for r in results]  # loadRes adds fields to each
        detections = self._coco_api.loadRes(results)
        evaluation = (COCOeval_opt if self._use_fast_impl else COCOeval)(
            self._coco_api, detections, task)
        evaluation.params.maxDets = list(max_detections)
        if img_ids is not None:
            evaluation.params.imgIds = img_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        return evaluation

    def _boundary_results(self, results: list[dict], img_ids) -> dict[str, float]:
        """Boundary AP of the mask results (faster-coco-eval's ``iouType="boundary"``), as
        ``_derive_coco_results`` gives the other tasks: COCO's metrics and AP per category.
        (Not through that method: it knows only Detectron2's three tasks by name, and would log
        these figures as mask AP.)"""
        if not results:
            return {metric: math.nan for metric in _AP_METRICS}
        ground_truth = faster_coco_eval.COCO(self._coco_api.dataset)
        detections = ground_truth.loadRes(
            [{key: value for key, value in r.items() if key != "bbox"} for r in results])
        evaluation = faster_coco_eval.COCOeval_faster(
            ground_truth, detections, "boundary",
            boundary_dilation_ratio=self._boundary_dilation_ratio,
            print_function=self._logger.debug)
        if img_ids is not None:
            evaluation.params.imgIds = img_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        scores = {metric: float(value * 100) if value >= 0 else math.nan
                  for metric, value in zip(_AP_METRICS, evaluation.stats, strict=False)}
        self._logger.info("Boundary AP (dilation ratio %s):\n%s", self._boundary_dilation_ratio,
                          create_small_table(scores))
        # precision: (IoU threshold, recall, category, area range "all" first, max detections)
        precision = evaluation.eval["precision"][:, :, :, 0, -1]
        names = self._metadata.get("thing_classes") or []
        if len(names) > 1 and len(names) == precision.shape[2]:
            for index, name in enumerate(names):
                valid = precision[:, :, index][precision[:, :, index] > -1]
                scores[f"AP-{name}"] = float(valid.mean() * 100) if valid.size else math.nan
        return scores

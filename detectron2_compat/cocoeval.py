"""Detectron2's fast COCOeval entry points, on faster-coco-eval's C++ evaluator.

``detectron2.evaluation.fast_eval_api.COCOeval_opt`` calls
``COCOevalEvaluateImages(area_ranges, max_detections, iou_thresholds, ious, gts, dts)`` with, for
each image and category, lists of ``InstanceAnnotation``; faster-coco-eval's function of that name
takes the instances as two indexed datasets instead. This module translates, using the image and
category *positions* as ids, which is all the per-image matching needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faster_coco_eval.faster_eval_api_cpp as _fast

__all__ = [
    "COCOevalAccumulate",
    "COCOevalEvaluateImages",
    "ImageEvaluation",
    "InstanceAnnotation",
]

# Opaque per-image result, passed from COCOevalEvaluateImages to COCOevalAccumulate.
ImageEvaluation = _fast.ImageEvaluation


class InstanceAnnotation:
    """One ground-truth or detected instance as the matcher sees it."""

    __slots__ = ("fields",)

    def __init__(self, id: int, score: float, area: float, is_crowd: bool, ignore: bool):
        self.fields = {
            "id": int(id),
            "score": float(score),
            "area": float(area),
            "iscrowd": bool(is_crowd),
            "ignore": bool(ignore),
        }

    def __repr__(self) -> str:
        return f"InstanceAnnotation({self.fields})"


def _dataset(instances: Sequence[Sequence[Sequence[InstanceAnnotation]]]) -> Any:
    dataset = _fast.Dataset()
    for image_index, per_category in enumerate(instances):
        for category_index, category_instances in enumerate(per_category):
            for annotation in category_instances:
                dataset.append_ref(image_index, category_index, annotation.fields)
    return dataset


def COCOevalEvaluateImages(
    area_ranges: Sequence[Sequence[float]],
    max_detections: int,
    iou_thresholds: Sequence[float],
    ious: Sequence[Sequence[Any]],
    ground_truth_instances: Sequence[Sequence[Sequence[InstanceAnnotation]]],
    detected_instances: Sequence[Sequence[Sequence[InstanceAnnotation]]],
) -> list:
    """Match detections to ground truth for every (image, category, area range).

    ``ious[i][c]`` is the (num_detections, num_ground_truth) IoU matrix of image ``i`` and category
    ``c`` (or an empty list); the instance lists are indexed the same way.
    """
    num_images = len(ground_truth_instances)
    num_categories = len(ground_truth_instances[0]) if num_images else 0
    if len(detected_instances) != num_images or len(ious) != num_images:
        raise ValueError(
            "COCOevalEvaluateImages: ground truth, detections and ious must cover the same "
            f"images ({num_images}, {len(detected_instances)}, {len(ious)})"
        )
    return _fast.COCOevalEvaluateImages(
        [list(r) for r in area_ranges],
        int(max_detections),
        list(iou_thresholds),
        ious,
        _dataset(ground_truth_instances),
        _dataset(detected_instances),
        list(range(num_images)),
        list(range(num_categories)),
        True,
    )


def COCOevalAccumulate(params: Any, evaluations: list) -> dict:
    """Precision/recall/score tables from :func:`COCOevalEvaluateImages`' output.

    ``params`` is the ``pycocotools.cocoeval.Params`` used for the evaluation. Returns a dict with
    ``counts`` ([T, R, K, A, M]), ``precision`` and ``scores`` (T x R x K x A x M) and ``recall``
    (T x K x A x M), like Detectron2's compiled version.
    """
    return _fast.COCOevalAccumulate(params, evaluations)

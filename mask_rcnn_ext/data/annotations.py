"""Dropping degenerate instance annotations before training, with a count of each kind in the log.

Detectron2 drops some bad annotations itself: ``load_coco_json`` drops polygons with fewer than 3
points or an odd number of coordinates (with a count), and the training mapper silently drops boxes
that are empty after resizing. Others reach the losses: a NaN box coordinate becomes a NaN
regression target, and a polygon of zero area gives an all-background mask target for an object.
:func:`drop_degenerate_annotations` removes all of these from any data set, whatever loaded it.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
from detectron2.structures import BoxMode

__all__ = ["DEGENERATE_KINDS", "check_mask_format", "degenerate_coco_annotations",
           "drop_degenerate_annotations"]

# Why an annotation is dropped, as the log says it.
DEGENERATE_KINDS = {
    "malformed_box": "a missing box, or one that is not 4 numbers",
    "non_finite_box": "a NaN or Inf box coordinate",
    "empty_box": "a box of zero or negative width or height",
    "box_outside_image": "a box wholly outside its image",
    "degenerate_polygons": "only degenerate polygons (< 3 points, NaN or Inf, or zero area)",
    "some_degenerate_polygons": "degenerate polygons beside usable ones",
}


def _polygon_area(coordinates: np.ndarray) -> float:
    """Shoelace area of a polygon given as [x0, y0, x1, y1, ...] (pixels^2)."""
    x, y = coordinates[0::2], coordinates[1::2]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _is_usable_polygon(polygon) -> bool:
    coordinates = np.asarray(polygon, dtype=np.float64)
    return (coordinates.size >= 6 and coordinates.size % 2 == 0
            and bool(np.isfinite(coordinates).all()) and _polygon_area(coordinates) > 0)


def _degenerate_kind(annotation: dict, width: float | None, height: float | None) -> str | None:
    """Which of DEGENERATE_KINDS makes ``annotation`` unusable, or None if it is usable."""
    try:
        box = np.asarray(BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"],
                                         BoxMode.XYXY_ABS), dtype=np.float64)
    except (KeyError, TypeError, ValueError, AssertionError):  # BoxMode asserts 4 numbers
        return "malformed_box"
    if box.shape != (4,):
        return "malformed_box"
    if not np.isfinite(box).all():
        return "non_finite_box"
    if box[2] <= box[0] or box[3] <= box[1]:
        return "empty_box"
    if width is not None and height is not None and (
            box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height):
        return "box_outside_image"
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list) and not any(map(_is_usable_polygon, segmentation)):
        return "degenerate_polygons"  # RLE masks (dicts) are taken as they are
    return None


def degenerate_coco_annotations(coco: dict) -> list[tuple[object, str]]:
    """``(annotation id, kind)`` for each non-crowd annotation of a COCO-format data set (the
    dict of its JSON file) that training would drop or trim (see DEGENERATE_KINDS): the same rule
    as :func:`drop_degenerate_annotations`, for ground truth that must be used as given."""
    sizes = {image["id"]: (image.get("width"), image.get("height"))
             for image in coco.get("images", [])}
    found = []
    for annotation in coco.get("annotations", []):
        if annotation.get("iscrowd", 0):
            continue
        width, height = sizes.get(annotation.get("image_id"), (None, None))
        kind = _degenerate_kind({**annotation, "bbox_mode": BoxMode.XYWH_ABS}, width, height)
        segmentation = annotation.get("segmentation")
        if kind is None and isinstance(segmentation, list) and not all(
                map(_is_usable_polygon, segmentation)):
            kind = "some_degenerate_polygons"
        if kind is not None:
            found.append((annotation.get("id"), kind))
    return found


def drop_degenerate_annotations(dataset_dicts: list[dict], description: str) -> list[dict]:
    """Remove degenerate non-crowd annotations (see DEGENERATE_KINDS) in place from Detectron2
    dataset dicts, and degenerate polygons from annotations that keep at least one good polygon.
    Logs how many of each kind were dropped from ``description`` (e.g. the data set names).
    Crowd annotations are kept: they mark regions to ignore, not objects to learn."""
    dropped: Counter[str] = Counter()
    total = dropped_polygons = 0
    for record in dataset_dicts:
        kept = []
        for annotation in record.get("annotations", []):
            total += 1
            kind = None if annotation.get("iscrowd", 0) else _degenerate_kind(
                annotation, record.get("width"), record.get("height"))
            if kind is not None:
                dropped[kind] += 1
                continue
            if isinstance(annotation.get("segmentation"), list):
                polygons = [p for p in annotation["segmentation"] if _is_usable_polygon(p)]
                dropped_polygons += len(annotation["segmentation"]) - len(polygons)
                annotation["segmentation"] = polygons
            kept.append(annotation)
        if "annotations" in record:
            record["annotations"] = kept
    logger = logging.getLogger(__name__)
    if dropped:
        reasons = "; ".join(f"{count} with {DEGENERATE_KINDS[kind]}"
                            for kind, count in sorted(dropped.items()))
        logger.warning(f"Dropped {sum(dropped.values())} of {total} annotations in "
                       f"{description}: {reasons}")
    if dropped_polygons:
        logger.warning(f"Dropped {dropped_polygons} degenerate polygons in {description} from "
                       "annotations that keep other, usable polygons")
    return dataset_dicts


def check_mask_format(dataset_dicts: list[dict], mask_format: str, description: str) -> None:
    """Raise, naming the image, the annotation and the config key, if a non-crowd annotation's
    mask is an RLE (a dict) while ``INPUT.MASK_FORMAT`` is "polygon": Detectron2 would fail on it
    in the middle of training, with an error that names neither."""
    if mask_format != "polygon":
        return
    for record in dataset_dicts:
        for index, annotation in enumerate(record.get("annotations", [])):
            if not annotation.get("iscrowd", 0) and isinstance(annotation.get("segmentation"),
                                                               dict):
                raise ValueError(
                    f"{description}: annotation {index} of image {record['file_name']} has an "
                    "RLE mask, and INPUT.MASK_FORMAT is 'polygon'; set INPUT.MASK_FORMAT bitmask "
                    "to train on RLE masks")

"""Dropping degenerate instance annotations before training, with a count of each kind in the log,
and refusing COCO files whose images are listed twice.

Detectron2 drops some bad annotations itself: ``load_coco_json`` drops polygons with fewer than 3
points or an odd number of coordinates (with a count), and the training mapper silently drops boxes
that are empty after resizing. Others reach the losses: a NaN box coordinate becomes a NaN
regression target, a polygon of zero area gives an all-background mask target for an object, and
so does a polygon that lies outside the object's box (the mask target is the mask cropped to the
box). :func:`drop_degenerate_annotations` removes all of these from any data set, whatever loaded
it; crowd annotations go through the same rules (pycocotools fails on a 2-point crowd polygon).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
from detectron2.structures import BoxMode

__all__ = ["DEGENERATE_KINDS", "MIN_POLYGON_EXTENT_IN_BOX", "check_mask_format",
           "check_unique_images", "degenerate_coco_annotations", "drop_degenerate_annotations"]

# Why an annotation is dropped, as the log says it.
DEGENERATE_KINDS = {
    "malformed_box": "a missing box, or one that is not 4 numbers",
    "non_finite_box": "a NaN or Inf box coordinate",
    "empty_box": "a box of zero or negative width or height",
    "box_outside_image": "a box wholly outside its image",
    "degenerate_polygons": "only degenerate polygons (< 3 points, NaN or Inf, or zero area)",
    "polygons_outside_box": "only polygons that lie outside its box",
    "some_degenerate_polygons": "degenerate polygons, or polygons outside its box, beside "
                                "usable ones",
}

# A polygon lies outside its annotation's box when less than this fraction of its extent (the
# area of its bounding box) is inside the box. Lenient: boxes that miss a mask's edge by a few
# pixels, as hand-drawn or rounded boxes do, keep their polygons.
MIN_POLYGON_EXTENT_IN_BOX = 0.5


def _polygon_area(coordinates: np.ndarray) -> float:
    """Shoelace area of a polygon given as [x0, y0, x1, y1, ...] (pixels^2)."""
    x, y = coordinates[0::2], coordinates[1::2]
    # Each vertex with the next one, the last with the first (np.roll costs more than the sum).
    twice_area = x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0]
    return 0.5 * abs(float(twice_area))


def _polygon_problem(polygon, box: np.ndarray) -> str | None:
    """Why ``polygon`` ([x0, y0, x1, y1, ...] pixels) cannot outline the object of ``box``
    (XYXY pixels): "degenerate" (< 3 points, an odd number of coordinates, NaN or Inf, zero
    area) or "outside_box" (see MIN_POLYGON_EXTENT_IN_BOX); None if it can."""
    coordinates = np.asarray(polygon, dtype=np.float64)
    if not (coordinates.size >= 6 and coordinates.size % 2 == 0
            and bool(np.isfinite(coordinates).all()) and _polygon_area(coordinates) > 0):
        return "degenerate"
    x, y = coordinates[0::2], coordinates[1::2]
    extent = (x.max() - x.min()) * (y.max() - y.min())
    inside = (max(0.0, min(x.max(), box[2]) - max(x.min(), box[0]))
              * max(0.0, min(y.max(), box[3]) - max(y.min(), box[1])))
    return "outside_box" if inside < MIN_POLYGON_EXTENT_IN_BOX * extent else None


def _xyxy_box(annotation: dict) -> np.ndarray | None:
    """The annotation's box as XYXY float64, or None if it is missing or not 4 numbers."""
    try:
        box = np.asarray(BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"],
                                         BoxMode.XYXY_ABS), dtype=np.float64)
    except (KeyError, TypeError, ValueError, AssertionError):  # BoxMode asserts 4 numbers
        return None
    return box if box.shape == (4,) else None


def _annotation_problems(annotation: dict, width: float | None,
                         height: float | None) -> tuple[str | None, list[str | None]]:
    """Which of DEGENERATE_KINDS makes ``annotation`` unusable (None if it is usable), and the
    problem of each of its polygons (see :func:`_polygon_problem`; empty for RLE masks, which are
    taken as they are, and for annotations unusable by their box)."""
    box = _xyxy_box(annotation)
    if box is None:
        return "malformed_box", []
    if not np.isfinite(box).all():
        return "non_finite_box", []
    if box[2] <= box[0] or box[3] <= box[1]:
        return "empty_box", []
    if width is not None and height is not None and (
            box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height):
        return "box_outside_image", []
    segmentation = annotation.get("segmentation")
    if not isinstance(segmentation, list):
        return None, []
    problems = [_polygon_problem(polygon, box) for polygon in segmentation]
    if None not in problems:
        kind = "polygons_outside_box" if "outside_box" in problems else "degenerate_polygons"
        return kind, problems
    return None, problems


def degenerate_coco_annotations(coco: dict) -> list[tuple[object, str]]:
    """``(annotation id, kind)`` for each annotation of a COCO-format data set (the dict of its
    JSON file), crowd or not, that training would drop or trim (see DEGENERATE_KINDS): the same
    rule as :func:`drop_degenerate_annotations`, for ground truth that must be used as given."""
    sizes = {image["id"]: (image.get("width"), image.get("height"))
             for image in coco.get("images", [])}
    found = []
    for annotation in coco.get("annotations", []):
        width, height = sizes.get(annotation.get("image_id"), (None, None))
        kind, problems = _annotation_problems({**annotation, "bbox_mode": BoxMode.XYWH_ABS},
                                              width, height)
        if kind is None and any(problems):
            kind = "some_degenerate_polygons"
        if kind is not None:
            found.append((annotation.get("id"), kind))
    return found


def drop_degenerate_annotations(dataset_dicts: list[dict], description: str) -> list[dict]:
    """Remove degenerate annotations (see DEGENERATE_KINDS; crowd ones too) in place from
    Detectron2 dataset dicts, and unusable polygons from annotations that keep at least one good
    polygon. Logs how many of each kind were dropped from ``description`` (e.g. the data set
    names)."""
    dropped: Counter[str] = Counter()
    dropped_polygons: Counter[str] = Counter()
    total = 0
    for record in dataset_dicts:
        kept = []
        for annotation in record.get("annotations", []):
            total += 1
            kind, problems = _annotation_problems(annotation, record.get("width"),
                                                  record.get("height"))
            if kind is not None:
                dropped[kind] += 1
                continue
            if any(problems):
                dropped_polygons.update(problem for problem in problems if problem)
                annotation["segmentation"] = [p for p, problem in zip(
                    annotation["segmentation"], problems, strict=True) if problem is None]
            kept.append(annotation)
        if "annotations" in record:
            record["annotations"] = kept
    logger = logging.getLogger(__name__)
    if dropped:
        reasons = "; ".join(f"{count} with {DEGENERATE_KINDS[kind]}"
                            for kind, count in sorted(dropped.items()))
        logger.warning(f"Dropped {sum(dropped.values())} of {total} annotations in "
                       f"{description}: {reasons}")
    if dropped_polygons["degenerate"]:
        logger.warning(f"Dropped {dropped_polygons['degenerate']} degenerate polygons in "
                       f"{description} from annotations that keep other, usable polygons")
    if dropped_polygons["outside_box"]:
        logger.warning(f"Dropped {dropped_polygons['outside_box']} polygons that lie outside "
                       f"their annotation's box in {description} from annotations that keep "
                       "other, usable polygons")
    return dataset_dicts


def check_unique_images(coco: dict, source: str) -> None:
    """Raise, naming ``source`` (the JSON file) and the ids or file names, if an image id or an
    image file appears in more than one entry of a COCO-format data set's "images" list. The COCO
    API keeps one entry per id and gives it the annotations of all, silently; two entries for one
    file split its objects, so each entry would teach the other's objects as background and
    score them as false positives."""
    counts = Counter(image.get("id") for image in coco.get("images", []))
    repeated = [image_id for image_id, count in counts.items() if count > 1]
    if repeated:
        raise ValueError(
            f"{source}: {len(repeated)} image id(s) appear in more than one image entry "
            f"({_listed(repeated)}); the COCO API would keep one entry per id and give it the "
            "annotations of all. Give each image its own id.")
    ids_of: dict[object, list] = {}
    for image in coco.get("images", []):
        ids_of.setdefault(image.get("file_name"), []).append(image.get("id"))
    shared = [f"{name} (ids {', '.join(map(str, ids))})" for name, ids in ids_of.items()
              if len(ids) > 1]
    if shared:
        raise ValueError(
            f"{source}: {len(shared)} image file(s) appear in more than one image entry "
            f"({_listed(shared)}); each entry would hold part of the picture's objects, so the "
            "others would count as background in training and as false positives in "
            "evaluation. Merge them into one entry per image.")


def _listed(items: list, count: int = 10) -> str:
    more = f", and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(map(str, items[:count])) + more


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

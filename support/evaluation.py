"""Synthetic COCO evaluation problems for the tests and benchmarks of evaluation: ground truth
and noisy detections with polygon masks, and detections as Mask R-CNN's ``Instances``. Not part
of the package (``mask_rcnn_ext`` holds product code only)."""

from __future__ import annotations

import math

import numpy as np
from shapely.geometry import Polygon

__all__ = ["detections_to_instances", "evaluation_problem"]


def _outline(rng: np.random.Generator, x: float, y: float, size: float) -> np.ndarray:
    """A random star-convex 7-gon about ``size`` pixels across, centred at (x, y): (7, 2)."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, 7))
    radii = size / 2 * rng.uniform(0.6, 1.0, 7)
    return np.stack((x + radii * np.cos(angles), y + radii * np.sin(angles)), 1)


def _inside(points: np.ndarray, height: int, width: int) -> list[float]:
    return points.clip(0, (width - 1, height - 1)).ravel().tolist()


def evaluation_problem(num_images: int, seed: int = 0, *, image_size: tuple[int, int] = (100, 120),
                       num_categories: int = 3, objects_per_image: tuple[int, int] = (0, 5),
                       object_sizes: tuple[float, float] = (4.0, 45.0),
                       crowd_fraction: float = 0.1,
                       detections_per_object: tuple[int, int] = (0, 2),
                       detections_per_image: int | None = None) -> tuple[dict, list[dict]]:
    """A random COCO evaluation problem: ground truth and noisy detections with polygon masks.

    Args:
        num_images: images of ``image_size`` (height, width) pixels.
        seed: the same seed gives the same problem.
        num_categories: category ids 1..num_categories.
        objects_per_image, object_sizes: inclusive ranges of the count of objects and of their
            size in pixels (log-uniform); objects are random 7-gons, a ``crowd_fraction`` of them
            crowds.
        detections_per_object: inclusive range of detections per object: its outline shifted by
            about 1/16 of its size, with the right category 80% of the time.
        detections_per_image: if given, each image's detections are padded with scattered ones to
            this count (as Mask R-CNN's DETECTIONS_PER_IMAGE with a low score threshold gives).

    Returns:
        The ground truth as a COCO dict, and the detections as COCO results (``image_id``,
        ``category_id``, ``bbox`` in XYWH, ``segmentation`` polygons, ``score``).
    """
    rng = np.random.default_rng(seed)
    height, width = image_size
    low, high = np.log(object_sizes[0]), np.log(object_sizes[1])
    images, annotations, detections = [], [], []

    def detect(image_id: int, points: np.ndarray, category: int) -> None:
        polygon = _inside(points, height, width)
        xs, ys = polygon[0::2], polygon[1::2]
        detections.append({"image_id": image_id, "category_id": category,
                           "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                           "segmentation": [polygon], "score": float(rng.uniform(0.05, 1))})

    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": width, "height": height,
                       "file_name": f"{image_id}.png"})
        first = len(detections)
        for _ in range(rng.integers(objects_per_image[0], objects_per_image[1] + 1)):
            size = float(np.exp(rng.uniform(low, high)))
            category = int(rng.integers(1, num_categories + 1))
            points = _outline(rng, rng.uniform(0, width), rng.uniform(0, height), size)
            polygon = _inside(points, height, width)
            shape = Polygon(np.reshape(polygon, (-1, 2)))
            x1, y1, x2, y2 = shape.bounds
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": shape.area, "segmentation": [polygon],
                                "iscrowd": int(rng.random() < crowd_fraction)})
            for _ in range(rng.integers(detections_per_object[0], detections_per_object[1] + 1)):
                guess = category if rng.random() < 0.8 else int(rng.integers(1, num_categories + 1))
                detect(image_id, points + rng.normal(0, size / 16, 2), guess)
        if detections_per_image is not None:
            while len(detections) - first < detections_per_image:
                size = float(np.exp(rng.uniform(low, high)))
                detect(image_id, _outline(rng, rng.uniform(0, width), rng.uniform(0, height), size),
                       int(rng.integers(1, num_categories + 1)))
            del detections[first + detections_per_image:]
    ground_truth = {"images": images, "annotations": annotations,
                    "categories": [{"id": k, "name": f"class{k}"}
                                   for k in range(1, num_categories + 1)]}
    return ground_truth, detections


def detections_to_instances(image: dict, detections: list[dict],
                            dataset_id_to_contiguous_id: dict[int, int]):
    """One image's COCO-result detections (polygon masks) as Mask R-CNN outputs them:
    ``Instances`` with ``pred_boxes`` (XYXY), ``scores``, ``pred_classes`` and full-image bool
    ``pred_masks`` (N, H, W)."""
    import torch
    from detectron2.structures import Boxes, Instances
    from detectron2.structures.masks import polygons_to_bitmask

    height, width = image["height"], image["width"]
    ours = [d for d in detections if d["image_id"] == image["id"]]
    instances = Instances((height, width))
    xywh = torch.tensor([d["bbox"] for d in ours], dtype=torch.float32).view(-1, 4)
    instances.pred_boxes = Boxes(torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1))
    instances.scores = torch.tensor([d["score"] for d in ours], dtype=torch.float32)
    instances.pred_classes = torch.tensor(
        [dataset_id_to_contiguous_id[d["category_id"]] for d in ours], dtype=torch.int64)
    instances.pred_masks = torch.from_numpy(np.stack(
        [polygons_to_bitmask(d["segmentation"], height, width) for d in ours]) if ours
        else np.zeros((0, height, width), bool))
    return instances

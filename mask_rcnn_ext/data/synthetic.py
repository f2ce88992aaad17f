"""Synthetic data: mask_rcnn_ext's embedded COCO-format instance-segmentation set, and random
evaluation problems (ground truth and Mask R-CNN-style detections) for tests and benchmarks.

The data sets: ``python -m mask_rcnn_ext.data.synthetic`` (or ``datasets/prepare_synthetic.py``),
``--set synthetic`` (default) or ``--set synthetic_small`` (:data:`SETS`).

Images of textured backgrounds with objects of four categories, two convex (square, disc) and two
non-convex (star, L-shape), from small (under 32 x 32 px) to large, rotated, overlapping.
Objects are painted in order; an object's annotation is its *visible* region, the exact polygon
minus everything painted above it (computed with shapely), so masks are exact polygons. A
placement that would leave an object with a hole (COCO polygons cannot express one) or less than a
quarter visible is drawn again. The same seed gives the same files.

Layout (the builtin names ``<set>_train`` and ``<set>_val`` read it, under
``$DETECTRON2_DATASETS``, default ``datasets/``)::

    <set>/train/000000.png ...     <set>/annotations/instances_train.json
    <set>/val/000000.png ...       <set>/annotations/instances_val.json

Usage: python -m mask_rcnn_ext.data.synthetic [--set synthetic] [--root $DETECTRON2_DATASETS/<set>]
[--train N] [--val N] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw
from shapely.affinity import rotate, translate
from shapely.geometry import MultiPolygon, Polygon

__all__ = ["CATEGORIES", "SETS", "SyntheticSet", "detections_to_instances", "evaluation_problem",
           "main", "make_image", "write_split"]

CATEGORIES = ("square", "disc", "star", "l_shape")
MIN_VISIBLE_FRACTION = 0.25


@dataclass(frozen=True)
class SyntheticSet:
    """A builtin synthetic set: its generator's parameters and its default number of images."""

    image_size: tuple[int, int]  # height, width (px)
    object_sizes: tuple[float, float]  # smallest and largest object across (px), log-uniform
    train: int
    val: int


SETS = {
    # Objects from small to large in COCO's terms (under 32 px, over 96 px across).
    "synthetic": SyntheticSet((256, 320), (14.0, 150.0), train=600, val=100),
    # A quarter of the pixels, for runs that converge in minutes on 2 CPU cores: the accuracy
    # study's set (benchmarks/ablation.py) and `make demo`'s.
    "synthetic_small": SyntheticSet((128, 160), (16.0, 96.0), train=800, val=200),
}


def _shape(category: str) -> Polygon:
    """The category's outline, centred at 0 and about 1 across."""
    if category == "square":
        return shapely.box(-0.5, -0.5, 0.5, 0.5)
    if category == "disc":
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        return Polygon(np.stack((np.cos(angles), np.sin(angles)), 1) * 0.5)
    if category == "star":
        angles = np.linspace(0, 2 * math.pi, 10, endpoint=False)
        radii = np.where(np.arange(10) % 2 == 0, 0.5, 0.22)
        return Polygon(np.stack((radii * np.sin(angles), -radii * np.cos(angles)), 1))
    if category == "l_shape":
        return Polygon([(-0.5, -0.5), (-0.1, -0.5), (-0.1, 0.2), (0.5, 0.2), (0.5, 0.5),
                        (-0.5, 0.5)])
    raise ValueError(f"unknown category {category!r}")


def _place(category: str, rng: np.random.Generator, spec: SyntheticSet) -> Polygon:
    height, width = spec.image_size
    smallest, largest = spec.object_sizes
    size = math.exp(rng.uniform(math.log(smallest), math.log(largest)))
    aspect = math.exp(rng.uniform(-0.4, 0.4)) if category in ("square", "disc") else 1.0
    shape = shapely.affinity.scale(_shape(category), size * aspect, size / aspect, origin=(0, 0))
    shape = rotate(shape, rng.uniform(0, 360), origin=(0, 0))
    x = rng.uniform(size * 0.3, width - size * 0.3)
    y = rng.uniform(size * 0.3, height - size * 0.3)
    frame = shapely.box(0, 0, width, height)
    return translate(shape, x, y).intersection(frame)


def _visible(shapes: list[Polygon], index: int) -> Polygon | MultiPolygon:
    above = shapely.union_all(shapes[index + 1:]) if index + 1 < len(shapes) else Polygon()
    return shapes[index].difference(above)


def _parts(geometry) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [geometry] if not geometry.is_empty else []
    return [g for g in getattr(geometry, "geoms", []) if isinstance(g, Polygon) and not g.is_empty]


def _acceptable(shapes: list[Polygon]) -> bool:
    for index, shape in enumerate(shapes):
        visible = _visible(shapes, index)
        if visible.area < MIN_VISIBLE_FRACTION * shape.area:
            return False
        if any(part.interiors for part in _parts(visible)):
            return False
    return True


def _background(rng: np.random.Generator, image_size: tuple[int, int]) -> np.ndarray:
    height, width = image_size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    gradient = rng.uniform(-0.3, 0.3, (2, 3))
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    image = (base + xx[..., None] * gradient[0] + yy[..., None] * gradient[1]
             + 18 * stripes[..., None] + rng.normal(0, 12, (height, width, 3)))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_image(rng: np.random.Generator, spec: SyntheticSet = SETS["synthetic"]
               ) -> tuple[np.ndarray, list[dict]]:
    """One image of ``spec`` ((H, W, 3) uint8) and its annotations (category index, visible
    polygon parts)."""
    shapes, categories = [], []
    for _ in range(int(rng.integers(2, 7))):
        for _attempt in range(20):
            category = int(rng.integers(len(CATEGORIES)))
            candidate = _place(CATEGORIES[category], rng, spec)
            if isinstance(candidate, Polygon) and candidate.area > 30 and _acceptable(
                    [*shapes, candidate]):
                shapes.append(candidate)
                categories.append(category)
                break
    image = Image.fromarray(_background(rng, spec.image_size))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon([tuple(p) for p in shape.exterior.coords[:-1]], fill=color)
    objects = [{"category": category, "parts": _parts(_visible(shapes, index))}
               for index, category in enumerate(categories)]
    return np.asarray(image), objects


def write_split(root: Path, split: str, count: int, seed: int,
                spec: SyntheticSet = SETS["synthetic"]) -> Path:
    """Write ``count`` images of ``spec`` and their COCO json; returns the json path."""
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
        pixels, objects = make_image(rng, spec)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        images.append({"id": index + 1, "file_name": file_name, "height": pixels.shape[0],
                       "width": pixels.shape[1]})
        for obj in objects:
            # Coordinates are stored to 0.01 px; area and box are those of the stored polygons.
            polygons = [[round(v, 2) for xy in part.exterior.coords[:-1] for v in xy]
                        for part in obj["parts"]]
            merged = MultiPolygon([Polygon(np.reshape(p, (-1, 2))) for p in polygons])
            x1, y1, x2, y2 = merged.bounds
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": index + 1,
                "category_id": obj["category"] + 1,
                "segmentation": polygons,
                "area": merged.area,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
            })
    json_path = root / "annotations" / f"instances_{split}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({
        "info": {"description": "mask_rcnn_ext synthetic set", "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CATEGORIES)],
    }))
    return json_path


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from .builtin import datasets_root  # where the builtin names read it (imports Detectron2)

    parser.add_argument("--set", choices=list(SETS), default="synthetic",
                        help="which builtin set's images (default: synthetic)")
    parser.add_argument("--root", type=Path,
                        help="folder to write (default: $DETECTRON2_DATASETS/<set>, else "
                             "datasets/<set>, where <set>_train/val are read)")
    parser.add_argument("--train", type=int, help="training images (default: the set's)")
    parser.add_argument("--val", type=int, help="validation images (default: the set's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spec = SETS[args.set]
    root = args.root if args.root is not None else datasets_root() / args.set
    for split, count in (("train", args.train), ("val", args.val)):
        count = getattr(spec, split) if count is None else count
        path = write_split(root, split, count, args.seed, spec)
        print(f"wrote {count} {split} images and {path}")

if __name__ == "__main__":
    main()

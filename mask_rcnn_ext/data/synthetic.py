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
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw
from shapely.affinity import rotate, translate
from shapely.geometry import MultiPolygon, Polygon

__all__ = ["CATEGORIES", "SETS", "SyntheticSet", "datasets_root", "incomplete", "main",
           "make_image", "write_split"]

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


def incomplete(root: Path, counts: dict[str, int]) -> str | None:
    """Why the data set at ``root`` is not the complete synthetic set of ``counts`` (split -> number
    of images), or None when it is: each split's JSON present, with the synthetic categories,
    ``counts`` images, and every image file there."""
    for split, count in counts.items():
        json_path = root / "annotations" / f"instances_{split}.json"
        if not json_path.is_file():
            return f"{json_path} is missing"
        data = json.loads(json_path.read_text())
        names = [category.get("name") for category in data.get("categories", [])]
        if names != list(CATEGORIES):
            return f"{json_path} has the categories {names}, not the synthetic {list(CATEGORIES)}"
        if len(data.get("images", [])) != count:
            return f"{json_path} lists {len(data.get('images', []))} images, not {count}"
        missing = [image["file_name"] for image in data["images"]
                   if not (root / split / image["file_name"]).is_file()]
        if missing:
            return (f"{len(missing)} images that {json_path} lists are missing, e.g. "
                    f"{root / split / missing[0]}")
    return None


def datasets_root() -> Path:
    """Where builtin data sets live: ``$DETECTRON2_DATASETS``, default ``datasets`` (relative to
    the working directory), as for Detectron2's builtin COCO names; read when called."""
    return Path(os.getenv("DETECTRON2_DATASETS", "datasets"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=list(SETS), default="synthetic",
                        help="which builtin set's images (default: synthetic)")
    parser.add_argument("--root", type=Path,
                        help="folder to write (default: $DETECTRON2_DATASETS/<set>, else "
                             "datasets/<set>, where <set>_train/val are read)")
    parser.add_argument("--train", type=int, help="training images (default: the set's)")
    parser.add_argument("--val", type=int, help="validation images (default: the set's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--if-missing", action="store_true",
                        help="write the set only where its folder does not exist; an existing "
                             "one must be the complete set (else: an error saying what differs)")
    args = parser.parse_args(argv)
    spec = SETS[args.set]
    root = args.root if args.root is not None else datasets_root() / args.set
    counts = {split: getattr(spec, split) if count is None else count
              for split, count in (("train", args.train), ("val", args.val))}
    if args.if_missing and root.exists():
        problem = incomplete(root, counts)
        if problem is None:
            print(f"{root} holds the complete set ({counts['train']} + {counts['val']} images)")
            return
        # Never trained on as if complete, never written over: it may be someone's data.
        parser.exit(2, f"{root} holds a partial or another data set: {problem}. Remove the "
                       "folder to have the set written there, or set DETECTRON2_DATASETS to "
                       "another folder.\n")
    for split, count in counts.items():
        path = write_split(root, split, count, args.seed, spec)
        print(f"wrote {count} {split} images and {path}")

if __name__ == "__main__":
    main()

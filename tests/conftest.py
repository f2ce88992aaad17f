"""Shared fixtures: a tiny COCO-format instance-segmentation set written to disk and registered."""

import json
import uuid

import numpy as np
import pytest
from PIL import Image, ImageDraw


def write_tiny_coco(root, num_images=4, size=(64, 80), seed=0):
    """Images with filled squares and triangles on noise; returns the COCO json path.

    Polygons are exact: each shape is drawn from the polygon that is written.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels = (rng.random((height, width, 3)) * 60).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for shape_index in range(2):
            x, y = rng.uniform(4, width - 30), rng.uniform(4, height - 30)
            side = float(rng.uniform(12, 24))
            if shape_index == 0:
                polygon = [x, y, x + side, y, x + side, y + side, x, y + side]
                category = 1
            else:
                polygon = [x, y + side, x + side / 2, y, x + side, y + side]
                category = 2
            draw.polygon(polygon, fill=(200, 80 * category, 40))
            xs, ys = polygon[0::2], polygon[1::2]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                "segmentation": [polygon], "bbox": box, "area": box[2] * box[3] / category,
                "iscrowd": 0,
            })
        file_name = f"{image_id:03d}.png"
        image.save(root / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    json_path = root / "instances.json"
    json_path.write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "triangle"}],
    }))
    return json_path


@pytest.fixture
def tiny_coco_dataset(tmp_path):
    """The name of a registered tiny COCO-format dataset (removed again afterwards)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    json_path = write_tiny_coco(tmp_path)
    name = f"tiny_coco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_path), str(tmp_path))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)

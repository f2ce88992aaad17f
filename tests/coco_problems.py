"""Random COCO-format evaluation problems shared by the evaluation tests."""

import contextlib
import copy
import json

import numpy as np


def square_polygon(x, y, size):
    return [[x, y, x + size, y, x + size, y + size, x, y + size]]


def random_problem(seed, num_images=15):
    """Ground truth with crowds and three categories, and noisy detections with masks."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 120, "height": 100, "file_name": f"{image_id}.png"})
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 70, 2)
            size = float(rng.uniform(4, 45))
            category = int(rng.integers(1, 4))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                "bbox": [x, y, size, size], "area": size * size,
                "segmentation": square_polygon(x, y, size),
                "iscrowd": int(rng.random() < 0.1),
            })
            for _ in range(rng.integers(0, 3)):
                dx, dy = rng.normal(0, size / 8, 2)
                guess = category if rng.random() < 0.8 else int(rng.integers(1, 4))
                detections.append({
                    "image_id": image_id, "category_id": guess,
                    "bbox": [x + dx, y + dy, size, size],
                    "segmentation": square_polygon(x + dx, y + dy, size),
                    "score": float(rng.random()),
                })
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]}
    return dataset, detections


def evaluate(evaluator_class, ground_truth, detections, iou_type, use_cats):
    evaluator = evaluator_class(ground_truth, ground_truth.loadRes(copy.deepcopy(detections)),
                                iou_type)
    evaluator.params.useCats = use_cats
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def to_instances(image, detections, dataset_id_to_contiguous_id):
    """One image's detections (COCO results with polygon masks) as Mask R-CNN outputs them."""
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


@contextlib.contextmanager
def registered(dataset, folder, name):
    """``dataset`` written to ``folder`` as COCO JSON and registered as ``name``, loaded once so
    that its metadata holds the category-id mapping; unregistered afterwards. Yields the JSON
    file's path."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    json_file = folder / "instances.json"
    json_file.write_text(json.dumps(dataset))
    register_coco_instances(name, {}, str(json_file), str(folder))
    try:
        DatasetCatalog.get(name)
        yield json_file
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

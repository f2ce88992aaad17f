"""Random COCO-format evaluation problems shared by the evaluation tests."""

import copy

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

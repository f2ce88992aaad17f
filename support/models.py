"""Models and inputs for the tests and benchmarks: synthetic images at any size, Detectron2
training batches, and models with calibrated random weights. Not part of the package.

No pretrained weights can be downloaded here, so the weights are random (Detectron2's
initialisation) with each frozen batch norm calibrated on a benchmark image, in forward order, to
give its output zero mean and unit variance: activations then have realistic scales, where raw
random weights with identity frozen batch norm overflow in a ResNet-50.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks

from mask_rcnn_ext.data import synthetic

__all__ = ["calibrated_model", "synthetic_images", "training_batch"]


def synthetic_images(count: int, size: tuple[int, int], seed: int = 0):
    """``count`` synthetic images (BGR uint8, ``size`` = (H, W)) and their objects (class index,
    list of polygons in pixels), scaled up from the generator's 256 x 320."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        image, objects = synthetic.make_image(rng)
        scale_y, scale_x = size[0] / image.shape[0], size[1] / image.shape[1]
        image = cv2.resize(image[:, :, ::-1], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        scaled = [(obj["category"], [np.asarray(part.exterior.coords[:-1]) * (scale_x, scale_y)
                                     for part in obj["parts"]]) for obj in objects]
        samples.append((np.ascontiguousarray(image), scaled))
    return samples


def training_batch(samples, num_classes: int) -> list[dict]:
    """Detectron2 training inputs: CHW images and ground-truth instances (polygon masks)."""
    batch = []
    for image, objects in samples:
        instances = Instances(image.shape[:2])
        polygons = [[p.ravel() for p in parts] for _, parts in objects]
        boxes = [[min(p[:, 0].min() for p in parts), min(p[:, 1].min() for p in parts),
                  max(p[:, 0].max() for p in parts), max(p[:, 1].max() for p in parts)]
                 for _, parts in objects]
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor([c % num_classes for c, _ in objects])
        instances.gt_masks = PolygonMasks(polygons)
        batch.append({"image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
                      "height": image.shape[0], "width": image.shape[1], "instances": instances})
    return batch


@torch.no_grad()
def calibrated_model(cfg, image: np.ndarray, seed: int = 0):
    """``build_model(cfg)`` with seeded random weights and every FrozenBatchNorm2d calibrated on
    ``image`` (see the module docstring)."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()

    def calibrate(norm, inputs):
        features = inputs[0]
        mean = features.mean(dim=(0, 2, 3))
        variance = features.var(dim=(0, 2, 3))
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(variance)

    handles = [m.register_forward_pre_hook(calibrate) for m in model.modules()
               if isinstance(m, FrozenBatchNorm2d)]
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())
    model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])
    for handle in handles:
        handle.remove()
    return model

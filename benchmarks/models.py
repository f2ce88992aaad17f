"""Models and inputs for the model benchmarks: mask_rcnn_ext's Mask R-CNN and stock Detectron2's,
with the same weights, on synthetic images.

No pretrained weights can be downloaded here, so the weights are random (Detectron2's
initialisation) with each frozen batch norm calibrated on a benchmark image, in forward order, to
give its output zero mean and unit variance: activations then have realistic scales, where raw
random weights with identity frozen batch norm overflow in a ResNet-50.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks

from mask_rcnn_ext import load_config
from mask_rcnn_ext.data import synthetic

ROOT = Path(__file__).parent.parent
CONFIGS = {
    "R50-FPN": ROOT / "configs" / "COCO" / "mask_rcnn_R_50_FPN_1x.yaml",
    "R18-FPN-GN (small CPU)": ROOT / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.yaml",
}
IMAGE_SIZES = {"R50-FPN": (800, 1216), "R18-FPN-GN (small CPU)": (256, 320)}
# Stock Detectron2's heads in place of ours; everything else in the config is shared.
STOCK_HEADS = ["MODEL.ROI_HEADS.NAME", "StandardROIHeads",
               "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]


def config(name: str, stock: bool, device: str = "cpu", overrides: list | None = None):
    """The benchmark config ``name`` (a key of CONFIGS) with stock or mask_rcnn_ext heads."""
    return load_config(str(CONFIGS[name]), [
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", device, *(STOCK_HEADS if stock else []),
        *(overrides or [])])


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


def same_weight_models(name: str, image: np.ndarray, device: str = "cpu") -> dict:
    """{"stock Detectron2": stock model, "mask_rcnn_ext": ours with MODEL.SPEEDUPS applied (as its
    Trainer and Predictor do), "cfg": our config}, with the same calibrated weights (our heads
    load stock state dicts unchanged)."""
    from mask_rcnn_ext.modeling import apply_speedups

    stock = calibrated_model(config(name, stock=True, device="cpu"), image)
    ours_cfg = config(name, stock=False, device=device)
    ours = build_model(ours_cfg)
    ours.load_state_dict(stock.state_dict())
    return {"stock Detectron2": stock.to(device),
            "mask_rcnn_ext": apply_speedups(ours.to(device), ours_cfg), "cfg": ours_cfg}

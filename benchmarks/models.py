"""Models and inputs for the model benchmarks: mask_rcnn_ext's Mask R-CNN and stock Detectron2's,
with the same (calibrated random, :mod:`support.models`) weights, on synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from detectron2.modeling import build_model

from mask_rcnn_ext import load_config
from support.models import calibrated_model, synthetic_images, training_batch

__all__ = ["CONFIGS", "IMAGE_SIZES", "OURS", "OURS_PLAIN", "calibrated_model", "config",
           "same_weight_models", "synthetic_images", "training_batch"]

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


# Our model as its Trainer and Predictor build it, and without MODEL.SPEEDUPS.
OURS, OURS_PLAIN = "mask_rcnn_ext", "mask_rcnn_ext without MODEL.SPEEDUPS"


def same_weight_models(name: str, image: np.ndarray, device: str = "cpu") -> dict:
    """{"stock Detectron2": stock model, OURS: ours with MODEL.SPEEDUPS applied (as its Trainer
    and Predictor do), OURS_PLAIN: ours without them, "cfg": our config}, with the same calibrated
    weights (our heads load stock state dicts unchanged)."""
    from mask_rcnn_ext.modeling import apply_speedups

    stock = calibrated_model(config(name, stock=True, device="cpu"), image)
    ours_cfg = config(name, stock=False, device=device)
    ours = {}
    for side in (OURS, OURS_PLAIN):
        ours[side] = build_model(ours_cfg)
        ours[side].load_state_dict(stock.state_dict())
        ours[side].to(device)
    return {"stock Detectron2": stock.to(device), OURS: apply_speedups(ours[OURS], ours_cfg),
            OURS_PLAIN: ours[OURS_PLAIN], "cfg": ours_cfg}

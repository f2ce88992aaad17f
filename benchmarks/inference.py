"""Inference latency: ``DefaultPredictor`` on stock Detectron2 Mask R-CNN against mask_rcnn_ext's
``Predictor`` (our heads and MODEL.SPEEDUPS: frozen batch norm folded into the convolutions and
the channels-last layout on CPU), same weights, same image, in one process.

R50-FPN, one 800 x 1216 image, batch 1, SCORE_THRESH_TEST 0 so that every image gives
DETECTIONS_PER_IMAGE = 100 instances (their masks pasted at full resolution). Weights as
benchmarks/models.py says. The outputs of both sides are compared: box and score differences,
and the fraction of mask pixels that differ.

Usage: python -m benchmarks.inference [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from detectron2.engine import DefaultPredictor
from detectron2.structures import pairwise_iou

from benchmarks.common import compare, environment, peak_memory, print_table, write_results
from benchmarks.models import IMAGE_SIZES, calibrated_model, config, synthetic_images
from mask_rcnn_ext.engine import Predictor

CONFIG = "R50-FPN"
TARGET = 0.9  # ours / stock


def _agreement(stock, ours) -> dict:
    """How far our outputs are from stock's, each of ours paired with the stock instance of the
    same class that overlaps it most (near-tied scores may list them in another order)."""
    overlaps = pairwise_iou(ours.pred_boxes, stock.pred_boxes)
    overlaps[ours.pred_classes[:, None] != stock.pred_classes[None, :]] = -1
    best_overlap, partner = overlaps.max(dim=1)
    return {
        "instances": [len(stock), len(ours)],
        "unpaired (best IoU < 0.99)": int((best_overlap < 0.99).sum()),
        "max_box_difference_px":
            (ours.pred_boxes.tensor - stock.pred_boxes.tensor[partner]).abs().max().item(),
        "max_score_difference": (ours.scores - stock.scores[partner]).abs().max().item(),
        "differing_mask_pixel_fraction":
            (ours.pred_masks != stock.pred_masks[partner]).float().mean().item(),
    }


def _predictors(device: str):
    """The benchmark image, and DefaultPredictor (stock) and our Predictor with the same
    weights (from one checkpoint file)."""
    (image, _), = synthetic_images(1, IMAGE_SIZES[CONFIG])
    low_threshold = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    stock_cfg = config(CONFIG, stock=True, device=device, overrides=low_threshold)
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "calibrated.pth"
        torch.save({"model": calibrated_model(stock_cfg, image).state_dict()}, weights)
        stock_cfg.MODEL.WEIGHTS = str(weights)
        ours_cfg = config(CONFIG, stock=False, device=device,
                          overrides=[*low_threshold, "MODEL.WEIGHTS", str(weights)])
        return image, {"stock Detectron2": DefaultPredictor(stock_cfg),
                       "mask_rcnn_ext": Predictor(ours_cfg)}


def side_prediction(side: str, device: str):
    """One side's prediction (for measuring its memory in a fresh process)."""
    image, predictors = _predictors(device)
    return lambda: predictors[side](image)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    image, predictors = _predictors(args.device)
    with torch.no_grad():
        outputs = {side: p(image)["instances"].to("cpu") for side, p in predictors.items()}
    stock, ours = outputs["stock Detectron2"], outputs["mask_rcnn_ext"]
    agreement = _agreement(stock, ours)
    measured = compare({side: lambda p=p: p(image) for side, p in predictors.items()},
                       args.repeats, args.device)
    for side in predictors:
        measured[side]["peak_memory_mib"] = peak_memory(side_prediction, side, args.device,
                                                        device=args.device)
    ratio = measured["mask_rcnn_ext"]["median_s"] / measured["stock Detectron2"]["median_s"]
    print(f"{CONFIG}, one {IMAGE_SIZES[CONFIG][0]} x {IMAGE_SIZES[CONFIG][1]} image, "
          f"{len(ours)} instances; outputs: {agreement}")
    print_table([(side, f"{m['median_s']:.3f}", f"{m['min_s']:.3f}-{m['max_s']:.3f}",
                  f"{m['peak_memory_mib']:.0f}") for side, m in measured.items()],
                ("", "median s", "range s", "peak MiB"))
    print(f"ours / stock: {ratio:.2f} (target <= {TARGET})")
    path = write_results("inference", {
        "environment": environment(args.device), "config": CONFIG,
        "image_size": IMAGE_SIZES[CONFIG], "sides": measured, "output_agreement": agreement,
        "ratio_ours_to_stock": ratio, "target_ratio": TARGET, "meets_target": ratio <= TARGET,
    }, args.output)
    print(f"written: {path}")


if __name__ == "__main__":
    main()

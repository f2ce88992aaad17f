"""Inference latency: ``DefaultPredictor`` on stock Detectron2 Mask R-CNN against mask_rcnn_ext's
``Predictor`` (our heads and MODEL.SPEEDUPS: frozen batch norm folded into the convolutions and
the channels-last layout on CPU), same weights, same image, in one process.

R50-FPN, one 800 x 1216 image, batch 1, SCORE_THRESH_TEST 0 so that every image gives
DETECTIONS_PER_IMAGE = 100 instances (their masks pasted at full resolution). Weights as
benchmarks/models.py says. The outputs of both sides are compared: box and score differences,
and the fraction of mask pixels that differ.

Then batched prediction: ``BatchPredictor`` on 4 images of that size (batches of 4) against our
``Predictor`` called on each in a loop, same weights.

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
from mask_rcnn_ext.engine import BatchPredictor, Predictor

CONFIG = "R50-FPN"
TARGET = 0.9  # ours / stock
BATCH = 4


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
    """The benchmark image, and DefaultPredictor (stock), our Predictor and our BatchPredictor
    with the same weights (from one checkpoint file)."""
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
                       "mask_rcnn_ext": Predictor(ours_cfg),
                       "batched": BatchPredictor(ours_cfg, batch_size=BATCH)}


def side_prediction(side: str, device: str):
    """One side's prediction (for measuring its memory in a fresh process)."""
    image, predictors = _predictors(device)
    return lambda: predictors[side](image)


def _batched_against_the_loop(predictor: Predictor, batched: BatchPredictor, repeats: int,
                              device: str) -> dict:
    """BATCH images predicted in one batch against one at a time; outputs compared."""
    images = [image for image, _ in synthetic_images(BATCH, IMAGE_SIZES[CONFIG], seed=1)]
    with torch.no_grad():
        loop = [predictor(image)["instances"].to("cpu") for image in images]
        together = [output["instances"].to("cpu") for output in batched(images)]
    box_difference = max((a.pred_boxes.tensor - b.pred_boxes.tensor).abs().max().item()
                         for a, b in zip(loop, together, strict=True))
    measured = compare({"Predictor, one image at a time": lambda: [predictor(i) for i in images],
                        f"BatchPredictor, batch of {BATCH}": lambda: batched(images)},
                       repeats, device)
    ratio = (measured[f"BatchPredictor, batch of {BATCH}"]["median_s"]
             / measured["Predictor, one image at a time"]["median_s"])
    print_table([(side, f"{m['median_s']:.3f}", f"{m['min_s']:.3f}-{m['max_s']:.3f}")
                 for side, m in measured.items()], (f"{BATCH} images", "median s", "range s"))
    print(f"batched / loop: {ratio:.2f}; largest box difference {box_difference:.2e} px")
    return {"images": BATCH, "sides": measured, "ratio_batched_to_loop": ratio,
            "max_box_difference_px": box_difference}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    image, predictors = _predictors(args.device)
    batched = predictors.pop("batched")
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
    batch = _batched_against_the_loop(predictors["mask_rcnn_ext"], batched, args.repeats,
                                      args.device)
    path = write_results("inference", {
        "environment": environment(args.device), "config": CONFIG,
        "image_size": IMAGE_SIZES[CONFIG], "sides": measured, "output_agreement": agreement,
        "ratio_ours_to_stock": ratio, "target_ratio": TARGET, "meets_target": ratio <= TARGET,
        "batched_prediction": batch,
    }, args.output)
    print(f"written: {path}")


if __name__ == "__main__":
    main()

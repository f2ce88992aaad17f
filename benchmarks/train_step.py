"""Training step time: mask_rcnn_ext's Mask R-CNN (a config as shipped) against stock Detectron2
Mask R-CNN (the same config with Detectron2's heads and no MODEL.SPEEDUPS), and ours without
MODEL.SPEEDUPS (what the speed-ups themselves do), same weights, same inputs, in one process.

A step is what Detectron2's SimpleTrainer does after loading data: forward with losses, backward,
SGD-with-momentum update; all sides start each step from the same random seed (so they sample the
same proposals) and their steps alternate. Configs: R50-FPN with 2 images of 800 x 1216 (the
issue's case; FrozenBN, weights calibrated as benchmarks/models.py says) and the small CPU config
(R18-FPN with group norm, 4 images of 256 x 320, as `make demo` trains).

Usage: python -m benchmarks.train_step [--repeats 5] [--configs R50-FPN ...] [--device cpu]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from detectron2.utils.events import EventStorage

from benchmarks.common import compare, environment, peak_memory, print_table, write_results
from benchmarks.models import (
    CONFIGS,
    IMAGE_SIZES,
    OURS,
    OURS_PLAIN,
    same_weight_models,
    synthetic_images,
    training_batch,
)

TARGET = 0.9  # ours / stock
# Ours with / without MODEL.SPEEDUPS: the speed-ups our configs turn on must not slow a model down
# (group norm included: the R18 config).
SPEEDUPS_TARGET = 1.0
BATCH = {"R50-FPN": 2, "R18-FPN-GN (small CPU)": 4}
SIDES = ("stock Detectron2", OURS, OURS_PLAIN)


def _step_function(model, batch):
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=1e-4, momentum=0.9)
    model.train()

    def step():
        torch.manual_seed(0)
        with EventStorage():
            losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return step


def _steps(name: str, device: str) -> dict:
    """Each side's training step on config ``name``."""
    samples = synthetic_images(BATCH[name], IMAGE_SIZES[name])
    models = same_weight_models(name, samples[0][0], device)
    batch = training_batch(samples, models["cfg"].MODEL.ROI_HEADS.NUM_CLASSES)
    return {side: _step_function(models[side], batch) for side in SIDES}


def side_step(name: str, side: str, device: str):
    """One side's training step (for measuring its memory in a fresh process)."""
    return _steps(name, device)[side]


def measure(name: str, repeats: int, device: str) -> dict:
    measured = compare(_steps(name, device), repeats, device)
    for side in SIDES:
        measured[side]["peak_memory_mib"] = peak_memory(side_step, name, side, device,
                                                        device=device)
    ratio = measured[OURS]["median_s"] / measured["stock Detectron2"]["median_s"]
    speedups = measured[OURS]["median_s"] / measured[OURS_PLAIN]["median_s"]
    return {"images": BATCH[name], "image_size": IMAGE_SIZES[name], "sides": measured,
            "ratio_ours_to_stock": ratio, "target_ratio": TARGET, "meets_target": ratio <= TARGET,
            "ratio_speedups": speedups, "speedups_target": SPEEDUPS_TARGET,
            "speedups_meet_target": speedups <= SPEEDUPS_TARGET}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    results = {name: measure(name, args.repeats, args.device) for name in args.configs}
    rows = []
    for name, result in results.items():
        for side, m in result["sides"].items():
            rows.append((name, side, f"{m['median_s']:.3f}", f"{m['min_s']:.3f}-{m['max_s']:.3f}",
                         f"{m['peak_memory_mib']:.0f}"))
        rows.append((name, "ours / stock", f"{result['ratio_ours_to_stock']:.2f}",
                     f"target <= {TARGET}", ""))
        rows.append((name, "with / without MODEL.SPEEDUPS", f"{result['ratio_speedups']:.2f}",
                     f"target <= {SPEEDUPS_TARGET}", ""))
    print_table(rows, ("config", "", "median s", "range s", "peak MiB"))
    path = write_results("train_step", {"environment": environment(args.device),
                                        "configs": results}, args.output)
    print(f"written: {path}")


if __name__ == "__main__":
    main()

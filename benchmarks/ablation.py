"""The accuracy study: stock Mask R-CNN and mask_rcnn_ext's variants, trained with one schedule on
the synthetic set, several seeds each; writes benchmarks/results/ablation.{json,md}.

Every variant is the small CPU config (configs/Synthetic/mask_rcnn_R_18_FPN_cpu.yaml) with the
keys below changed; each run is ``train_net.py`` (train, then evaluate on synthetic_val) in its
own folder under ``--output``, and a finished run is reused when the study is run again.
The same axes on COCO with a GPU use the configs in configs/Ablations/ and configs/COCO/, e.g.
``python train_net.py --config-file configs/Ablations/roipool_R_50_FPN_1x.yaml --num-gpus 8``.

Usage: python -m benchmarks.ablation [--iterations 300] [--seeds 0 1] [--variants ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, environment

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.yaml"
POOLERS = ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.ROI_MASK_HEAD.POOLER_TYPE")


def _pooler(name: str) -> list[str]:
    return [item for key in POOLERS for item in (key, name)]


# name: (what it changes, config overrides)
VARIANTS = {
    "stock Detectron2": ("Detectron2's StandardROIHeads and mask head",
                         ["MODEL.ROI_HEADS.NAME", "StandardROIHeads",
                          "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]),
    "RoIAlign avg (ours)": ("the default: ROIAlignV2", []),
    "RoIAlign max": ("max over the bin's samples", _pooler("ROIAlignMax")),
    "RoIPool": ("quantised max pooling", _pooler("ROIPool")),
    "RoIWarp": ("quantised box, bilinear warp", _pooler("ROIWarp")),
    "PreciseROIPool": ("integral of the bilinear surface", _pooler("PreciseROIPool")),
    "softmax mask loss": ("per-pixel multinomial", ["MODEL.ROI_MASK_HEAD.LOSS", "softmax"]),
    "MLP mask head": ("fc layers instead of the FCN", ["MODEL.ROI_MASK_HEAD.ARCH", "mlp"]),
    "mask scoring": ("MaskIoU head rescoring", ["MODEL.ROI_MASK_SCORING.ENABLED", "True"]),
    "mask 56x56": ("one more 2x deconvolution", ["MODEL.ROI_MASK_HEAD.OUTPUT_RESOLUTION", "56"]),
}
METRICS = ("bbox/AP", "segm/AP", "segm/AP50", "segm/AP75")


def _schedule(iterations: int) -> list[str]:
    """The demo config's schedule shape (LR steps at 85% and 95%), over ``iterations``."""
    steps = (round(iterations * 0.85), min(round(iterations * 0.95), iterations - 1))
    return ["SOLVER.MAX_ITER", str(iterations), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(min(50, iterations // 4)),
            "SOLVER.CHECKPOINT_PERIOD", str(iterations)]


def run(variant: str, seed: int, iterations: int, output: Path) -> dict:
    folder = output / variant.replace(" ", "_").replace("/", "_") / f"seed{seed}"
    metrics_file = folder / "metrics.json"
    finished = _final_metrics(metrics_file)
    if finished:
        return finished
    command = [sys.executable, str(ROOT / "train_net.py"), "--config-file", str(CONFIG),
               *VARIANTS[variant][1], *_schedule(iterations), "SEED", str(seed),
               "OUTPUT_DIR", str(folder)]
    print(f"[ablation] {variant}, seed {seed}: {' '.join(command[2:])}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env=dict(os.environ),
                   stdout=subprocess.DEVNULL)
    finished = _final_metrics(metrics_file)
    if not finished:
        raise RuntimeError(f"{variant}, seed {seed}: no evaluation in {metrics_file}")
    return finished


def _final_metrics(path: Path) -> dict | None:
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Detectron2 writes only NaN box metrics when a model detects nothing.
    evaluated = [r for r in records if "bbox/AP" in r]
    return {key: evaluated[-1].get(key, math.nan) for key in METRICS} if evaluated else None


def _table(results: dict, seeds: list[int]) -> list[str]:
    lines = ["| variant | changes | " + " | ".join(METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for variant, runs in results.items():
        cells = []
        for key in METRICS:
            values = np.array([r[key] for r in runs], dtype=float)
            spread = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.1f} ± {spread:.1f}")
        lines.append(f"| {variant} | {VARIANTS[variant][0]} | " + " | ".join(cells) + " |")
    return [*lines, "", f"Mean ± standard deviation over seeds {seeds}."]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output", type=Path, default=ROOT / "output" / "ablation")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = {variant: [run(variant, seed, args.iterations, args.output) for seed in args.seeds]
               for variant in args.variants}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ablation.json").write_text(json.dumps({
        "environment": environment(), "iterations": args.iterations, "seeds": args.seeds,
        "config": str(CONFIG.relative_to(ROOT)), "results": results}, indent=2) + "\n")
    lines = ["# Ablation on the synthetic set", "",
             f"`python -m benchmarks.ablation --iterations {args.iterations} --seeds "
             f"{' '.join(map(str, args.seeds))}`: {CONFIG.relative_to(ROOT)} with "
             f"{args.iterations} iterations of 4 images per run, evaluated on synthetic_val.", "",
             *_table(results, args.seeds), ""]
    (args.results / "ablation.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

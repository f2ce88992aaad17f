"""RoI pooling speed: mask_rcnn_ext's poolers against torchvision's roi_align, in one process.

Both sides pool the same FPN levels (P2-P5 of an 800 x 1216 image, 256 channels) with the same
level assignment: the reference is Detectron2's ROIPooler with "ROIAlignV2", which calls
torchvision.ops.roi_align per level; ours is mask_rcnn_ext.modeling.ROIPooler. Times are medians
of ``--repeats`` runs after one warm-up, the poolers alternating (benchmarks/common.py), with
``--threads`` intra-op threads.

Cases (Mask R-CNN's two poolers):
  box:  2 images x 512 RoIs, 7 x 7 output, sampling_ratio 0, aligned;
  mask: 2 images x 64 RoIs, 14 x 14 output, sampling_ratio 0, aligned.
RoIs have log-uniform sizes (sqrt of area 16-800 px) and aspect ratios (1:2-2:1), anywhere in the
image, clipped to it: the spread of Mask R-CNN's sampled proposals.

Usage: python -m benchmarks.roi_align [--repeats 7] [--threads 2] [--device cpu] [--output PATH]
Prints a table and writes JSON (default benchmarks/results/roi_align.json).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from detectron2.modeling.poolers import ROIPooler as Detectron2ROIPooler
from detectron2.structures import Boxes

from benchmarks.common import compare, environment, print_table, write_results
from mask_rcnn_ext.modeling import ROIPooler

IMAGE_SIZE = (800, 1216)
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
CASES = {"box": (512, 7), "mask": (64, 14)}
# Targets from the issue, as ratios of times measured in the same run.
TARGETS = {
    "ROIAlignV2 forward / torchvision": 1.0,
    "ROIAlignV2 forward+backward / torchvision": 0.5,
    "ROIAlignMax forward+backward / ROIAlignV2": 1.2,
    "PreciseROIPool forward+backward / ROIAlignV2": 2.0,
}


def make_inputs(rois_per_image: int, device: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    height, width = IMAGE_SIZE
    features = [torch.randn(2, 256, height // s, width // s, generator=generator).to(device)
                for s in (4, 8, 16, 32)]
    box_lists = []
    for _ in range(2):
        side = torch.exp(torch.empty(rois_per_image).uniform_(2.77, 6.68, generator=generator))
        aspect = torch.exp(torch.empty(rois_per_image).uniform_(-0.69, 0.69, generator=generator))
        box_w, box_h = side * aspect.sqrt(), side / aspect.sqrt()
        x = torch.rand(rois_per_image, generator=generator) * width
        y = torch.rand(rois_per_image, generator=generator) * height
        boxes = torch.stack((x - box_w / 2, y - box_h / 2, x + box_w / 2, y + box_h / 2), 1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        box_lists.append(Boxes(boxes.to(device)))
    return features, box_lists


def _pooling_steps(pooler, features, box_lists) -> dict[str, Callable[[], object]]:
    leaves = [f.detach().requires_grad_(True) for f in features]

    def forward():
        with torch.no_grad():
            pooler(features, box_lists)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None  # as after optimizer.zero_grad(): no accumulation into old grads
        pooled = pooler(leaves, box_lists)
        pooled.backward(torch.ones_like(pooled))

    return {"forward": forward, "forward+backward": forward_backward}


def run(repeats: int, device: str) -> dict:
    """Per case, pooler and step: the median seconds."""
    results = {}
    for case, (rois_per_image, output) in CASES.items():
        features, box_lists = make_inputs(rois_per_image, device)
        poolers = {"torchvision": Detectron2ROIPooler(output, SCALES, 0, "ROIAlignV2")}
        for pooler_type in ("ROIAlignV2", "ROIAlignMax", "PreciseROIPool"):
            poolers[pooler_type] = ROIPooler(output, SCALES, 0, pooler_type)
        steps = {(name, step): function for name, pooler in poolers.items()
                 for step, function in _pooling_steps(pooler, features, box_lists).items()}
        timings = compare(steps, repeats, device)
        results[case] = {name: {step: timings[(name, step)]["median_s"]
                                for step in ("forward", "forward+backward")}
                         for name in poolers}
    return results


def ratios(times: dict) -> dict[str, float]:
    tv, avg = times["torchvision"], times["ROIAlignV2"]
    return {
        "ROIAlignV2 forward / torchvision": avg["forward"] / tv["forward"],
        "ROIAlignV2 forward+backward / torchvision":
            avg["forward+backward"] / tv["forward+backward"],
        "ROIAlignMax forward+backward / ROIAlignV2":
            times["ROIAlignMax"]["forward+backward"] / avg["forward+backward"],
        "PreciseROIPool forward+backward / ROIAlignV2":
            times["PreciseROIPool"]["forward+backward"] / avg["forward+backward"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="default benchmarks/results/roi_align.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = run(args.repeats, args.device)
    report = {"environment": environment(args.device), "repeats": args.repeats,
              "seconds": results,
              "ratios": {case: ratios(times) for case, times in results.items()},
              "targets": TARGETS}
    print_table([(case, name, f"{1e3 * timing['forward']:.1f}",
                  f"{1e3 * timing['forward+backward']:.1f}")
                 for case, times in results.items() for name, timing in times.items()],
                ("case", "pooler", "forward ms", "forward+backward ms"))
    print()
    print_table([(name, f"<= {target}", *(
        f"{report['ratios'][case][name]:.2f} "
        f"({'ok' if report['ratios'][case][name] <= target else 'MISSED'})" for case in results))
        for name, target in TARGETS.items()], ("ratio", "target", *results))
    print(f"written: {write_results('roi_align', report, args.output)}")


if __name__ == "__main__":
    main()

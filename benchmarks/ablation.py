"""The accuracy study: mask_rcnn_ext's variants of Mask R-CNN, each trained with several seeds
(the same seeds for every variant); writes benchmarks/results/ablation.{json,md,png}
(``--results``).

Three model families, as in the paper's Table 2: FPN (every option of the heads), and one feature
map of stride 16 and of stride 32 (the RoI feature extractors, where misalignment costs most).
On the synthetic set (default) every variant is its family's CPU config (configs/Synthetic/
*_small_cpu.yaml, the 128 x 160 set ``synthetic_small``) with the keys below changed, on the
config's schedule; all start from one ResNet-18 pretrained once on the set's object crops
(``mask_rcnn_ext.pretrain``, its cost reported), as the paper's start from one ImageNet ResNet.
With ``--coco`` it is its R-50 COCO config (configs/COCO, configs/Ablations) on its own 1x
schedule, from ImageNet weights, on ``--num-gpus`` GPUs:

    python -m benchmarks.ablation --coco --num-gpus 8 --output output/coco_ablation \\
        --results benchmarks/results/coco

Each run is ``train_net.py`` in its own folder under ``--output``, evaluated at 80% and at 100% of
its schedule (the change in between tells whether it had converged); a finished run is reused when
the study is run again, so an interrupted study continues where it stopped.

A claim compares two variants of one family run with the same seeds: its figure is the mean over
seeds of the paired difference, with a 95% Student-t interval. It holds when the interval is above
0, is reversed when below, and is unresolved at this budget otherwise (for a claim of equality:
consistent when the interval holds 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from benchmarks.common import RESULTS, environment
from mask_rcnn_ext import load_config

ROOT = Path(__file__).parent.parent
BOTH_POOLERS = ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.ROI_MASK_HEAD.POOLER_TYPE")


@dataclass(frozen=True)
class Family:
    description: str
    synthetic_config: str
    coco_config: str


FAMILIES = {
    "FPN": Family("R-FPN: poolers on four levels",
                  "configs/Synthetic/mask_rcnn_R_18_FPN_small_cpu.yaml",
                  "configs/COCO/mask_rcnn_R_50_FPN_1x.yaml"),
    # On CPU the paper's res5 head is too slow (configs/Synthetic/mask_rcnn_R_18_res4_small_cpu).
    "stride 16": Family("one feature map of stride 16 (res4; COCO: ResNet-C4's res5 head, "
                        "CPU: the FPN heads)",
                        "configs/Synthetic/mask_rcnn_R_18_res4_small_cpu.yaml",
                        "configs/COCO/mask_rcnn_R_50_C4_1x.yaml"),
    "stride 32": Family("one feature map of stride 32 (ResNet-C5: res5, then the FPN heads)",
                        "configs/Synthetic/mask_rcnn_R_18_C5_small_cpu.yaml",
                        "configs/COCO/mask_rcnn_R_50_C5_1x.yaml"),
}


@dataclass(frozen=True)
class Variant:
    family: str
    description: str
    overrides: tuple[str, ...] = ()  # of the family's configs, synthetic and COCO alike


def _poolers(name: str) -> tuple[str, ...]:
    """Both branches' pooler type (the res5 head has one pooler, the box branch's)."""
    return tuple(item for key in BOTH_POOLERS for item in (key, name))


VARIANTS = {
    "RoIAlign avg": Variant("FPN", "the default: ROIAlignV2"),
    "RoIAlign max": Variant("FPN", "max over the bin's samples", _poolers("ROIAlignMax")),
    "RoIPool": Variant("FPN", "quantised max pooling", _poolers("ROIPool")),
    "RoIWarp": Variant("FPN", "quantised box, bilinear warp", _poolers("ROIWarp")),
    "PreciseROIPool": Variant("FPN", "integral of the bilinear surface",
                              _poolers("PreciseROIPool")),
    "softmax mask loss": Variant("FPN", "per-pixel multinomial", ("MODEL.ROI_MASK_HEAD.LOSS",
                                                                  "softmax")),
    "MLP mask head": Variant("FPN", "fc layers instead of the FCN",
                             ("MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNMLPHead")),
    "mask scoring": Variant("FPN", "MaskIoU head rescoring",
                            ("MODEL.ROI_MASK_HEAD.NAME", "MaskScoringHead")),
    "mask 56x56": Variant("FPN", "one more 2x deconvolution",
                          ("MODEL.ROI_MASK_HEAD.OUTPUT_RESOLUTION", "56")),
    "stride-16 RoIAlign avg": Variant("stride 16", "ROIAlignV2", _poolers("ROIAlignV2")),
    "stride-16 RoIAlign max": Variant("stride 16", "ROIAlignMax",
                               _poolers("ROIAlignMax")),
    "stride-16 RoIPool": Variant("stride 16", "ROIPool", _poolers("ROIPool")),
    "stride-16 RoIWarp": Variant("stride 16", "ROIWarp", _poolers("ROIWarp")),
    "stride-32 RoIAlign avg": Variant("stride 32", "ROIAlignV2", _poolers("ROIAlignV2")),
    "stride-32 RoIPool": Variant("stride 32", "ROIPool", _poolers("ROIPool")),
}

# claim: (variant A, relation, variant B), on mask AP: A > B, or A = B. The paper's (Mask R-CNN,
# He et al. 2017, Table 2), then what an option adds (precise pooling: Jiang et al. 2018; mask
# scoring: Huang et al. 2019; 56 x 56 masks: not in the paper).
CLAIMS = {
    "stride 32: RoIAlign > RoIPool (Table 2d)":
        ("stride-32 RoIAlign avg", ">", "stride-32 RoIPool"),
    "stride 16: RoIAlign > RoIPool (Table 2c)":
        ("stride-16 RoIAlign avg", ">", "stride-16 RoIPool"),
    "stride 16: RoIAlign > RoIWarp (Table 2c)":
        ("stride-16 RoIAlign avg", ">", "stride-16 RoIWarp"),
    "stride 16: RoIAlign max = avg (Table 2c)":
        ("stride-16 RoIAlign max", "=", "stride-16 RoIAlign avg"),
    "FPN: RoIAlign > RoIPool": ("RoIAlign avg", ">", "RoIPool"),
    "FPN: RoIAlign > RoIWarp": ("RoIAlign avg", ">", "RoIWarp"),
    "FPN: RoIAlign max = avg": ("RoIAlign max", "=", "RoIAlign avg"),
    "FPN: sigmoid > softmax (Table 2b)": ("RoIAlign avg", ">", "softmax mask loss"),
    "FPN: FCN > MLP (Table 2e)": ("RoIAlign avg", ">", "MLP mask head"),
    "FPN: PreciseROIPool > RoIAlign": ("PreciseROIPool", ">", "RoIAlign avg"),
    "FPN: mask scoring on > off": ("mask scoring", ">", "RoIAlign avg"),
    "FPN: 56x56 > 28x28 masks": ("mask 56x56", ">", "RoIAlign avg"),
}
METRICS = ("segm/AP", "segm/AP75", "boundary/AP", "bbox/AP")
CONVERGED = 1.0  # mask AP points: the most the last 20% of a schedule may change a mean


def _schedule(iterations: int, config: str) -> list[str]:
    """``--iterations`` in place of ``config``'s schedule, its LR steps and warm-up scaled (the
    synthetic configs run their last 20% at a low rate); evaluations at 80% and at the end."""
    own = load_config(config).SOLVER
    scale = iterations / own.MAX_ITER
    steps = tuple(min(round(step * scale), iterations - 1) for step in own.STEPS)
    return ["SOLVER.MAX_ITER", str(iterations), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(round(own.WARMUP_ITERS * min(1.0, scale))),
            "SOLVER.CHECKPOINT_PERIOD", str(iterations),
            "TEST.EVAL_PERIOD", str(int(iterations * 0.8))]


def _settings(variant: str, seed: int, args, folder: Path) -> tuple[str, list[str]]:
    """The run's config file and its overrides."""
    family = FAMILIES[VARIANTS[variant].family]
    config = family.coco_config if args.coco else family.synthetic_config
    overrides = list(VARIANTS[variant].overrides)
    if args.iterations:
        overrides += _schedule(args.iterations, str(ROOT / config))
    else:  # the config's own schedule, also evaluated at 80%
        iterations = load_config(str(ROOT / config)).SOLVER.MAX_ITER
        overrides += ["TEST.EVAL_PERIOD", str(int(iterations * 0.8))]
    if not args.coco:
        overrides += ["MODEL.WEIGHTS", str(_pretrained_path(args))]
    return str(ROOT / config), [*overrides, "SEED", str(seed), "OUTPUT_DIR", str(folder)]


def _pretrained_path(args) -> Path:
    return args.output / "pretrained" / "R_18_synthetic_small.pth"


def pretrained_backbone(args) -> dict:
    """The synthetic study's one pretrained ResNet (``mask_rcnn_ext.pretrain`` on the FPN
    family's config, whose ResNet every family shares): trained once, then reused with its
    measurements (iterations, seconds, held-out accuracy)."""
    from mask_rcnn_ext.pretrain import pretrain

    weights = _pretrained_path(args)
    record = weights.with_suffix(".json")
    if weights.is_file() and record.is_file():
        return json.loads(record.read_text())
    cfg = load_config(str(ROOT / FAMILIES["FPN"].synthetic_config))
    print(f"[ablation] pretraining the ResNet: {cfg.PRETRAIN.ITERATIONS} iterations -> "
          f"{weights}", flush=True)
    measured = pretrain(cfg, cfg.PRETRAIN.ITERATIONS, str(weights))
    record.write_text(json.dumps(measured, indent=2) + "\n")
    return measured


def run(variant: str, seed: int, args) -> dict:
    """The run's evaluations (:func:`_evaluations`) and wall time, training it if needed."""
    folder = args.output / variant.replace(" ", "_").replace("/", "_") / f"seed{seed}"
    config, overrides = _settings(variant, seed, args, folder)
    record = folder / "study_run.json"
    if record.is_file():
        _check_reused(folder, config, overrides)
        return json.loads(record.read_text())
    command = [sys.executable, str(ROOT / "train_net.py"), "--config-file", config,
               "--num-gpus", str(args.num_gpus), *overrides]
    print(f"[ablation] {variant}, seed {seed}: {' '.join(command[2:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env=dict(os.environ),
                   stdout=subprocess.DEVNULL)
    evaluations = _evaluations(folder / "metrics.json")
    if len(evaluations) < 2:
        raise RuntimeError(f"{variant}, seed {seed}: {folder / 'metrics.json'} holds "
                           f"{len(evaluations)} evaluation(s), not the two of its schedule")
    result = {"at_80_percent": evaluations[-2], "final": evaluations[-1],
              "seconds": time.perf_counter() - start}
    record.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _check_reused(folder: Path, config: str, overrides: list[str]) -> None:
    """A finished run is reused only if it had this run's settings (the config it saved)."""
    saved = load_config(str(folder / "config.yaml"))
    wanted = load_config(config, overrides)
    if yaml.safe_load(saved.dump()) != yaml.safe_load(wanted.dump()):
        raise RuntimeError(f"{folder} holds a run with other settings than {config} "
                           f"{' '.join(overrides)}; use another --output")


def _evaluations(path: Path) -> list[dict]:
    """Each evaluation in a run's metrics.json, in order: {METRICS..., "iteration"}. A model that
    detects nothing gets NaN (Detectron2 then writes NaN box metrics and no others)."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"iteration": r["iteration"], **{key: r.get(key, math.nan) for key in METRICS}}
            for r in records if "bbox/AP" in r]


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean over seeds of a - b, and its 95% Student-t interval: (mean, low, high). One pair
    gives an unbounded interval."""
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(differences.mean())
    if len(differences) < 2:
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(0.975, len(differences) - 1)
                 * differences.std(ddof=1) / math.sqrt(len(differences)))
    return mean, mean - half, mean + half


def verdict(relation: str, low: float, high: float) -> str:
    """A > B: "holds" (interval above 0), "reversed" (below) or "unresolved"; A = B: "consistent"
    (interval holds 0) or "differs"."""
    if math.isnan(low) or math.isnan(high):
        return "no detections to compare"
    if relation == "=":
        return "consistent" if low <= 0 <= high else "differs"
    return "holds" if low > 0 else "reversed" if high < 0 else "unresolved"


def _mean_and_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% Student-t interval (0 for one value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1)
                                       * values.std(ddof=1) / math.sqrt(len(values)))


def summarise(results: dict[str, list[dict]]) -> dict:
    """Per variant: each metric's mean and 95% half-interval over seeds, the mean change of mask
    AP over the last 20% of the schedule, and the mean wall time; per claim: the paired
    differences of each metric and the verdict on mask AP."""
    variants = {}
    for name, runs in results.items():
        change = float(np.mean([r["final"]["segm/AP"] - r["at_80_percent"]["segm/AP"]
                                for r in runs]))
        variants[name] = {
            **{key: _mean_and_interval([r["final"][key] for r in runs]) for key in METRICS},
            "last_20_percent_change": change, "converged": abs(change) < CONVERGED,
            "minutes": float(np.mean([r["seconds"] for r in runs])) / 60}
    claims = {}
    for claim, (a, relation, b) in CLAIMS.items():
        if a not in results or b not in results:
            continue
        differences = {key: paired_difference([r["final"][key] for r in results[a]],
                                              [r["final"][key] for r in results[b]])
                       for key in METRICS}
        claims[claim] = {"differences": differences,
                         "verdict": verdict(relation, *differences["segm/AP"][1:])}
    return {"variants": variants, "claims": claims}


def _interval(mean: float, low: float, high: float) -> str:
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


def report(summary: dict, header: list[str]) -> list[str]:
    """The Markdown report: the variants' table, then the claims'."""
    lines = [*header, "| variant | family | changes | " + " | ".join(METRICS)
             + " | last 20% (mask AP) | minutes |", "|---" * (len(METRICS) + 5) + "|"]
    for name, row in summary["variants"].items():
        variant = VARIANTS[name]
        cells = [f"{mean:.1f} ± {half:.1f}" for mean, half in (row[k] for k in METRICS)]
        lines.append(f"| {name} | {variant.family} | {variant.description} | "
                     + " | ".join(cells) + f" | {row['last_20_percent_change']:+.1f}"
                     f"{'' if row['converged'] else ' (not converged)'} | "
                     f"{row['minutes']:.1f} |")
    lines += ["", "Claims: mean paired difference (A - B) over seeds, [95% interval]; the verdict "
              "is on mask AP.", "",
              "| claim | mask AP | mask AP75 | boundary AP | box AP | verdict |",
              "|---|---|---|---|---|---|"]
    for claim, row in summary["claims"].items():
        cells = [_interval(*row["differences"][key]) for key in METRICS]
        lines.append(f"| {claim} | " + " | ".join(cells) + f" | {row['verdict']} |")
    return lines


def plot(summary: dict, path: Path) -> None:
    """Mask AP and boundary AP per variant, with 95% intervals over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    positions = np.arange(len(names))
    figure, axes = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4.5))
    for offset, key, label in ((-0.15, "segm/AP", "mask AP"), (0.15, "boundary/AP",
                                                                "boundary AP")):
        means = [summary["variants"][n][key][0] for n in names]
        halves = [summary["variants"][n][key][1] for n in names]
        axes.errorbar(positions + offset, means, yerr=halves, fmt="o", capsize=3, label=label)
    axes.set_xticks(positions, names, rotation=40, ha="right")
    axes.set_ylabel("AP (mean, 95% interval over seeds)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, help="per run (default: the configs' own)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--coco", action="store_true", help="the COCO configs instead")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per run")
    parser.add_argument("--output", type=Path, default=ROOT / "output" / "ablation")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    pretraining = None if args.coco else pretrained_backbone(args)
    results = {variant: [run(variant, seed, args) for seed in args.seeds]
               for variant in args.variants}
    summary = summarise(results)
    data = "COCO (R-50 configs)" if args.coco else "the synthetic set synthetic_small"
    schedule = f"{args.iterations} iterations" if args.iterations else "each config's schedule"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ablation.json").write_text(json.dumps({
        "environment": environment(), "data": data, "schedule": schedule, "seeds": args.seeds,
        "pretraining": pretraining, "results": results, "summary": summary}, indent=2) + "\n")
    command = shlex.join(["python", "-m", "benchmarks.ablation",
                          *(sys.argv[1:] if argv is None else argv)])
    hours = sum(r["seconds"] for runs in results.values() for r in runs) / 3600
    start = ("From ImageNet weights." if pretraining is None else
             f"All runs start from one ResNet-18 pretrained on the set's object crops "
             f"(`mask_rcnn_ext.pretrain`): {pretraining['iterations']} iterations in "
             f"{pretraining['seconds'] / 60:.1f} min, held-out accuracy "
             f"{pretraining['held_out_accuracy']:.3f}.")
    lines = report(summary, [
        f"# Ablation on {data}", "",
        f"`{command}`: {schedule} per run, seeds {args.seeds} ({hours:.1f} h of runs). {start} "
        "Each metric: mean ± 95% interval over seeds; 'last 20%': the mean change of mask AP over "
        f"the last 20% of the schedule (converged: under {CONVERGED:g} point).", "",
        "![mask and boundary AP per variant](ablation.png)", ""])
    lines += ["", "On COCO with GPUs: `python -m benchmarks.ablation --coco --num-gpus 8 "
              "--output output/coco_ablation --results benchmarks/results/coco`.", ""]
    (args.results / "ablation.md").write_text("\n".join(lines))
    plot(summary, args.results / "ablation.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

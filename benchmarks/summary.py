"""Write benchmarks/results/summary.md from the benchmark scripts' JSON results (those present).

Usage: python -m benchmarks.summary
"""

from __future__ import annotations

import json

from benchmarks.common import RESULTS


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f} ({'meets' if ratio <= target else 'misses'} <= {target})"


def _side_rows(sides: dict) -> list[str]:
    return [f"| {side} | {m['median_s']:.3f} | {m['min_s']:.3f}-{m['max_s']:.3f} | "
            + (f"{m['peak_memory_mib']:.0f} |" if "peak_memory_mib" in m else "- |")
            for side, m in sides.items()]


def _header() -> list[str]:
    return ["| | median s | range s | peak memory MiB |", "|---|---|---|---|"]


def main() -> None:
    lines = ["# Benchmark results", "",
             "Written by `python -m benchmarks.summary` from `benchmarks/results/*.json` (`make "
             "bench`). Ratios are ours / stock Detectron2, measured in the same run; times are "
             "medians. Peak memory: the highest RSS above its level before the run, of one run "
             "in a fresh process per side (on CUDA: peak allocated memory).", ""]
    train = _load("train_step")
    if train:
        env = train["environment"]
        lines += ["## Training step", "",
                  f"{env['date']}, {env['device']}, {env['torch_threads']} threads, torch "
                  f"{env['torch']}.", ""]
        for name, result in train["configs"].items():
            speedups = (f"; with / without MODEL.SPEEDUPS "
                        f"{_verdict(result['ratio_speedups'], result['speedups_target'])}"
                        if "ratio_speedups" in result else "")
            lines += [f"**{name}**, {result['images']} images of {result['image_size'][0]} x "
                      f"{result['image_size'][1]}: ours / stock "
                      f"{_verdict(result['ratio_ours_to_stock'], result['target_ratio'])}"
                      f"{speedups}", "", *_header(), *_side_rows(result["sides"]), ""]
    inference = _load("inference")
    if inference:
        agreement = inference["output_agreement"]
        lines += ["## Inference (DefaultPredictor vs mask_rcnn_ext Predictor)", "",
                  f"{inference['config']}, one {inference['image_size'][0]} x "
                  f"{inference['image_size'][1]} image, {agreement['instances'][1]} instances: "
                  f"ours / stock {_verdict(inference['ratio_ours_to_stock'], 0.9)}. Outputs: "
                  f"largest box difference {agreement['max_box_difference_px']:.2e} px, score "
                  f"{agreement['max_score_difference']:.2e}, differing mask pixels "
                  f"{agreement['differing_mask_pixel_fraction']:.2e}.", "",
                  *_header(), *_side_rows(inference["sides"]), ""]
        batched = inference.get("batched_prediction")
        if batched:
            lines += [f"Batched prediction, {batched['images']} such images: BatchPredictor / "
                      f"Predictor in a loop {batched['ratio_batched_to_loop']:.2f} (largest box "
                      f"difference {batched['max_box_difference_px']:.2e} px).", "",
                      *_header(), *_side_rows(batched["sides"]), ""]
    evaluation = _load("coco_eval")
    if evaluation:
        lines += ["## COCO evaluation (bbox + segm)", "",
                  f"{evaluation['images']} images x {evaluation['detections_per_image']} "
                  f"detections of {evaluation['image_size'][0]} x {evaluation['image_size'][1]}: "
                  "FastCOCOEvaluator / COCOEvaluator "
                  f"{_verdict(evaluation['ratio_fast_to_stock'], evaluation['target_ratio'])}; "
                  f"largest AP difference {evaluation['largest_ap_difference']:.1e}.", "",
                  *_header(), *_side_rows(evaluation["evaluators"]), "",
                  "COCO API backends alone (loadRes + evaluate + accumulate, bbox and segm):", "",
                  *_header(), *_side_rows(evaluation["backends"]), ""]
    pooling = _load("roi_align")
    if pooling:
        env = pooling["environment"]
        lines += ["## RoI pooling (vs torchvision roi_align)", "",
                  f"{env['date']}, {env['device']}, {env['torch_threads']} threads, OpenMP wait "
                  f"policy {env.get('omp_wait_policy', 'not recorded')}.", ""]
        for case, ratios in pooling["ratios"].items():
            lines += [f"- {case}: " + "; ".join(f"{name} {value:.2f}"
                                                 for name, value in ratios.items())]
        lines.append("")
    path = RESULTS / "summary.md"
    path.write_text("\n".join(lines))
    print(f"written: {path}")


if __name__ == "__main__":
    main()

"""Peak memory of exporting a model against that of its eager inference.

While traced, RoIAlignMax, precise RoI pooling and RoIWarp run their traced formulation
(``mask_rcnn_ext.layers.traceable``), which holds the windows of one group of RoIs at a time;
average RoIAlign and RoIPool run torchvision's ops either way. So the models are those whose box
pooler is one of ours: R50-C4 with ROIAlignMax (1024-channel res4 maps, where padding every RoI's
window to the longest would need about 18 GB) and R50-FPN with PreciseROIPool (box and mask
poolers). One 800 x 1216 image, 1000 proposals (POST_NMS_TOPK_TEST), calibrated random weights
(benchmarks/models.py), CPU.

Each side runs in a fresh process; its figure is that process's peak resident set size
(``VmHWM``, model included; not ``ru_maxrss``, which Linux carries over from the parent process
through ``execve``):

- eager: build the model, load the weights, run what is exported once
  (``model.inference(..., do_postprocess=False)``);
- export: ``python -m mask_rcnn_ext.export --format torchscript`` with the same weights and image
  (it builds the model, traces it, saves and loads the export, and runs both to compare them);
- exported: what a deployment runs, the saved model loaded by ``torch.jit.load`` and run once.

Target: export <= 1.5 x eager.

Usage: python -m benchmarks.export_memory [--models R50-C4 R50-FPN]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import torch

from benchmarks.common import environment, print_table, write_results
from benchmarks.models import ROOT, calibrated_model, synthetic_images
from mask_rcnn_ext import load_config

MODELS = {
    "R50-C4": ROOT / "configs" / "Ablations" / "roialign_max_R_50_C4_1x.yaml",
    "R50-FPN": ROOT / "configs" / "COCO" / "precise_pool_R_50_FPN_1x.yaml",
}
IMAGE_SIZE = (800, 1216)
PROPOSALS = 1000
TARGET = 1.5  # export / eager

_EAGER = """
import json, sys
import torch
from detectron2.modeling import build_model
from mask_rcnn_ext import load_config
from mask_rcnn_ext.checkpoint import SafeCheckpointer
from mask_rcnn_ext.export import sample_image

config, weights, image_path, proposals = sys.argv[1:]
cfg = load_config(config, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
                           "MODEL.RPN.POST_NMS_TOPK_TEST", proposals])
model = build_model(cfg).eval()
SafeCheckpointer(model).load(weights)
image = sample_image(cfg, image_path)
pooled = []
model.roi_heads.register_forward_pre_hook(lambda head, args: pooled.append(len(args[2][0])))
with torch.no_grad():
    model.inference([{"image": image}], do_postprocess=False)
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mib": int(peak.split()[1]) / 1024, "proposals": pooled[0],
                  "image": list(image.shape[1:])}))
"""

_EXPORT = """
import json, runpy, sys

config, weights, image_path, proposals, output = sys.argv[1:]
sys.argv = ["mask_rcnn_ext.export", "--config-file", config, "--format", "torchscript",
            "--output", output, "--sample-image", image_path, "MODEL.WEIGHTS", weights,
            "MODEL.RPN.POST_NMS_TOPK_TEST", proposals]
runpy.run_module("mask_rcnn_ext.export", run_name="__main__")
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mib": int(peak.split()[1]) / 1024}))
"""


_EXPORTED = """
import json, sys
import torch
from mask_rcnn_ext import load_config
from mask_rcnn_ext.export import sample_image

config, image_path, model_path = sys.argv[1:]
image = sample_image(load_config(config, ["MODEL.DEVICE", "cpu"]), image_path)
model = torch.jit.load(model_path)
with torch.no_grad():
    model(image)
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mib": int(peak.split()[1]) / 1024}))
"""


def _run(script: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                            text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark process failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(name: str, folder: Path) -> dict:
    """Peak RSS (MiB) of eager inference and of the export of model ``name``."""
    config = str(MODELS[name])
    (image, _), = synthetic_images(1, IMAGE_SIZE)
    image_path, weights = folder / "image.png", folder / "weights.pth"
    cv2.imwrite(str(image_path), image)
    cfg = load_config(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.save({"model": calibrated_model(cfg, image).state_dict()}, weights)
    args = (config, str(weights), str(image_path), str(PROPOSALS))
    eager = _run(_EAGER, *args)
    export = _run(_EXPORT, *args, str(folder / "export"))
    exported = _run(_EXPORTED, config, str(image_path), str(folder / "export" / "model.ts"))
    return {"config": str(MODELS[name].relative_to(ROOT)), "image": eager["image"],
            "proposals": eager["proposals"], "eager_peak_mib": eager["peak_mib"],
            "export_peak_mib": export["peak_mib"], "exported_run_peak_mib": exported["peak_mib"],
            "export_over_eager": export["peak_mib"] / eager["peak_mib"],
            "exported_run_over_eager": exported["peak_mib"] / eager["peak_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    results = {}
    for name in args.models:
        with tempfile.TemporaryDirectory() as folder:
            results[name] = measure(name, Path(folder))
        print(name, json.dumps(results[name]), flush=True)
    print_table([(name, r["proposals"], f"{r['eager_peak_mib']:.0f}",
                  f"{r['export_peak_mib']:.0f}", f"{r['export_over_eager']:.2f}",
                  f"{r['exported_run_peak_mib']:.0f}", f"{r['exported_run_over_eager']:.2f}")
                 for name, r in results.items()],
                ("model", "proposals", "eager MiB", "export MiB", "export / eager",
                 "exported run MiB", "exported run / eager"))
    print(f"target: export / eager <= {TARGET}")
    write_results("export_memory", {"environment": environment(), "target": TARGET,
                                    "results": results})


if __name__ == "__main__":
    main()

"""The user workflow end to end: train_net.py (train, resume, --eval-only) and demo.py, on a small
synthetic set; and the demo's mask AP (slow)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from mask_rcnn_ext.drawing import SHORT_SIDE

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.yaml"
DEMO_CONFIG = ROOT / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_small_cpu.yaml"
# The segm AP that `make demo` reaches is stated in the README (32.9 with its seed; the study's
# seeds gave 32.7 to 35.4); the slow test checks it with a margin for other machines' arithmetic.
DEMO_MASK_AP_FLOOR = 30.0


def _run(args, datasets, timeout=900, succeeds=True):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert (result.returncode == 0) == succeeds, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _copypaste_ap(log: str, task: str) -> float:
    match = re.search(rf"copypaste: Task: {task}\n.*copypaste: AP,.*\n.*copypaste: ([0-9.]+),", log)
    assert match, log[-2000:]
    return float(match.group(1))


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory):
    datasets = tmp_path_factory.mktemp("datasets")
    _run(["datasets/prepare_synthetic.py", "--root", str(datasets / "synthetic"), "--train", "8",
          "--val", "4"], datasets)
    return datasets


def test_train_resume_evaluate_and_draw(small_synthetic, tmp_path):
    output = tmp_path / "output"
    # Every detection is kept, so that a barely trained model still gives masks to evaluate.
    small = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH",
             "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "OUTPUT_DIR", str(output)]
    log = _run(["train_net.py", "--config-file", str(CONFIG), "SOLVER.MAX_ITER", "4",
                "SOLVER.CHECKPOINT_PERIOD", "2", *small], small_synthetic)
    assert (output / "model_final.pth").is_file() and (output / "last_checkpoint").is_file()
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    assert any("loss_mask" in m for m in metrics)
    assert list(output.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert "eta:" in log
    _copypaste_ap(log, "segm")  # the evaluation ran and printed its table

    log = _run(["train_net.py", "--config-file", str(CONFIG), "--resume", "SOLVER.MAX_ITER", "6",
                *small], small_synthetic)
    assert "Starting training from iteration 4" in log  # continued after the 4 done

    log = _run(["train_net.py", "--config-file", str(CONFIG), "--eval-only", "MODEL.WEIGHTS",
                str(output / "model_final.pth"), *small], small_synthetic)
    assert _copypaste_ap(log, "bbox") >= 0 and _copypaste_ap(log, "segm") >= 0

    images = sorted((small_synthetic / "synthetic" / "val").glob("*.png"))[:2]
    alone = _run(["demo.py", "--config-file", str(CONFIG), "--input", *map(str, images), "--output",
          str(tmp_path / "vis"), "--confidence-threshold", "0.0", "MODEL.WEIGHTS",
          str(output / "model_final.pth"), "INPUT.MIN_SIZE_TEST", "128"], small_synthetic)
    assert sorted(p.name for p in (tmp_path / "vis").glob("*.png")) == [p.name for p in images]

    # Ground truth | predictions, for the first images of a registered set.
    paired = _run(["demo.py", "--config-file", str(CONFIG), "--dataset", "synthetic_val",
                   "--num-images", "2", "--show-gt", "--output", str(tmp_path / "gt"),
                   "--confidence-threshold", "0.0", "MODEL.WEIGHTS",
                   str(output / "model_final.pth"), "INPUT.MIN_SIZE_TEST", "128"],
                  small_synthetic)
    annotations = json.loads((small_synthetic / "synthetic" / "annotations" /
                              "instances_val.json").read_text())
    for image in images:
        raw = np.asarray(Image.open(image).convert("RGB"))
        height, width = raw.shape[:2]
        # Drawn enlarged (nearest pixels) to a short side of at least SHORT_SIDE.
        factor = -(-SHORT_SIDE // min(height, width))
        pair = np.asarray(Image.open(tmp_path / "gt" / image.name))
        assert pair.shape == (factor * height, 2 * factor * width + 8, 3)
        truth, predictions = pair[:, :factor * width], pair[:, factor * width + 8:]
        # The right picture has the predictions that demo.py draws for the image alone (their
        # colours are random).
        predicted = re.search(rf"{image}: (\d+) instances", alone).group(1)
        assert re.search(rf"{image}: {predicted} instances, \d+ in the ground truth", paired)
        raw = raw.repeat(factor, axis=0).repeat(factor, axis=1)
        assert int(predicted) > 0 and not np.array_equal(predictions, raw)
        # The left one is the image with each ground-truth object drawn on it (Visualizer leaves
        # pixels far from any annotation as they are, and tints every mask pixel).
        image_id = next(i["id"] for i in annotations["images"] if i["file_name"] == image.name)
        objects = [a for a in annotations["annotations"] if a["image_id"] == image_id]
        masks = np.zeros((height, width), bool)
        near = np.zeros((height, width), bool)
        for annotation in objects:
            rle = mask_util.merge(mask_util.frPyObjects(annotation["segmentation"], height, width))
            masks |= mask_util.decode(rle).astype(bool)
            x, y, w, h = (int(v) for v in annotation["bbox"])
            near[max(y - 20, 0):y + h + 20, max(x - 20, 0):x + w + 20] = True
        masks, near = (m.repeat(factor, axis=0).repeat(factor, axis=1) for m in (masks, near))
        assert objects and (truth[masks] != raw[masks]).any(axis=-1).all()
        assert np.array_equal(truth[~near], raw[~near])


def test_own_coco_format_data_from_the_command_line(small_synthetic, tmp_path):
    """As a new user would: their own folder layout, registered with --dataset."""
    import shutil

    mine = tmp_path / "my_data"
    shutil.copytree(small_synthetic / "synthetic" / "train", mine / "pictures")
    shutil.copy(small_synthetic / "synthetic" / "annotations" / "instances_train.json",
                mine / "labels.json")
    output = tmp_path / "output"
    log = _run(["train_net.py", "--config-file", str(CONFIG),
                "--dataset", "my_set", str(mine / "labels.json"), str(mine / "pictures"),
                "DATASETS.TRAIN", "('my_set',)", "DATASETS.TEST", "('my_set',)",
                "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
                "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128",
                "DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                "OUTPUT_DIR", str(output)], small_synthetic)
    assert "Loaded 8 images in COCO format" in log
    assert _copypaste_ap(log, "segm") >= 0


@pytest.mark.slow  # ~20 s; launch over gloo is in test_compat_fixes
def test_two_cpu_processes_train_and_evaluate(small_synthetic, tmp_path):
    """Distributed data-parallel training on a CPU-only machine: 2 processes over gloo."""
    output = tmp_path / "output"
    command = ["train_net.py", "--config-file", str(CONFIG), "--num-gpus", "2",
               "--dist-url", "auto", "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
               "SOLVER.WARMUP_ITERS", "1", "INPUT.MIN_SIZE_TRAIN", "(128,)",
               "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
               "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "OUTPUT_DIR", str(output)]
    log = _run(command, small_synthetic)
    assert "World size: 2" in log and (output / "log.txt.rank1").is_file()
    assert (output / "model_final.pth").is_file()
    assert _copypaste_ap(log, "segm") >= 0  # evaluated, over both processes' predictions
    # The same again into that folder: refused by the main process, before any writes.
    files = {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()}
    refused = _run(command, small_synthetic, succeeds=False)
    assert f"ExistingRunError: OUTPUT_DIR {output} holds another run's files" in refused
    assert {path.name: path.read_bytes() for path in output.iterdir()
            if path.is_file() and path.name != ".run.lock"} == {
        name: data for name, data in files.items() if name != ".run.lock"}


_LAUNCHED = """
import os, sys, time
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm
from mask_rcnn_ext.engine import launch

def main(folder):
    with open(os.path.join(folder, f"worker{comm.get_rank()}.tmp"), "w") as stream:
        stream.write(str(os.getpid()))
    os.rename(os.path.join(folder, f"worker{comm.get_rank()}.tmp"),
              os.path.join(folder, f"worker{comm.get_rank()}"))
    time.sleep(300)  # stands for a long training

if __name__ == "__main__":
    (launch if sys.argv[2] == "ours" else detectron2_launch)(main, 2, dist_url="auto",
                                                             args=(sys.argv[1],))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _workers_after_killing_their_launcher(tmp_path, which: str) -> list[int]:
    """Start 2 workers as a background job does (SIGINT ignored), kill -9 their launcher, and
    return the workers still running 8 s later."""
    import signal
    import time

    folder = tmp_path / which
    folder.mkdir()
    script = tmp_path / "launched.py"
    script.write_text(_LAUNCHED)
    launcher = subprocess.Popen(
        [sys.executable, str(script), str(folder), which], cwd=ROOT,
        env=dict(os.environ, PYTHONWARNINGS="ignore"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while not all((folder / f"worker{rank}").exists() for rank in (0, 1)):
        assert time.monotonic() < deadline and launcher.poll() is None, "workers did not start"
        time.sleep(0.2)
    workers = [int((folder / f"worker{rank}").read_text()) for rank in (0, 1)]
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 8
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in workers if _alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


@pytest.mark.slow  # two launches of two workers each, ~25 s
def test_workers_stop_when_their_launcher_is_killed(tmp_path):
    assert _workers_after_killing_their_launcher(tmp_path, "ours") == []
    # Detectron2's own launch, started the same way: its workers run on.
    assert len(_workers_after_killing_their_launcher(tmp_path, "detectron2")) == 2


@pytest.mark.slow
def test_demo_reaches_its_documented_mask_ap(tmp_path):
    """`make demo`'s steps: the 128 x 160 set, the ResNet pretrained on its crops, the detector."""
    datasets = tmp_path / "datasets"
    _run(["datasets/prepare_synthetic.py", "--set", "synthetic_small"], datasets)
    pretrained = tmp_path / "pretrained.pth"
    _run(["-m", "mask_rcnn_ext.pretrain", "--config-file", str(DEMO_CONFIG), "--output",
          str(pretrained)], datasets, timeout=3600)
    log = _run(["train_net.py", "--config-file", str(DEMO_CONFIG), "MODEL.WEIGHTS", str(pretrained),
                "OUTPUT_DIR", str(tmp_path / "out")], datasets, timeout=3600)
    assert _copypaste_ap(log, "segm") >= DEMO_MASK_AP_FLOOR

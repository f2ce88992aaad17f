"""A run's output folder keeps what is in it: a second run there is refused while the first
holds it, a new training never replaces another run's checkpoints, and --resume refuses a config
whose training state does not fit the run's checkpoint (before loading anything), logs other
changes and keeps the run's config.yaml."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import default_argument_parser

from helpers import ROOT, root_script, small_mask_rcnn_cfg
from mask_rcnn_ext.data import synthetic
from mask_rcnn_ext.run import ExistingRunError, IncompatibleResumeError, OutputDirInUseError

LAZY_CONFIG = ROOT / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.py"


@pytest.fixture(scope="module")
def train_net():
    return root_script("train_net")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, train_net):
    """A config file and the folder of its finished 2-iteration training (checkpoints at both
    iterations), on a registered 4-image synthetic set."""
    folder = tmp_path_factory.mktemp("run")
    json_path = synthetic.write_split(folder / "data", "train", 4, seed=0)
    name = f"runs_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_path), str(folder / "data" / "train"))
    cfg = small_mask_rcnn_cfg(name, folder / "output", depth=18)
    config = folder / "config.yaml"
    config.write_text(cfg.dump())
    train_net.main(_arguments(config))
    yield config, folder / "output"
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _arguments(config, *options):
    return default_argument_parser().parse_args(["--config-file", str(config), *options])


def _digests(folder: Path) -> dict[str, str]:
    """Each file's SHA-256, but the lock's (which names the process that holds it)."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir()) if path.is_file() and path.name != ".run.lock"}


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "output"
    shutil.copytree(run, copy)
    return copy


def test_a_new_training_never_replaces_another_runs_files(finished_run, train_net, tmp_path):
    config, run = finished_run
    output = _copy(run, tmp_path)
    before = _digests(output)
    assert {"config.yaml", "last_checkpoint", "metrics.json", "model_0000000.pth",
            "model_final.pth", "log.txt"} <= before.keys()
    with pytest.raises(ExistingRunError,
                       match=f"OUTPUT_DIR {output} holds another run's files \\(last_checkpoint, "
                             "metrics.json, model_0000000.pth, model_0000001.pth, ... \\(1 "
                             "more\\)\\): a new "
                             "training there would overwrite .* add --resume"):
        train_net.main(_arguments(config, "OUTPUT_DIR", str(output)))
    assert _digests(output) == before  # not even log.txt or config.yaml was touched

    # A run killed before its first checkpoint leaves metrics: refused too.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "metrics.json").write_text('{"iteration": 19, "total_loss": 3.1}\n')
    with pytest.raises(ExistingRunError, match=r"holds another run's files \(metrics.json\)"):
        train_net.main(_arguments(config, "OUTPUT_DIR", str(partial)))


_HOLD_THE_FOLDER = """
import sys, time
from pathlib import Path
from mask_rcnn_ext.run import _lock
_lock(Path(sys.argv[1]), "OUTPUT_DIR")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_folder_in_use_is_refused_at_once_and_freed_when_its_process_dies(finished_run,
                                                                              train_net,
                                                                              tmp_path):
    config, _ = finished_run
    output = tmp_path / "output"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_THE_FOLDER, str(output)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for arguments, key in (
                (_arguments(config, "OUTPUT_DIR", str(output)), "OUTPUT_DIR"),
                (_arguments(config, "--eval-only", "OUTPUT_DIR", str(output)), "OUTPUT_DIR"),
                (_arguments(LAZY_CONFIG, f"train.output_dir={output}"), "train.output_dir")):
            with pytest.raises(OutputDirInUseError,
                               match=f"{key} {output} is in use by process {holder.pid} on "):
                train_net.main(arguments)
        assert sorted(os.listdir(output)) == [".run.lock"]  # the refused runs wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    from mask_rcnn_ext.run import _lock
    _lock(output, "OUTPUT_DIR")  # the kernel released the dead process's lock


def test_resume_refuses_a_config_that_does_not_fit_the_checkpoint(finished_run, train_net,
                                                                  tmp_path):
    config, run = finished_run
    output = _copy(run, tmp_path)
    before = _digests(output)
    refused = {
        ("MODEL.ROI_HEADS.NUM_CLASSES", "5"):
            r"6 weight\(s\) of another shape \(roi_heads.box_predictor.bbox_pred.bias: \(16,\) in "
            r"the checkpoint, \(20,\) in this config's model.*"
            r"MODEL.ROI_HEADS.NUM_CLASSES: 4 -> 5",
        ("MODEL.ROI_MASK_HEAD.NUM_CONV", "2"):
            r"4 weight\(s\) in the checkpoint that are not in this config's model "
            r"\(roi_heads.mask_head.mask_fcn3.bias, .*MODEL.ROI_MASK_HEAD.NUM_CONV: 4 -> 2",
        ("SOLVER.BIAS_LR_FACTOR", "2.0"):
            r"the optimizer's parameter groups: 2 of \[54, 56\] parameters in the checkpoint, 4 "
            r"of \[41, 28, 28, 13\] in this config's model.*SOLVER.BIAS_LR_FACTOR: 1.0 -> 2.0",
    }
    for (key, value), message in refused.items():
        with pytest.raises(IncompatibleResumeError,
                           match=f"--resume {output}: this config's training state does not fit "
                                 f"the run's last checkpoint {output / 'model_final.pth'}: "
                                 f"{message}"):
            train_net.main(_arguments(config, "--resume", "OUTPUT_DIR", str(output), key, value))
        assert _digests(output) == before

    # A change that fits: logged, trained on, and the run's config.yaml kept as it was.
    train_net.main(_arguments(config, "--resume", "OUTPUT_DIR", str(output),
                              "SOLVER.MAX_ITER", "3"))
    assert torch.load(output / "model_final.pth", weights_only=True)["iteration"] == 2
    assert _digests(output)["config.yaml"] == before["config.yaml"]
    logged = [line for line in (output / "log.txt").read_text().splitlines()
              if "with settings that differ from the run's config.yaml, which is kept as it "
                 "was: " in line]
    assert len(logged) == 1 and "SOLVER.MAX_ITER: 2 -> 3" in logged[0]
    log = (output / "log.txt").read_text()
    # The config file and the full config are logged as text, not coloured for a terminal.
    assert "Running with full config:\nCUDNN_BENCHMARK: false" in log and "\x1b[" not in log
    # --eval-only in the run's folder keeps it too.
    train_net.main(_arguments(config, "--eval-only", "OUTPUT_DIR", str(output), "MODEL.WEIGHTS",
                              str(output / "model_final.pth")))
    assert _digests(output)["config.yaml"] == before["config.yaml"]
    assert not list(output.glob(".config.yaml*"))

    # A set-up killed while the run's config.yaml was set aside: the next one puts it back.
    os.replace(output / "config.yaml", output / ".config.yaml.run")
    (output / "config.yaml").write_text("written by the set-up that was killed\n")
    train_net.main(_arguments(config, "--eval-only", "OUTPUT_DIR", str(output), "MODEL.WEIGHTS",
                              str(output / "model_final.pth")))
    assert _digests(output)["config.yaml"] == before["config.yaml"]
    assert not list(output.glob(".config.yaml*"))

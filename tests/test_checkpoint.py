"""Checkpoints are written atomically (dying mid-write keeps the last complete one loadable, and
the next run removes what the dead save left), honour the umask, load without running code, and
refuse, for evaluation and prediction, weights that do not fit the model or are not finite."""

import logging
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from helpers import ROOT, root_script, small_mask_rcnn_cfg
from mask_rcnn_ext import checkpoint as checkpoint_module
from mask_rcnn_ext import load_config
from mask_rcnn_ext.checkpoint import SafeCheckpointer

_REAL_SAVE = torch.save


class _Death(BaseException):
    """Stands for the process being killed (not an Exception: nothing may swallow it)."""


def _dying_save(data, stream):
    """Write half of a real checkpoint's bytes, then die."""
    import io

    buffer = io.BytesIO()
    _REAL_SAVE(data, buffer)
    stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    raise _Death


def _model(value):
    model = nn.Linear(64, 64)
    nn.init.constant_(model.weight, value)
    return model


def test_save_writes_and_tags(tmp_path):
    checkpointer = SafeCheckpointer(_model(1.0), str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    loaded = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert loaded["iteration"] == 9 and torch.all(loaded["model"]["weight"] == 1.0)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]


def test_dying_mid_write_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    SafeCheckpointer(_model(1.0), str(tmp_path)).save("model_final", iteration=1)
    monkeypatch.setattr(checkpoint_module.torch, "save", _dying_save)
    with pytest.raises(_Death):
        SafeCheckpointer(_model(2.0), str(tmp_path)).save("model_final", iteration=2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no leftovers
    resumed = _model(0.0)
    checkpointer = SafeCheckpointer(resumed, str(tmp_path))
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 1
    assert torch.all(resumed.weight == 1.0)


def test_the_stock_checkpointer_would_leave_a_truncated_file(tmp_path, monkeypatch):
    """The reference behaviour that SafeCheckpointer avoids."""
    DetectionCheckpointer(_model(1.0), str(tmp_path)).save("model_final", iteration=1)
    monkeypatch.setattr(torch, "save", _dying_save)
    with pytest.raises(_Death):
        DetectionCheckpointer(_model(2.0), str(tmp_path)).save("model_final", iteration=2)
    monkeypatch.undo()
    with pytest.raises(Exception):  # noqa: B017 - whatever the unpickler says about half a file
        torch.load(tmp_path / "model_final.pth", weights_only=True)


def test_trainer_checkpoints_atomically(tiny_coco_dataset, tmp_path):
    from detectron2.engine import hooks

    from mask_rcnn_ext.engine import Trainer

    trainer = Trainer(small_mask_rcnn_cfg(tiny_coco_dataset, tmp_path, depth=18))
    assert isinstance(trainer.checkpointer, SafeCheckpointer)
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert periodic and periodic[0].checkpointer is trainer.checkpointer


def test_refuses_to_save_non_finite_weights(tmp_path):
    SafeCheckpointer(_model(1.0), str(tmp_path)).save("model_0000001", iteration=1)
    with pytest.raises(FloatingPointError, match="'weight' holds NaN or Inf"):
        SafeCheckpointer(_model(float("inf")), str(tmp_path)).save("model_0000003", iteration=3)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_nan_loss_stops_with_its_iteration_and_the_last_checkpoint_loads(tiny_coco_dataset,
                                                                         tmp_path, caplog):
    from detectron2.utils.events import get_event_storage

    from mask_rcnn_ext.engine import Trainer

    cfg = small_mask_rcnn_cfg(tiny_coco_dataset, tmp_path, depth=18)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD = 6, 2
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    forward = trainer.model.forward

    def diverging_forward(batch):
        losses = forward(batch)
        if get_event_storage().iter == 3:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    trainer.model.forward = diverging_forward
    with pytest.raises(FloatingPointError, match="iteration=3"):
        trainer.train()
    assert "Training stopped at iteration 3" in caplog.text
    assert f"last good checkpoint is {tmp_path / 'model_0000001.pth'}" in caplog.text
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())


# --- loading: no code from the file runs --------------------------------------------------------

class _Payload:
    """Unpickling this makes a folder: stands for any code an untrusted checkpoint could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _write_pickle(path, data):
    import pickle

    with open(path, "wb") as stream:
        pickle.dump(data, stream)


def test_arrays_in_model_zoo_caffe2_and_torch_files_load(tmp_path):
    """As Detectron2's checkpointer loads the .pkl layouts; NumPy arrays in a .pth file (which
    torch 2.6+ refuses by default) and pycls' .pyth layout load too."""
    import numpy as np

    weights = {"weight": np.full((64, 64), 0.5, np.float32),
               "bias": np.arange(64, dtype=np.float32)}
    zoo = {"model": weights, "__author__": "someone", "matching_heuristics": True}
    _write_pickle(tmp_path / "zoo.pkl", zoo)
    _write_pickle(tmp_path / "caffe2.pkl",
                  {"blobs": {**weights, "weight_momentum": weights["weight"]}})
    torch.save(zoo, tmp_path / "arrays.pth")
    torch.save({"model_state": {**weights, "num_batches_tracked": torch.tensor(3)}},
               tmp_path / "pycls.pyth")
    for name in ("zoo.pkl", "caffe2.pkl", "arrays.pth", "pycls.pyth"):
        ours = _model(0.0)
        SafeCheckpointer(ours).load(str(tmp_path / name))
        assert torch.all(ours.weight == 0.5) and torch.equal(ours.bias, torch.arange(64.0))
        if name.endswith(".pkl"):
            reference = _model(0.0)
            DetectionCheckpointer(reference).load(str(tmp_path / name))
            assert torch.equal(ours.weight, reference.weight)
            assert torch.equal(ours.bias, reference.bias)


@pytest.mark.parametrize("suffix", ["pkl", "pth"])
def test_checkpoint_that_runs_code_is_refused(tmp_path, suffix):
    from mask_rcnn_ext.checkpoint import UnsafeCheckpointError

    path = tmp_path / f"untrusted.{suffix}"
    marker = tmp_path / "code_ran"
    data = {"model": {"weight": torch.zeros(64, 64).numpy()}, "__author__": "x",
            "x": _Payload(marker)}
    _write_pickle(path, data) if suffix == "pkl" else torch.save(data, path)
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load {path}.*posix.mkdir"):
        SafeCheckpointer(_model(0.0)).load(str(path))
    assert not marker.exists()
    if suffix == "pkl":  # the reference: Detectron2's own checkpointer runs the file's code
        DetectionCheckpointer(_model(0.0)).load(str(path))
        assert marker.is_dir()


def test_predictor_matches_default_predictor_and_refuses_unsafe_weights(tmp_path):
    import numpy as np
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    from mask_rcnn_ext.checkpoint import UnsafeCheckpointError
    from mask_rcnn_ext.engine import Predictor

    cfg = small_mask_rcnn_cfg(depth=18)
    torch.manual_seed(0)
    SafeCheckpointer(build_model(cfg), str(tmp_path)).save("model_final")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    image = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    ours = Predictor(cfg)(image)["instances"]
    reference = DefaultPredictor(cfg)(image)["instances"]
    assert len(ours) == len(reference) > 0
    assert torch.equal(ours.pred_boxes.tensor, reference.pred_boxes.tensor)
    assert torch.equal(ours.pred_masks, reference.pred_masks)

    _write_pickle(tmp_path / "untrusted.pkl", {"x": _Payload(tmp_path / "code_ran")})
    cfg.MODEL.WEIGHTS = str(tmp_path / "untrusted.pkl")
    with pytest.raises(UnsafeCheckpointError):
        Predictor(cfg)
    assert not (tmp_path / "code_ran").exists()


# --- interrupted runs, file modes -----------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoints_honour_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        SafeCheckpointer(_model(1.0), str(tmp_path)).save("model_final")
        (tmp_path / "reference").write_text("")  # any file this process creates
    finally:
        os.umask(previous)
    expected = (tmp_path / "reference").stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    for name in ("model_final.pth", "last_checkpoint"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected


_KILLED_MID_SAVE = """
import os, signal, sys, torch
from torch import nn
from mask_rcnn_ext import checkpoint

def dying_save(data, stream):
    stream.write(b"half a checkpoint")
    stream.flush()
    os.kill(os.getpid(), signal.SIGKILL)

checkpoint.torch.save = dying_save
checkpoint.SafeCheckpointer(nn.Linear(4, 4), sys.argv[1]).save("model_final")
"""


def test_saves_killed_mid_write_leave_files_that_the_next_run_removes(tmp_path, caplog):
    import fcntl
    import subprocess
    import sys

    SafeCheckpointer(_model(1.0), str(tmp_path)).save("model_0000001")
    leftovers = []
    for _ in range(2):
        killed = subprocess.run([sys.executable, "-c", _KILLED_MID_SAVE, str(tmp_path)],
                                capture_output=True, text=True)
        assert killed.returncode == -9
        # What kill -9 leaves (nothing can run after it); the next run removes it.
        assert ("Removed 1 temporary file(s)" in killed.stderr) == bool(leftovers)
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model_final")]
        assert len(leftovers) == 1
    (tmp_path / ".last_checkpoint.ab_cd123").write_text("from an earlier version")
    # Not ours, or in use: kept. A save in progress holds a lock on its temporary file.
    kept = ["notes.txt", ".model_final.pth.ABCDEFGH", ".model_final.pth.abc", "model_x.pth.tmp"]
    for name in kept:
        (tmp_path / name).write_text("keep")
    in_progress = tmp_path / ".model_0000002.pth.0123abcd"
    with open(in_progress, "wb") as stream:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        with caplog.at_level(logging.WARNING):
            resumed = _model(0.0)
            checkpointer = SafeCheckpointer(resumed, str(tmp_path))
    assert f"Removed 2 temporary file(s) (0.0 MiB) left in {tmp_path}" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*kept, in_progress.name, "last_checkpoint", "model_0000001.pth"])
    assert checkpointer.resume_or_load("", resume=True) is not None
    assert torch.all(resumed.weight == 1.0)


def test_a_resumed_run_with_no_iterations_left_writes_its_missing_model_final(tiny_coco_dataset,
                                                                              tmp_path, caplog):
    from mask_rcnn_ext.engine import Trainer

    cfg = small_mask_rcnn_cfg(tiny_coco_dataset, tmp_path, depth=18)  # 2 iterations, period 1
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    expected = torch.load(tmp_path / "model_final.pth", weights_only=True)
    # A kill during the final save: model_final.pth never appeared, last_checkpoint names the
    # periodic checkpoint saved just before it, at the same iteration.
    (tmp_path / "model_final.pth").unlink()
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")

    resumed = Trainer(cfg)
    with caplog.at_level(logging.WARNING):
        resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert (f"All 2 iterations were done, but {tmp_path / 'model_final.pth'} is missing"
            in caplog.text)
    written = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert written["iteration"] == expected["iteration"] == 1
    assert written["model"].keys() == expected["model"].keys()
    assert all(torch.equal(written["model"][key], expected["model"][key])
               for key in expected["model"])


# --- weights to evaluate or predict with ----------------------------------------------------------

def _saved_weights(tmp_path, name, cfg, edit=None):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    if edit is not None:
        edit(model)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def test_unusable_weights_are_refused_for_evaluation_and_prediction(tmp_path):

    from detectron2.engine import default_argument_parser

    from mask_rcnn_ext.checkpoint import UnusableWeightsError
    from mask_rcnn_ext.engine import Predictor

    train_net = root_script("train_net")
    config = str(ROOT / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.yaml")
    cfg = load_config(config)
    other_classes = cfg.clone()
    other_classes.MODEL.ROI_HEADS.NUM_CLASSES = 7
    no_mask = cfg.clone()
    no_mask.MODEL.MASK_ON = False
    weights = {
        "good": _saved_weights(tmp_path, "good", cfg),
        "other_classes": _saved_weights(tmp_path, "other_classes", other_classes),
        "no_mask_head": _saved_weights(tmp_path, "no_mask_head", no_mask),
        "nan": _saved_weights(tmp_path, "nan", cfg, lambda model: torch.nn.init.constant_(
            model.roi_heads.box_predictor.cls_score.bias, float("nan"))),
    }
    expected = {
        "other_classes": r"6 weight\(s\) have another shape in it than in the model \(roi_heads."
                         r"box_predictor."
                         r"cls_score.weight: \(8, 512\) in the file, \(5, 512\) in the model",
        "no_mask_head": r"weight\(s\) of the model are not in it \(roi_heads.mask_head.",
        "nan": r"1 weight\(s\) hold NaN or Inf \(roi_heads.box_predictor.cls_score.bias\)",
    }
    for name, message in expected.items():
        cfg.MODEL.WEIGHTS = weights[name]
        with pytest.raises(UnusableWeightsError, match=f"{weights[name]} does not fit this model: "
                                                       f".*{message}"):
            Predictor(cfg)
        arguments = ["--config-file", config, "--eval-only", "MODEL.WEIGHTS", weights[name],
                     "OUTPUT_DIR", str(tmp_path / "out")]
        # train_net.main takes the arguments of Detectron2's own parser too.
        for parser in (train_net.argument_parser(), default_argument_parser()):
            with pytest.raises(UnusableWeightsError, match="--skip-weight-checks"):
                train_net.main(parser.parse_args(arguments))
        Predictor(cfg, check_weights=False)  # the user opted in: loaded, as Detectron2 would
    cfg.MODEL.WEIGHTS = weights["good"]
    Predictor(cfg)
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(UnusableWeightsError, match="no weights given"):
        Predictor(cfg)


_SAVE_ON_A_FULL_DEVICE = """
import resource, signal, sys
from torch import nn
from mask_rcnn_ext.checkpoint import SafeCheckpointer

checkpointer = SafeCheckpointer(nn.Linear(64, 64), sys.argv[1])
checkpointer.save("model_0000001", iteration=1)
# The kernel now refuses to grow any file past 8 KiB (EFBIG, as ENOSPC for a full disk): a real
# failed write, reported through torch.save's zip writer.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
checkpointer.save("model_0000003", iteration=3)
"""


def test_a_failed_save_names_its_cause_the_file_and_the_checkpoint_to_resume_from(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _SAVE_ON_A_FULL_DEVICE, str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"mask_rcnn_ext.checkpoint.CheckpointSaveError: could not save checkpoint "
        f"{tmp_path / 'model_0000003.pth'}: [Errno 27] File too large. The checkpoints saved "
        f"before it are unchanged. The last good checkpoint is {tmp_path / 'model_0000001.pth'}; "
        "`--resume` continues from it once that is fixed.")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert torch.load(tmp_path / "model_0000001.pth", weights_only=True)["iteration"] == 1


def test_missing_weights_file_says_how_to_make_it_or_do_without(tmp_path):
    """The small configs name a pretrained ResNet that `python -m mask_rcnn_ext.pretrain`
    writes; without it, loading failed with fvcore's bare "Checkpoint ... not found!"."""
    missing = str(tmp_path / "pretrained" / "R_18_synthetic_small.pth")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(FileNotFoundError) as error:
        SafeCheckpointer(model).load(missing)
    message = str(error.value)
    assert missing in message and "python -m mask_rcnn_ext.pretrain" in message
    assert 'MODEL.WEIGHTS ""' in message

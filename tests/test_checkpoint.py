"""Checkpoints are written atomically: dying mid-write keeps the last complete one loadable."""

import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from conftest import small_mask_rcnn_cfg
from mask_rcnn_ext import checkpoint as checkpoint_module
from mask_rcnn_ext.checkpoint import AtomicCheckpointer

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
    checkpointer = AtomicCheckpointer(_model(1.0), str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    loaded = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert loaded["iteration"] == 9 and torch.all(loaded["model"]["weight"] == 1.0)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]


def test_dying_mid_write_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    AtomicCheckpointer(_model(1.0), str(tmp_path)).save("model_final", iteration=1)
    monkeypatch.setattr(checkpoint_module.torch, "save", _dying_save)
    with pytest.raises(_Death):
        AtomicCheckpointer(_model(2.0), str(tmp_path)).save("model_final", iteration=2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no leftovers
    resumed = _model(0.0)
    checkpointer = AtomicCheckpointer(resumed, str(tmp_path))
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 1
    assert torch.all(resumed.weight == 1.0)


def test_the_stock_checkpointer_would_leave_a_truncated_file(tmp_path, monkeypatch):
    """The reference behaviour that AtomicCheckpointer avoids."""
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
    assert isinstance(trainer.checkpointer, AtomicCheckpointer)
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert periodic and periodic[0].checkpointer is trainer.checkpointer

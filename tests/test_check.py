"""`python -m mask_rcnn_ext.check` and `python -m detectron2_compat.check` pass here and say what
is broken when something is."""

import subprocess
import sys

import pytest

from detectron2_compat import check as compat_check
from mask_rcnn_ext import check


def test_check_passes_and_reports_the_installation():
    result = subprocess.run([sys.executable, "-m", "mask_rcnn_ext.check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ("torch: 2.", "detectron2: ", "CUDA: ", "box_iou_rotated: ok",
                     "fast COCOeval (evaluate + accumulate): ok", "all checks passed"):
        assert expected in result.stdout


def test_check_fails_when_detectron2_does_not_import(tmp_path):
    fake = tmp_path / "detectron2"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated broken install')\n")
    result = subprocess.run([sys.executable, "-m", "mask_rcnn_ext.check"], capture_output=True,
                            text=True, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
    message = result.stdout + result.stderr
    assert "simulated broken install" in message
    assert "needs a working Detectron2" in message and "make setup" in message


def test_compat_check_passes_on_its_own():
    result = subprocess.run([sys.executable, "-m", "detectron2_compat.check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ("detectron2: ", "CUDA: ", "box_iou_rotated: ok", "all checks passed"):
        assert expected in result.stdout
    assert "registered by mask_rcnn_ext" not in result.stdout


@pytest.mark.parametrize("main", [check.main, compat_check.main], ids=["plugin", "compat"])
def test_check_fails_and_names_a_broken_op(main, monkeypatch, capsys):
    def broken():
        raise AssertionError("wrong answer")

    monkeypatch.setattr(compat_check, "CHECKS", {"some op": broken})
    assert main() == 1
    output = capsys.readouterr().out
    assert "some op: FAILED" in output and "wrong answer" in output and "BROKEN" in output

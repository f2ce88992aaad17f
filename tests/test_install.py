"""The README's recipe for an existing Detectron2 environment: the package built as a wheel and
installed with pip into another virtual environment (which here reuses the set-up's PyTorch and
Detectron2, as a user's environment has its own) imports, registers its components and passes
its installation check, from outside the repository."""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(*command, cwd):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # builds a wheel and a venv, ~15 s
def test_wheel_installs_into_an_existing_environment(tmp_path):
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
         str(tmp_path / "dist"), str(ROOT), cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("mask_rcnn_ext-*.whl")

    environment = tmp_path / "env"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(_run(python, "-c", purelib, cwd=tmp_path).strip())
    # The set-up's packages (torch, Detectron2, ...) as the user's own: a plain path entry, which
    # leaves out the editable install of this checkout (that needs its own .pth processed).
    (site_packages / "existing_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(python, "-m", "pip", "install", "--no-index", "--no-build-isolation", str(wheel),
         cwd=tmp_path)

    where = _run(python, "-c", "import mask_rcnn_ext; print(mask_rcnn_ext.__file__)", cwd=tmp_path)
    assert where.strip().startswith(str(site_packages)), where
    report = _run(python, "-m", "mask_rcnn_ext.check", cwd=tmp_path)
    assert "MaskRCNNExtROIHeads" in report and "all checks passed" in report

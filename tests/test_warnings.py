"""Warnings that say nothing to the user are silenced where they arise: importing the package
(which imports fvcore and Detectron2, which compile functions with torch.jit.script) prints none,
while the user's own TorchScript calls still warn."""

import subprocess
import sys


def _stderr(code: str) -> str:
    return subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True,
                          text=True, timeout=120).stderr


def test_importing_the_package_prints_no_warning():
    assert "Warning" not in _stderr("import mask_rcnn_ext")


def test_the_users_own_torchscript_calls_still_warn():
    # (Compiling a function defined in -c then fails for want of its source: the warning comes
    # first, which is what is checked.)
    stderr = _stderr("import mask_rcnn_ext, torch\n"
                     "def double(x: torch.Tensor) -> torch.Tensor:\n"
                     "    return 2 * x\n"
                     "torch.jit.script(double)")
    assert "`torch.jit.script` is deprecated" in stderr

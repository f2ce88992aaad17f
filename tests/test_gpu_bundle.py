"""The GPU check's bundle (``make gpu-bundle``, for a machine that reaches no package registry):
it builds, fits the device tool's 64 MiB, and holds every package that the check imports and the
GPU machine lacks. Built here for this interpreter's Python (the machine's is 3.12; the same code
picks the wheels by version), installed offline into an interpreter that sees only the machine's
own packages, it runs the installation check and collects the GPU check's tests."""

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from benchmarks import gpu_bundle
from helpers import ROOT

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_the_bundle_holds_what_the_machine_lacks_and_nothing_it_has():
    bundled = gpu_bundle.bundled_distributions()
    for needed in ("fvcore", "iopath", "pycocotools", "faster-coco-eval", "shapely", "omegaconf",
                   "hydra-core", "antlr4-python3-runtime", "tensorboard", "portalocker"):
        assert needed in bundled
    for present in ("torch", "numpy", "pillow", "scipy", "protobuf", "packaging"):
        assert present not in bundled  # the machine's own, or what they depend on
    assert bundled["pycocotools"] == metadata.version("pycocotools")  # requirements.txt's pin


def _machine_packages(folder: Path) -> Path:
    """A folder of links to this set-up's installed copies of the GPU machine's own packages
    (and what they depend on), and nothing else."""
    folder.mkdir()
    site = Path(metadata.distribution("torch").locate_file(""))
    for name in gpu_bundle.dependency_closure(gpu_bundle.PREINSTALLED, PYTHON):
        for file in metadata.distribution(name).files or []:
            top = file.parts[0]
            if top != ".." and not (folder / top).exists() and (site / top).exists():
                (folder / top).symlink_to(site / top)
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    manifest = gpu_bundle.build_bundle(folder / "gpu_bundle", python=PYTHON)
    target = folder / "site"
    wheels = sorted(str(path) for path in (folder / "gpu_bundle").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--target", str(target), *wheels], check=True)
    machine = _machine_packages(folder / "machine")
    return manifest, f"{target}{os.pathsep}{machine}{os.pathsep}{ROOT}"


def _isolated(path: str, *args: str) -> subprocess.CompletedProcess:
    """This interpreter without its site-packages (-S): the standard library and ``path``."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-S", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_bundle_fits_and_installed_offline_runs_the_check(installed):
    manifest, path = installed
    assert manifest["bytes"] <= gpu_bundle.LIMIT_BYTES
    assert manifest["detectron2"].startswith("pb1_detectron2-0.6+maskrcnnext.")
    check = _isolated(path, "-m", "mask_rcnn_ext.check")
    assert check.returncode == 0 and "all checks passed" in check.stdout, (
        check.stdout[-3000:] + check.stderr[-3000:])
    collected = _isolated(path, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                          *_GPU_CHECK_TESTS)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert " tests collected" in collected.stdout or "tests collected" in collected.stdout


# What benchmarks/gpu_check.sh runs of the suite.
_GPU_CHECK_TESTS = ("tests/test_cuda.py", "tests/test_poolers.py", "tests/test_roi_ops.py",
                    "tests/test_triton_kernels.py")


def test_the_gpu_check_script_runs_the_tests_it_is_checked_with():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert all(test in script for test in _GPU_CHECK_TESTS)
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0

"""The packages the GPU check needs on a machine that reaches no package registry, as wheels in
one folder (``make gpu-bundle``; default ``gpu_bundle/``, ignored by git) that travels with the
working tree; ``benchmarks/gpu_check.sh`` installs them there, offline.

That machine (see DEVELOPERS.md) has Python 3.12 with PyTorch, torchvision, Triton, NumPy, Pillow,
OpenCV, ONNX Runtime, pytest, Matplotlib and SciPy, and nothing else of ours. The folder holds
every other package that mask_rcnn_ext, its tests and benchmarks import, with what they depend
on: the dependencies of this set-up's packages (:data:`NEEDED`) less those of the machine's
(:data:`PREINSTALLED`), each at the version installed here (requirements.txt's pins), as CPython
3.12 manylinux wheels (pure-Python ones built here when PyPI has only a source archive); and
Detectron2 as this set-up builds it (registry sources + the compat layer, a pure-Python wheel).

Usage: python -m benchmarks.gpu_bundle [--output gpu_bundle]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from detectron2_compat.build import build_wheel

ROOT = Path(__file__).resolve().parent.parent
# What the GPU check imports beyond the machine's own packages (Detectron2's runtime
# dependencies, ours, and TensorBoard for the trainer's event writer).
NEEDED = ("fvcore", "iopath", "pycocotools", "faster-coco-eval", "shapely", "yacs", "omegaconf",
          "hydra-core", "termcolor", "tabulate", "cloudpickle", "tqdm", "tensorboard", "future",
          "pydot")
PREINSTALLED = ("torch", "torchvision", "triton", "numpy", "pillow", "opencv-python-headless",
                "onnxruntime", "pytest", "matplotlib", "scipy")
# The device tool carries at most 64 MiB of ignored paths.
LIMIT_BYTES = 64 * 2**20
# The target machine's Python, for environment markers and wheel tags.
PYTHON = "3.12"
_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
              "manylinux1_x86_64", "linux_x86_64")


def _markers(python: str) -> dict[str, str]:
    """Environment markers of CPython ``python`` on x86-64 Linux."""
    return {"python_version": python, "python_full_version": f"{python}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "extra": ""}


def dependency_closure(roots: tuple[str, ...], python: str = PYTHON) -> dict[str, str]:
    """Each distribution that ``roots`` need on CPython ``python``, transitively, and its version
    here (canonical name -> version)."""
    markers = _markers(python)
    found: dict[str, str] = {}
    pending = list(roots)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found:
            continue
        distribution = metadata.distribution(name)
        found[name] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(markers):
                pending.append(requirement.name)
    return found


def bundled_distributions(python: str = PYTHON) -> dict[str, str]:
    """What the folder must hold besides Detectron2: name -> version."""
    present = dependency_closure(PREINSTALLED, python)
    return {name: version for name, version in sorted(dependency_closure(NEEDED, python).items())
            if name not in present}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], check=True)


def _fetch(name: str, version: str, folder: Path, python: str) -> None:
    """A CPython ``python`` wheel of ``name==version`` into ``folder``: PyPI's, or built here from
    its source archive when it is pure Python."""
    platforms = [argument for platform in _PLATFORMS for argument in ("--platform", platform)]
    try:
        _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python,
             "--implementation", "cp", *platforms, "--dest", str(folder), f"{name}=={version}")
        return
    except subprocess.CalledProcessError:
        pass  # no wheel for the target on PyPI
    with tempfile.TemporaryDirectory() as built:
        _pip("wheel", "--no-deps", "--wheel-dir", built, f"{name}=={version}")
        (wheel,) = Path(built).glob("*.whl")
        if not wheel.name.endswith("-none-any.whl"):
            raise RuntimeError(f"{name}=={version} has no CPython {python} wheel on PyPI and is "
                               f"not pure Python (built {wheel.name}); it cannot be bundled")
        shutil.move(str(wheel), folder / wheel.name)


def build_bundle(output: Path, python: str = PYTHON) -> dict:
    """Fill ``output`` (emptied first) with the wheels for CPython ``python``; returns its
    manifest, also written to ``output/manifest.json``: the distributions and the folder's
    size."""
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    distributions = bundled_distributions(python)
    for name, version in distributions.items():
        _fetch(name, version, output, python)
    with tempfile.TemporaryDirectory(prefix="detectron2-build-") as workdir:
        detectron2 = build_wheel(Path(workdir), output)
    size = sum(path.stat().st_size for path in output.iterdir())
    manifest = {"python": python, "distributions": distributions, "detectron2": detectron2.name,
                "bytes": size}
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if size > LIMIT_BYTES:
        raise RuntimeError(f"{output} holds {size / 2**20:.1f} MiB, over the device tool's "
                           f"{LIMIT_BYTES / 2**20:.0f} MiB")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "gpu_bundle")
    args = parser.parse_args(argv)
    manifest = build_bundle(args.output)
    print(f"{args.output}: {len(manifest['distributions']) + 1} wheels, "
          f"{manifest['bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()

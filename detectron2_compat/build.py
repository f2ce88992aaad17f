"""Install Detectron2 into the running interpreter's environment (``make setup`` calls this).

Order of preference:

1. a Detectron2 that already imports with a compiled ``detectron2._C`` (for example one you built
   from source) is kept;
2. with ``--source DIR``, your Detectron2 checkout is built and installed (this compiles its C++,
   and its CUDA code when ``nvcc`` and a GPU are present);
3. otherwise PyPI's ``pb1-detectron2==0.6`` sdist is downloaded with pip, checked against its
   pinned sha256, patched with :data:`detectron2_compat.fixes.FIXES`, given
   :mod:`detectron2_compat.extension` as its ``detectron2._C``, and installed. A build of the
   current fixes that is already installed is kept.

Usage: ``python -m detectron2_compat.build [--source DIR] [--force]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .fixes import FIXES_DIGEST, SDIST, apply_fixes

COMPAT_VERSION_SUFFIX = f"+maskrcnnext.{FIXES_DIGEST}"

# Run in a fresh interpreter so that the answer reflects what is installed now.
_PROBE = """
import importlib.metadata, json
info = {"importable": False}
try:
    import detectron2, detectron2._C as C, detectron2.layers, detectron2.evaluation.fast_eval_api
    compat = bool(getattr(C, "IS_COMPAT_LAYER", False))
    info.update(importable=True, path=detectron2.__file__, compat=compat)
    try:
        info["compat_version"] = importlib.metadata.version("pb1-detectron2")
    except importlib.metadata.PackageNotFoundError:
        info["compat_version"] = None
except Exception as error:
    info["error"] = f"{type(error).__name__}: {error}"
print(json.dumps(info))
"""


def probe_detectron2() -> dict:
    """What a fresh interpreter finds: ``importable``, ``compat``, ``compat_version``, ``error``."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _pip(*args: str, env: dict | None = None) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def patched_sources(workdir: Path) -> Path:
    """Download and verify the pinned sdist into ``workdir``, unpack it and apply the fixes;
    returns its source root."""
    requirements = workdir / "sdist-requirements.txt"
    requirements.write_text(f"{SDIST.requirement} --hash=sha256:{SDIST.sha256}\n")
    # pip verifies the hash before it runs the sdist's setup.py (which imports torch, hence no
    # build isolation).
    _pip("download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
         "--dest", str(workdir), "--requirement", str(requirements))
    (archive,) = workdir.glob("*.tar.gz")
    if _sha256(archive) != SDIST.sha256:
        raise RuntimeError(f"{archive} does not have the pinned sha256 {SDIST.sha256}")
    with tarfile.open(archive) as tar:
        tar.extractall(workdir / "src", filter="data")
    (source_root,) = (workdir / "src").iterdir()
    for name in apply_fixes(source_root):
        print(f"applied fix: {name}", flush=True)
    return source_root


def build_from_registry(workdir: Path) -> None:
    """Download, verify, patch and install the pinned sdist."""
    source_root = patched_sources(workdir)
    # Dependencies are pinned in the project's requirements.txt, installed before this step.
    _pip("install", "--no-deps", "--no-build-isolation", str(source_root), env=_build_env())


def build_wheel(workdir: Path, destination: Path) -> Path:
    """The patched sdist as a wheel in ``destination`` (pure Python: its ``detectron2._C`` is
    the compat layer's, so it installs on any Python 3 with PyTorch); returns its path."""
    source_root = patched_sources(workdir)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(destination),
         str(source_root), env=_build_env())
    distribution = SDIST.requirement.split("==")[0].replace("-", "_")
    (wheel,) = destination.glob(f"{distribution}-*.whl")
    return wheel


def _build_env() -> dict:
    return dict(os.environ, D2_VERSION_SUFFIX=COMPAT_VERSION_SUFFIX)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="a Detectron2 source checkout to build")
    parser.add_argument("--force", action="store_true", help="rebuild even if one works")
    args = parser.parse_args(argv)

    found = probe_detectron2()
    if args.source is not None:
        if not (args.source / "setup.py").is_file():
            raise SystemExit(f"--source {args.source}: no setup.py; not a Detectron2 checkout")
        _pip("install", "--no-build-isolation", "--no-deps", str(args.source))
    elif found["importable"] and not found["compat"] and not args.force:
        print(f"keeping the compiled Detectron2 at {found['path']}")
        return 0
    elif (found["importable"] and found["compat_version"] == "0.6" + COMPAT_VERSION_SUFFIX
          and not args.force):
        print(f"keeping Detectron2 {found['compat_version']} (registry sources + compat layer)")
        return 0
    else:
        if found.get("error"):
            print(f"no working Detectron2 ({found['error']}); building it", flush=True)
        with tempfile.TemporaryDirectory(prefix="detectron2-build-") as workdir:
            build_from_registry(Path(workdir))

    found = probe_detectron2()
    if not found["importable"]:
        raise SystemExit(f"Detectron2 still does not import after the build: {found.get('error')}")
    kind = "registry sources + compat layer" if found["compat"] else "compiled"
    print(f"Detectron2 ready ({kind}) at {found['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Report the installation and verify that what mask_rcnn_ext needs works.

``python -m mask_rcnn_ext.check`` prints the versions, the compat layer's checks
(:mod:`detectron2_compat.check`: which Detectron2 build is in use, whether CUDA is available, and
each compiled op on a small case with a known answer), and the project's names in Detectron2's
registries. It exits with status 1, after saying what is wrong, when anything fails.
"""

from __future__ import annotations

import sys

from detectron2_compat import check as compat_check
from detectron2_compat.check import distribution_version

_DISTRIBUTIONS = (
    "torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "pycocotools",
    "faster-coco-eval", "fvcore", "iopath",
)


def registered_names() -> dict[str, list[str]]:
    """Names in Detectron2's model registries whose objects come from mask_rcnn_ext."""
    import detectron2.modeling as modeling
    from detectron2.utils.registry import Registry

    from mask_rcnn_ext.modeling import POOLER_REGISTRY

    names: dict[str, list[str]] = {}
    registries = {name: value for name, value in vars(modeling).items()
                  if isinstance(value, Registry)}
    registries["POOLER_REGISTRY"] = POOLER_REGISTRY
    for registry_name, registry in sorted(registries.items()):
        ours = sorted(name for name, obj in registry
                      if getattr(obj, "__module__", "").startswith("mask_rcnn_ext"))
        if ours:
            names[registry_name] = ours
    return names


def main() -> int:
    print(f"python: {sys.version.split()[0]}")
    for distribution in _DISTRIBUTIONS:
        print(f"{distribution}: {distribution_version(distribution)}")
    print(f"mask_rcnn_ext: {distribution_version('mask-rcnn-ext')}")
    # Importing this package already required a working Detectron2 (it says how to fix it).
    problems = compat_check.report()
    try:
        names = registered_names()
    except Exception as error:
        problems.append(f"importing mask_rcnn_ext failed: {type(error).__name__}: {error}")
        names = {}
    print("registered by mask_rcnn_ext:")
    for registry_name, entries in names.items():
        print(f"  {registry_name}: {', '.join(entries)}")
    if not names:
        print("  (nothing yet)")
    return compat_check.print_verdict(problems)


if __name__ == "__main__":
    sys.exit(main())

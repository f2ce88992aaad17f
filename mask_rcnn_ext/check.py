"""Report the installation and verify that what mask_rcnn_ext needs works.

``python -m mask_rcnn_ext.check`` prints the versions, which Detectron2 build is in use, whether
CUDA is available, the outcome of running each op Detectron2 reaches through its compiled module
on a small case with a known answer, and the project's names in Detectron2's registries. It exits
with status 1, after saying what is wrong, when anything fails.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

_DISTRIBUTIONS = (
    "torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "pycocotools",
    "faster-coco-eval", "fvcore", "iopath",
)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def detectron2_build() -> str:
    """A description of the Detectron2 build in use."""
    import detectron2
    from detectron2 import _C

    compat = bool(getattr(_C, "IS_COMPAT_LAYER", False))
    where = Path(detectron2.__file__).parent
    if compat:
        version = _version("pb1-detectron2")
        return f"{version} @ {where}: registry sources + mask_rcnn_ext compat layer"
    return f"{detectron2.__version__} @ {where}: compiled extension {_C.__file__}"


# Each check runs an op on a case whose answer is known and raises AssertionError if it differs.


def _check_box_iou_rotated() -> None:
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 2.0, 0.0], [10.0, 10.0, 2.0, 4.0, 90.0],
                          [11.0, 10.0, 4.0, 2.0, 0.0]])
    iou = pairwise_iou_rotated(boxes, boxes)
    expected = torch.tensor([[1.0, 1.0, 0.6], [1.0, 1.0, 0.6], [0.6, 0.6, 1.0]])
    assert torch.allclose(iou, expected, atol=1e-4), iou


def _check_nms_rotated() -> None:
    from detectron2.layers import nms_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 2.0, 0.0], [10.2, 10.0, 4.0, 2.0, 0.0],
                          [30.0, 10.0, 4.0, 2.0, 45.0]])
    keep = nms_rotated(boxes, torch.tensor([0.5, 0.9, 0.1]), 0.5)
    assert keep.tolist() == [1, 2], keep


def _check_roi_align_rotated() -> None:
    from detectron2.layers import ROIAlignRotated
    from torchvision.ops import roi_align

    features = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).reshape(2, 3, 12, 12)
    features.requires_grad_(True)
    # With angle 0, a rotated RoI is an axis-aligned one ("aligned" half-pixel convention).
    rotated = torch.tensor([[1.0, 10.0, 8.0, 8.0, 6.0, 0.0]])
    pooled = ROIAlignRotated((3, 3), 0.5, 2)(features, rotated)
    pooled.sum().backward()
    reference_input = features.detach().clone().requires_grad_(True)
    reference = roi_align(reference_input, torch.tensor([[1.0, 6.0, 5.0, 14.0, 11.0]]), (3, 3),
                          0.5, 2, aligned=True)
    reference.sum().backward()
    assert torch.allclose(pooled, reference, atol=1e-4), (pooled, reference)
    assert torch.allclose(features.grad, reference_input.grad, atol=1e-5)


def _check_deform_conv() -> None:
    from detectron2 import _C

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not getattr(_C, "IS_COMPAT_LAYER", False):
        return  # upstream's compiled deformable convolution is CUDA-only; nothing to run here
    x = torch.randn(1, 4, 6, 6, device=device)
    weight = torch.randn(5, 4, 3, 3, device=device)
    # Zero offsets make a deformable convolution an ordinary one.
    offset = torch.zeros(1, 18, 6, 6, device=device)
    output = x.new_empty(1, 5, 6, 6)
    _C.deform_conv_forward(x, weight, offset, output, x.new_empty(0), x.new_empty(0),
                           3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    expected = torch.nn.functional.conv2d(x, weight, padding=1)
    assert torch.allclose(output, expected, atol=1e-4)


def _check_fast_cocoeval() -> None:
    from detectron2.evaluation.fast_eval_api import COCOeval_opt
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 50, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
             "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 30, 10, 10], "area": 100,
             "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        detections = gt.loadRes([
            {"image_id": 1, "category_id": 1, "bbox": [6, 5, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [0, 30, 10, 10], "score": 0.8},
        ])
    stats = []
    for evaluator_class in (COCOeval, COCOeval_opt):
        evaluator = evaluator_class(gt, detections, "bbox")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats.append(evaluator.stats)
    assert np.allclose(stats[0], stats[1]), stats


CHECKS: dict[str, Callable[[], None]] = {
    "box_iou_rotated": _check_box_iou_rotated,
    "nms_rotated (torch.ops.detectron2)": _check_nms_rotated,
    "roi_align_rotated forward/backward": _check_roi_align_rotated,
    "deform_conv forward": _check_deform_conv,
    "fast COCOeval (evaluate + accumulate)": _check_fast_cocoeval,
}


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
    problems: list[str] = []
    print(f"python: {sys.version.split()[0]}")
    for distribution in _DISTRIBUTIONS:
        print(f"{distribution}: {_version(distribution)}")
    print(f"mask_rcnn_ext: {_version('mask-rcnn-ext')}")
    # Importing this package already required a working Detectron2 (it says how to fix it).
    print(f"detectron2: {detectron2_build()}")
    if torch.cuda.is_available():
        print(f"CUDA: available ({torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda})")
    else:
        print(f"CUDA: not available (torch built with CUDA {torch.version.cuda}); ops run on CPU")

    print("ops:")
    for name, check in CHECKS.items():
        try:
            check()
        except Exception as error:
            detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            problems.append(f"{name}: {detail}")
            print(f"  {name}: FAILED ({detail})")
        else:
            print(f"  {name}: ok")

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

    if problems:
        print("\nBROKEN:\n  " + "\n  ".join(problems))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

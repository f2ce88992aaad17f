"""Check the Detectron2 in use: which build it is, and whether each op it reaches through its
compiled module (``detectron2._C``, ours or upstream's) gives a known answer on a small case.

``python -m detectron2_compat.check`` prints that and exits with status 1, after saying what is
wrong, when an op fails; ``python -m mask_rcnn_ext.check`` runs the same checks within its own.
Detectron2 is imported inside the functions: this package must import without it.
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

__all__ = ["CHECKS", "detectron2_build", "distribution_version", "main", "print_verdict",
           "report"]


def distribution_version(distribution: str) -> str:
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
        version = distribution_version("pb1-detectron2")
        return f"{version} @ {where}: registry sources + detectron2_compat layer"
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


def report() -> list[str]:
    """Print the build, CUDA and each op's check; return the problems found (none: [])."""
    problems: list[str] = []
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
    return problems


def print_verdict(problems: list[str]) -> int:
    """Print the problems, or that all checks passed; the exit status to return."""
    if problems:
        print("\nBROKEN:\n  " + "\n  ".join(problems))
        return 1
    print("\nall checks passed")
    return 0


def main() -> int:
    print(f"python: {sys.version.split()[0]}")
    print(f"torch: {distribution_version('torch')}")
    try:
        problems = report()
    except ImportError as error:
        problems = [f"Detectron2 does not import: {error}"]
    return print_verdict(problems)


if __name__ == "__main__":
    sys.exit(main())

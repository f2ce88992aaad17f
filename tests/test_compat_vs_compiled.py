"""When a compiled Detectron2 is installed, the compat layer's ops equal its compiled ops.

The compiled side is reached through Detectron2's public layers, because newer upstream versions
moved some ops from ``_C`` attributes to ``torch.ops.detectron2``.
These run only against an upstream build (e.g. ``make setup DETECTRON2_SOURCE=...``); with the
registry build they are skipped, and the other compat tests use independent references instead.
"""

import numpy as np
import pytest
import torch
from detectron2 import _C
from pycocotools.coco import COCO

from detectron2_compat import extension
from helpers import evaluate
from support.evaluation import evaluation_problem

pytestmark = pytest.mark.skipif(
    getattr(_C, "IS_COMPAT_LAYER", False), reason="needs a compiled Detectron2 to compare with"
)


def _boxes(n, seed):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.rand(n, 2, generator=generator) * 30
    sizes = torch.rand(n, 2, generator=generator) * 12 + 0.5
    angles = torch.rand(n, 1, generator=generator) * 360 - 180
    return torch.cat((centers, sizes, angles), dim=1)


def test_box_iou_rotated_equals_compiled():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes1, boxes2 = _boxes(50, 0), _boxes(40, 1)
    torch.testing.assert_close(extension.box_iou_rotated(boxes1, boxes2),
                               pairwise_iou_rotated(boxes1, boxes2), atol=1e-5, rtol=0)


def test_nms_rotated_equals_compiled():
    boxes = _boxes(200, 2)
    scores = torch.rand(200, generator=torch.Generator().manual_seed(3))
    assert extension.nms_rotated(boxes, scores, 0.3).tolist() == torch.ops.detectron2.nms_rotated(
        boxes, scores, 0.3).tolist()


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_rotated_equals_compiled(sampling_ratio):
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 3, 20, 24, generator=generator)
    boxes = _boxes(30, 5)
    rois = torch.cat((torch.randint(0, 2, (30, 1), generator=generator).float(), boxes * 1.5), 1)
    from detectron2.layers import ROIAlignRotated

    ours = extension.roi_align_rotated_forward(features, rois, 0.5, 4, 3, sampling_ratio)
    features.requires_grad_(True)
    theirs = ROIAlignRotated((4, 3), 0.5, sampling_ratio)(features, rois)
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ours)
    (grad_theirs,) = torch.autograd.grad(theirs, features, grad)
    ours_grad = extension.roi_align_rotated_backward(grad, rois, 0.5, 4, 3, 2, 3, 20, 24,
                                                     sampling_ratio)
    torch.testing.assert_close(ours_grad, grad_theirs, atol=1e-5, rtol=1e-5)


def test_fast_cocoeval_equals_compiled(monkeypatch):
    from detectron2.evaluation import fast_eval_api

    dataset, detections = evaluation_problem(15, seed=6)
    ground_truth = COCO()
    ground_truth.dataset = dataset
    ground_truth.createIndex()
    compiled = evaluate(fast_eval_api.COCOeval_opt, ground_truth, detections, "segm", 1)
    monkeypatch.setattr(fast_eval_api, "_C", extension)
    compat = evaluate(fast_eval_api.COCOeval_opt, ground_truth, detections, "segm", 1)
    np.testing.assert_allclose(compat.stats, compiled.stats, atol=1e-12)

"""Helpers shared by the tests: a small Mask R-CNN config, a training batch, and COCO evaluation
of the synthetic evaluation problems (``support.evaluation.evaluation_problem``), FPN inputs for
the poolers, and peak-memory measurement in a fresh process."""

import contextlib
import copy
import importlib
import json
import sys
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances, PolygonMasks

from mask_rcnn_ext import add_mask_rcnn_ext_config
from mask_rcnn_ext.data import synthetic

ROOT = Path(__file__).parent.parent


def root_script(name: str):
    """The repository's script ``name`` (``train_net``, ``demo``), imported as a module."""
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT))


def small_mask_rcnn_cfg(dataset_name="", output_dir="", depth=50):
    """Stock Mask R-CNN, R-FPN with group norm (random weights stay finite), small CPU inputs;
    mask_rcnn_ext's keys are added with their (stock) defaults."""
    cfg = add_mask_rcnn_ext_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    # Random weights with frozen batch norm overflow; group norm keeps activations finite.
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth < 50:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(synthetic.CATEGORIES)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.DATASETS.TRAIN = (dataset_name,) if dataset_name else ()
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 96
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def training_batch(seed=0, empty_second=False):
    """Two normalised-size images with square and triangle instances (exact polygons)."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for index in range(2):
        image = torch.rand(3, 64, 80, generator=generator) * 255
        instances = Instances((64, 80))
        polygons, boxes, classes = [], [], []
        if not (empty_second and index == 1):
            for k in range(3):
                x, y = (torch.rand(2, generator=generator) * 40).tolist()
                side = 10 + 10 * float(torch.rand(1, generator=generator))
                polygons.append([[x, y, x + side, y, x + side, y + side, x, y + side]])
                boxes.append([x, y, x + side, y + side])
                classes.append(k % 2)
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.gt_masks = PolygonMasks(polygons)
        batch.append({"image": image, "instances": instances, "height": 64, "width": 80})
    return batch


def evaluate(evaluator_class, ground_truth, detections, iou_type, use_cats):
    evaluator = evaluator_class(ground_truth, ground_truth.loadRes(copy.deepcopy(detections)),
                                iou_type)
    evaluator.params.useCats = use_cats
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


@contextlib.contextmanager
def registered(dataset, folder, name):
    """``dataset`` written to ``folder`` as COCO JSON and registered as ``name``, loaded once so
    that its metadata holds the category-id mapping; unregistered afterwards. Yields the JSON
    file's path."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    json_file = folder / "instances.json"
    json_file.write_text(json.dumps(dataset))
    register_coco_instances(name, {}, str(json_file), str(folder))
    try:
        DatasetCatalog.get(name)
        yield json_file
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


_PEAK_PRELUDE = """
def _status_bytes(field):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def start_peak():
    '''Reset this process's peak RSS (Linux: clear_refs 5) and return its RSS now.'''
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status_bytes("VmRSS")


def peak_since(start):
    '''How far the RSS peaked above ``start`` (bytes).'''
    return _status_bytes("VmHWM") - start
"""


def peak_growth(script: str, *args: str) -> float:
    """Run ``script`` in a fresh Python process and return the last number it prints. The script
    can call ``start_peak()`` and ``peak_since(start)`` (peak resident memory growth, bytes): not
    ``ru_maxrss``, which Linux carries over from the parent process (pytest) through ``execve``,
    and which then hides any smaller peak."""
    import subprocess

    result = subprocess.run([sys.executable, "-c", _PEAK_PRELUDE + script, *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.strip().splitlines()[-1])


# The strides of an FPN from P2 to P5, as scales.
FPN_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def fpn_pyramid(dtype=torch.float32, channels=3, size=(64, 96), seed=0):
    """Random FPN maps of 2 images of ``size`` pixels, one per scale of FPN_SCALES."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, channels, size[0] // s, size[1] // s, generator=generator, dtype=dtype)
            for s in (4, 8, 16, 32)]


def fpn_box_lists(dtype=torch.float32, seed=1):
    """Boxes from 4 to 700 pixels wide, so that every level gets some (224 px -> level 4)."""
    generator = torch.Generator().manual_seed(seed)
    lists = []
    for _ in range(2):
        sizes = torch.exp(torch.empty(40, 2, dtype=dtype).uniform_(1.4, 6.6, generator=generator))
        corners = torch.rand(40, 2, generator=generator, dtype=dtype) * torch.tensor(
            [96.0, 64.0], dtype=dtype) - sizes / 3
        lists.append(Boxes(torch.cat((corners, corners + sizes), dim=1)))
    return lists

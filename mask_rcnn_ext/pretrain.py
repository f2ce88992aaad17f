"""Pretrain a config's ResNet on its own training set, for machines without ImageNet weights.

The paper's models all start from one ImageNet-pretrained ResNet. Where those weights cannot be
downloaded (or would not fit the data, as on the synthetic set), this pretrains the config's
ResNet the way ImageNet does, by image classification: every object of ``DATASETS.TRAIN`` is cut
out (its box with a margin), resized to a square crop and classified by its category, through a
global average pool and one fully connected layer that are then thrown away. Classification uses
no RoI pooling, so the features favour none of the pooler types that the accuracy study compares.

The result is an ImageNet-style ResNet checkpoint (keys ``stem.*``, ``res2.*`` ... ``res5.*``,
loaded by Detectron2's name matching) that ``MODEL.WEIGHTS`` loads into any model of that ResNet:
an FPN backbone, a C4 backbone and its res5 head, or a C5 backbone. Its length and learning rate
are the config's ``PRETRAIN`` keys. Usage (``--output`` defaults to the config's ``MODEL.WEIGHTS``,
the file the config's detector starts from; ``--iterations`` to ``PRETRAIN.ITERATIONS``)::

    python -m mask_rcnn_ext.pretrain --config-file CONFIG [--iterations N] [--output OUT.pth]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import detection_utils
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.structures import BoxMode
from detectron2.utils.logger import setup_logger
from torch import Tensor, nn

from .checkpoint import write_checkpoint
from .config import load_config
from .data.build import training_dataset_dicts
from .data.builtin import register_coco_format

__all__ = ["CropClassifier", "object_crops", "main", "pretrain"]

logger = logging.getLogger(__name__)

MARGIN = 0.15  # of the box's longer side, on every side: the crop shows the object's outline


def object_crops(dataset: list[dict], side: int, image_format: str = "BGR"
                 ) -> tuple[Tensor, Tensor]:
    """Every non-crowd object of ``dataset`` (Detectron2 dicts) cut out with its margin, clipped
    to the image, resized to side x side: (uint8 (N, C, side, side), int64 categories (N,))."""
    crops, categories = [], []
    for record in dataset:
        image = detection_utils.read_image(record["file_name"], format=image_format)
        height, width = image.shape[:2]
        for annotation in record.get("annotations", []):
            if annotation.get("iscrowd", 0):
                continue
            x1, y1, x2, y2 = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"],
                                             BoxMode.XYXY_ABS)
            margin = MARGIN * max(x2 - x1, y2 - y1)
            left, top = max(0, math.floor(x1 - margin)), max(0, math.floor(y1 - margin))
            right = min(width, math.ceil(x2 + margin))
            bottom = min(height, math.ceil(y2 + margin))
            if right <= left or bottom <= top:
                continue
            crops.append(cv2.resize(np.ascontiguousarray(image[top:bottom, left:right]),
                                    (side, side), interpolation=cv2.INTER_LINEAR))
            categories.append(annotation["category_id"])
    if not crops:
        raise ValueError("the training set has no non-crowd object to pretrain on")
    return (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(categories, dtype=torch.int64))


class CropClassifier(nn.Module):
    """The config's ResNet (``MODEL.RESNETS``, all stages, nothing frozen), a global average pool
    and a linear classifier over ``MODEL.ROI_HEADS.NUM_CLASSES``; normalises as the detector
    does (``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``)."""

    def __init__(self, cfg):
        super().__init__()
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
        self.resnet = build_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        self.classifier = nn.Linear(self.resnet.output_shape()["res5"].channels,
                                    cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, crops: Tensor) -> Tensor:
        """uint8 (N, C, S, S) crops -> (N, NUM_CLASSES) logits."""
        x = (crops.float() - self.pixel_mean) / self.pixel_std
        return self.classifier(self.resnet(x)["res5"].mean(dim=(2, 3)))


def pretrain(cfg, iterations: int, output: str, *, crop_side: int = 64, batch: int = 64,
             held_out: float = 0.1) -> dict:
    """Train :class:`CropClassifier` on ``cfg``'s training objects for ``iterations`` of
    ``batch`` crops (random horizontal flips; SGD with momentum 0.9, ``PRETRAIN.BASE_LR`` after
    ``PRETRAIN.WARMUP_ITERS`` of linear warm-up, with a cosine decay; ``SOLVER.WEIGHT_DECAY``),
    and write the ResNet's weights to ``output``. Returns what it measured, including the
    accuracy on ``held_out`` of the crops."""
    seed = cfg.SEED if cfg.SEED >= 0 else 0
    dataset = training_dataset_dicts(cfg.DATASETS.TRAIN, description=f"DATASETS.TRAIN "
                                     f"{tuple(cfg.DATASETS.TRAIN)}")
    crops, categories = object_crops(dataset, crop_side, cfg.INPUT.FORMAT)
    order = torch.randperm(len(categories), generator=torch.Generator().manual_seed(seed))
    test, train = order[:int(held_out * len(order))], order[int(held_out * len(order)):]
    torch.manual_seed(seed)
    model = CropClassifier(cfg)
    base_lr = cfg.PRETRAIN.BASE_LR
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9,
                                weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    warmup = max(1, min(cfg.PRETRAIN.WARMUP_ITERS, iterations // 10))
    start = time.perf_counter()
    model.train()
    for iteration in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = (base_lr * min(1.0, (iteration + 1) / warmup)
                           * 0.5 * (1 + math.cos(math.pi * iteration / iterations)))
        chosen = train[torch.randint(len(train), (batch,))]
        x = crops[chosen]
        flip = torch.rand(batch) < 0.5
        x[flip] = x[flip].flip(-1)
        loss = F.cross_entropy(model(x), categories[chosen])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining diverged at iteration {iteration}: loss "
                                     f"{loss.item()}; lower PRETRAIN.BASE_LR")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (iteration + 1) % 50 == 0 or iteration + 1 == iterations:
            logger.info("pretraining iteration %d/%d: loss %.4f", iteration + 1, iterations,
                        loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accuracy = float((model(crops[test]).argmax(1) == categories[test]).float().mean()
                         ) if len(test) else math.nan
    # Batch-norm step counts are not weights: a frozen batch norm has no place for them.
    weights = {key: value.detach().clone() for key, value in model.resnet.state_dict().items()
               if not key.endswith("num_batches_tracked")}
    write_checkpoint(output, {"model": weights, "__author__": "mask_rcnn_ext.pretrain",
                              "matching_heuristics": True})
    return {"iterations": iterations, "seconds": seconds, "objects": len(categories),
            "held_out_accuracy": accuracy, "final_loss": loss.item()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iterations", type=int,
                        help="of 64 crops (default: the config's PRETRAIN.ITERATIONS)")
    parser.add_argument("--output", help="the checkpoint to write (.pth; default: the config's "
                                         "MODEL.WEIGHTS)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoint if it exists (otherwise refused)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger()  # Detectron2's own messages (the data set's loading)
    setup_logger(name=logger.name)
    cfg = load_config(args.config_file, args.opts)
    output = args.output or cfg.MODEL.WEIGHTS
    if not output or "://" in output:
        raise ValueError(f"no file to write: give --output, or a local path in MODEL.WEIGHTS of "
                         f"{args.config_file} (it is {cfg.MODEL.WEIGHTS!r})")
    if os.path.exists(output) and not args.overwrite:  # checked now, not after the training
        parser.error(f"{output} exists (the weights the config starts from?): give --overwrite "
                     "to replace it, or another --output")
    for name, json_file, image_root in cfg.DATASETS.COCO_FORMAT:
        register_coco_format(name, json_file, image_root)
    measured = pretrain(cfg, args.iterations or cfg.PRETRAIN.ITERATIONS, output)
    logger.info("wrote %s: %d iterations in %.0f s; held-out accuracy %.3f", output,
                measured["iterations"], measured["seconds"], measured["held_out_accuracy"])
    return measured


if __name__ == "__main__":
    main()

"""The embedded synthetic data set, registered as ``synthetic_train`` and ``synthetic_val``.

Its files live under ``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``, as
Detectron2's builtin COCO names), written by ``python -m mask_rcnn_ext.data.synthetic``
(:mod:`mask_rcnn_ext.data.synthetic`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = ["register_coco_format", "register_synthetic"]

SPLITS = ("train", "val")


def _load_coco_json(name: str, json_file: str | os.PathLike, image_root: str | os.PathLike
                    ) -> list[dict]:
    """Detectron2's ``load_coco_json``, naming the file when it is not valid JSON and warning
    when it holds no annotations at all."""
    try:
        records = load_coco_json(str(json_file), str(image_root), name)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"data set {name!r}: {json_file} is not valid JSON ({error})") from error
    if not any(record.get("annotations") for record in records):
        logging.getLogger(__name__).warning(
            f"data set {name!r}: {json_file} holds no annotations for its {len(records)} images "
            "(no \"annotations\" list, or an empty one): it can only be predicted on, not "
            "trained or evaluated on")
    return records


def _load_synthetic(name: str, json_file: Path, image_root: Path) -> list[dict]:
    if not json_file.is_file():
        raise FileNotFoundError(
            f"data set {name!r}: {json_file} does not exist. Generate the synthetic set with "
            "`python -m mask_rcnn_ext.data.synthetic` (or `python datasets/prepare_synthetic.py`, "
            "`make demo`), or point "
            "DETECTRON2_DATASETS at the folder that holds synthetic/."
        )
    return _load_coco_json(name, json_file, image_root)


def _register(name: str, loader, json_file, image_root) -> None:
    """(Re-)register ``name`` as a COCO-format set read by ``loader``, for COCOEvaluator."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(image_root),
                                  evaluator_type="coco")


def register_synthetic(root: str | os.PathLike | None = None) -> None:
    """Register ``synthetic_{train,val}`` under ``root`` (default: $DETECTRON2_DATASETS)."""
    base = Path(root if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets"))
    for split in SPLITS:
        name = f"synthetic_{split}"
        json_file = base / "synthetic" / "annotations" / f"instances_{split}.json"
        image_root = base / "synthetic" / split
        _register(name, lambda n=name, j=json_file, i=image_root: _load_synthetic(n, j, i),
                  json_file, image_root)


def register_coco_format(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instance-segmentation set under ``name`` (checked now, loaded when
    first used). Raises, naming the path, if the JSON file or the image folder does not exist."""
    if not Path(json_file).is_file():
        raise FileNotFoundError(f"data set {name!r}: annotation file {json_file} does not exist")
    if not Path(image_root).is_dir():
        raise FileNotFoundError(f"data set {name!r}: image folder {image_root} does not exist")
    _register(name, lambda: _load_coco_json(name, json_file, image_root), json_file, image_root)

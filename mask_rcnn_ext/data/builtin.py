"""The embedded synthetic data sets, registered as ``<set>_train`` and ``<set>_val`` for each set
of :data:`~mask_rcnn_ext.data.synthetic.SETS` (``synthetic``, ``synthetic_small``), and the
registration of COCO-format sets.

A synthetic set's files live under ``$DETECTRON2_DATASETS/<set>`` (default ``datasets/<set>``, as
Detectron2's builtin COCO names; :func:`datasets_root`, read when a set is loaded), written there
by ``python -m mask_rcnn_ext.data.synthetic --set <set>`` and ``datasets/prepare_synthetic.py``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic import CATEGORIES, SETS, datasets_root

__all__ = ["datasets_root", "register_coco_format", "register_synthetic"]

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


def _synthetic_paths(root: Path | None, synthetic_set: str, split: str) -> tuple[Path, Path]:
    """The JSON file and image folder of a set's split under ``root``, default
    :func:`datasets_root`."""
    folder = (root if root is not None else datasets_root()) / synthetic_set
    return folder / "annotations" / f"instances_{split}.json", folder / split


def _load_synthetic(name: str, synthetic_set: str, split: str, root: Path | None) -> list[dict]:
    json_file, image_root = _synthetic_paths(root, synthetic_set, split)
    metadata = MetadataCatalog.get(name)
    if metadata.get("json_file") != str(json_file):  # DETECTRON2_DATASETS changed since
        MetadataCatalog.remove(name)
        _set_synthetic_metadata(name, json_file, image_root)
    if not json_file.is_file():
        also = "; `make demo` writes it too" if synthetic_set == "synthetic_small" else ""
        raise FileNotFoundError(
            f"data set {name!r}: {json_file} does not exist. Generate the synthetic set with "
            f"`python -m mask_rcnn_ext.data.synthetic --set {synthetic_set}` (or `python "
            f"datasets/prepare_synthetic.py --set {synthetic_set}`{also}), or point "
            f"DETECTRON2_DATASETS at the folder that holds {synthetic_set}/."
        )
    return _load_coco_json(name, json_file, image_root)


def _set_synthetic_metadata(name: str, json_file: Path, image_root: Path) -> None:
    # The class names and ids load_coco_json would set, known before loading: Visualizer labels
    # boxes with names, and COCOEvaluator maps classes back, without loading the set first.
    MetadataCatalog.get(name).set(
        json_file=str(json_file), image_root=str(image_root), evaluator_type="coco",
        thing_classes=list(CATEGORIES),
        thing_dataset_id_to_contiguous_id={index + 1: index for index in range(len(CATEGORIES))})


def _register(name: str, loader) -> None:
    """(Re-)register ``name``, with metadata to be set by the caller."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)


def register_synthetic(root: str | os.PathLike | None = None) -> None:
    """Register ``<set>_{train,val}`` of every synthetic set under ``root``; by default under
    :func:`datasets_root`, resolved each time a set is loaded (so ``DETECTRON2_DATASETS`` may be
    set after ``import mask_rcnn_ext``). Their class names are in the metadata from now on."""
    fixed_root = Path(root) if root is not None else None
    for synthetic_set in SETS:
        for split in SPLITS:
            name = f"{synthetic_set}_{split}"
            _register(name, lambda n=name, d=synthetic_set, s=split: _load_synthetic(
                n, d, s, fixed_root))
            _set_synthetic_metadata(name, *_synthetic_paths(fixed_root, synthetic_set, split))


def register_coco_format(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instance-segmentation set under ``name`` (checked now, loaded when
    first used). Raises, naming the path, if the JSON file or the image folder does not exist."""
    if not Path(json_file).is_file():
        raise FileNotFoundError(f"data set {name!r}: annotation file {json_file} does not exist")
    if not Path(image_root).is_dir():
        raise FileNotFoundError(f"data set {name!r}: image folder {image_root} does not exist")
    _register(name, lambda: _load_coco_json(name, json_file, image_root))
    MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(image_root),
                                  evaluator_type="coco")

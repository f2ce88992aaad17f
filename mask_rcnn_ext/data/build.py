"""The training set and loader as :class:`~mask_rcnn_ext.engine.Trainer` builds them, as functions
that YAML and LazyConfig training share (``configs/common/*.py`` call them through ``LazyCall``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts as detectron2_dataset_dicts
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.utils.file_io import PathManager

from .annotations import check_mask_format, check_unique_images, drop_degenerate_annotations
from .mapper import ImageCheckingMapper

__all__ = ["build_checked_train_loader", "check_class_count", "training_dataset_dicts"]


def training_dataset_dicts(names: str | Sequence[str], *, mask_format: str | None = None,
                           filter_empty: bool = True, min_keypoints: int = 0,
                           proposal_files: Sequence[str] | None = None,
                           description: str | None = None) -> list[dict]:
    """Detectron2's ``get_detection_dataset_dicts`` for training, with degenerate annotations
    dropped (counted in the log) before images left without any are filtered out, and a COCO
    file that lists an image twice refused (:func:`check_unique_images`).

    Args:
        names: registered data set names.
        mask_format: "polygon" to refuse RLE masks by name (Detectron2 would fail on one mid-way
            through training); "bitmask", or None without masks, checks nothing.
        filter_empty: drop images without a non-crowd annotation.
        min_keypoints, proposal_files: as for Detectron2's function.
        description: how errors and the log name the set (default: "training set (names)").
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    description = description or f"training set {names}"
    dataset = detectron2_dataset_dicts(names, filter_empty=False, min_keypoints=min_keypoints,
                                       proposal_files=proposal_files)
    for name in names:
        # The loaded records can no longer show an image listed twice (the COCO API merged the
        # entries): the file is read once more for its image list.
        json_file = MetadataCatalog.get(name).get("json_file")
        if json_file:
            with PathManager.open(json_file) as stream:
                check_unique_images(json.load(stream), json_file)
    images = len(dataset)
    dataset = drop_degenerate_annotations(dataset, description)
    if mask_format is not None:
        check_mask_format(dataset, mask_format, description)
    if filter_empty:
        dataset = filter_images_with_only_crowd_annotations(dataset)
    if not dataset:
        files = ", ".join(str(MetadataCatalog.get(name).get("json_file", name)) for name in names)
        raise ValueError(f"{description}: none of its {images} images has a usable annotation "
                         f"left to train on (annotations from {files})")
    return dataset


def build_checked_train_loader(*args, dataset: list[dict], mapper: ImageCheckingMapper,
                               **kwargs):
    """Detectron2's ``build_detection_train_loader`` (same arguments), whose mapper knows how many
    distinct images ``dataset`` holds, so that it raises once none can be read instead of letting
    Detectron2 look for a readable one forever."""
    mapper.images_in_dataset = len({record["file_name"] for record in dataset})
    return build_detection_train_loader(*args, dataset=dataset, mapper=mapper, **kwargs)


def check_class_count(names: Sequence[str], num_classes: int, *, names_key: str,
                      classes_key: str) -> None:
    """Raise, naming the data sets, both numbers and the config keys, unless every data set of
    ``names`` (config key ``names_key``) has ``num_classes`` categories (config key
    ``classes_key``). Detectron2 checks nothing: a category beyond the model's classes is trained
    as background, silently (two beyond fail mid-training), and evaluating a model of other
    classes compares unrelated class ids.

    A set's categories are its metadata's ``thing_classes``, set when the set is loaded (it is
    loaded here if that has not happened yet); a set without them is not checked (logged)."""
    counts = {}
    for name in names:
        metadata = MetadataCatalog.get(name)
        if metadata.get("thing_classes") is None:
            DatasetCatalog.get(name)  # loading a COCO-format set sets its classes
        classes = metadata.get("thing_classes")
        if classes is None:
            logging.getLogger(__name__).warning(
                f"{names_key}: data set {name!r} names no categories (no thing_classes in its "
                f"metadata), so its number of classes cannot be compared with {classes_key}")
            continue
        counts[name] = len(classes)
    wrong = {name: count for name, count in counts.items() if count != num_classes}
    if wrong:
        sources = {name: MetadataCatalog.get(name).get("json_file") for name in wrong}
        sets = "; ".join(f"{name}{f' ({sources[name]})' if sources[name] else ''} has {count}"
                         for name, count in wrong.items())
        fix = (f"set {classes_key} to {next(iter(wrong.values()))}"
               if len(set(wrong.values())) == 1 else "use data sets of one set of categories")
        raise ValueError(
            f"{names_key} {tuple(names)}: {sets} categories, but {classes_key} is "
            f"{num_classes}. A category beyond the model's classes would be trained as "
            f"background, and a model of other classes cannot be evaluated on them: {fix}.")

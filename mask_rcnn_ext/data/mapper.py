"""Detectron2's DatasetMapper, reading images with :func:`mask_rcnn_ext.data.images.read_image`
(high-bit-depth images converted or refused, never clipped) and naming the file it cannot read.

In training, an unreadable or corrupt image is skipped: the mapper returns None, and Detectron2's
``MapDataset`` then maps another image in its place; each skip is logged with the file, the
reason and the number skipped so far, and when every image of the training set has been skipped,
that is an error. In evaluation (and in ``demo.py``) an unreadable image is fatal: skipping it
would change the AP without saying so.
"""

from __future__ import annotations

import copy
import logging

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import check_image_size, transform_proposals

from .images import UnreadableImageError, read_image

__all__ = ["ImageCheckingMapper"]


class ImageCheckingMapper(DatasetMapper):
    """DatasetMapper that skips (training) or names (evaluation) images it cannot read.

    ``images_in_dataset``: the number of distinct images the training set holds; when that many
    have been skipped by one data-loading process, it raises instead of letting Detectron2 look
    for a readable image that does not exist."""

    def __init__(self, *args, images_in_dataset: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.images_in_dataset = images_in_dataset
        self.skipped_images = 0  # in this process (each data-loader worker counts its own)
        self._unreadable_files: set[str] = set()

    def __call__(self, dataset_dict: dict) -> dict | None:
        if "sem_seg_file_name" in dataset_dict:
            raise ValueError(
                f"{dataset_dict['file_name']}: its record has a semantic-segmentation file "
                f"(sem_seg_file_name {dataset_dict['sem_seg_file_name']}); ImageCheckingMapper "
                "maps instance annotations only")
        try:
            image = read_image(dataset_dict["file_name"], self.image_format)
        except UnreadableImageError as error:
            if not self.is_train:
                raise
            self._skip(dataset_dict["file_name"], error)
            return None
        return self._map(copy.deepcopy(dataset_dict), image)

    def _skip(self, file_name: str, error: UnreadableImageError) -> None:
        self.skipped_images += 1
        self._unreadable_files.add(file_name)
        if self.images_in_dataset is not None and (
                len(self._unreadable_files) >= self.images_in_dataset):
            raise UnreadableImageError(
                f"none of the {self.images_in_dataset} training images can be read; the last "
                f"one tried: {error}") from error
        logging.getLogger(__name__).warning(
            f"Skipping a training image: {error}. {self.skipped_images} image(s) skipped so far "
            "by this data-loading process.")

    def _map(self, record: dict, image: np.ndarray) -> dict:
        """What DatasetMapper does with an image once it is read: the size check, the
        augmentations, and the boxes, masks and proposals transformed with them."""
        check_image_size(record, image)
        augmented = T.AugInput(image)
        transforms = self.augmentations(augmented)
        image = augmented.image
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            transform_proposals(record, image.shape[:2], transforms,
                                proposal_topk=self.proposal_topk)
        if not self.is_train:
            record.pop("annotations", None)  # evaluation reads the ground truth itself
        elif "annotations" in record:
            self._transform_annotations(record, transforms, image.shape[:2])
        return record

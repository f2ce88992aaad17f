"""Detectron2's DatasetMapper, naming the image file it cannot read.

In training, an unreadable or corrupt image is skipped: the mapper returns None, and Detectron2's
``MapDataset`` then maps another image in its place; each skip is logged with the file, the
reason and the number skipped so far. In evaluation (and in ``demo.py``) it is fatal: skipping an
image would change the AP without saying so.
"""

from __future__ import annotations

import logging

from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import read_image

__all__ = ["ImageCheckingMapper", "UnreadableImageError"]


class UnreadableImageError(OSError):
    """An image file is missing, unreadable or corrupt."""


def read_image_or_raise(file_name: str, image_format: str | None = None):
    """Detectron2's ``read_image``, raising :class:`UnreadableImageError` naming ``file_name``."""
    try:
        return read_image(file_name, format=image_format)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise UnreadableImageError(f"cannot read image {file_name}: {error}") from error


class ImageCheckingMapper(DatasetMapper):
    """DatasetMapper that skips (training) or names (evaluation) images it cannot read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_images = 0  # in this process (each data-loader worker counts its own)

    def __call__(self, dataset_dict: dict) -> dict | None:
        try:
            return super().__call__(dataset_dict)
        except Exception as error:
            # Reading the image again, only after a failure, tells a bad image from other errors
            # without decoding every image twice.
            try:
                read_image_or_raise(dataset_dict["file_name"], self.image_format)
            except UnreadableImageError as unreadable:
                if not self.is_train:
                    raise unreadable from error
                self.skipped_images += 1
                logging.getLogger(__name__).warning(
                    f"Skipping a training image: {unreadable}. {self.skipped_images} image(s) "
                    "skipped so far by this data-loading process.")
                return None
            raise

"""Reading image files as Detectron2 does, without silently destroying high-bit-depth images.

Detectron2's ``read_image`` converts every image with PIL's ``Image.convert``, which clips the
values of a 16-bit grayscale image (PIL mode ``I;16``) to 0..255: a 16-bit PNG, as medical and
industrial cameras write them, reads as an almost all-white picture, with no message.
:func:`read_image` maps 16-bit values to 8 bits instead (``round(v * 255 / 65535)``, so the 16-bit
copy ``v * 257`` of an 8-bit image reads back exactly; OpenCV's ``imread`` agrees within 1), and
refuses, naming the file and the mode, the images whose value range it cannot know (32-bit
integer and floating-point images). 16-bit colour PNGs are already reduced to 8 bits correctly by
PIL. Everything else is Detectron2's reading: EXIF orientation, then the conversion to
``INPUT.FORMAT``.
"""

from __future__ import annotations

import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps

__all__ = ["UnreadableImageError", "model_image", "read_image"]

_SIXTEEN_BIT_MAX = 65535


class UnreadableImageError(OSError):
    """An image file is missing, unreadable, corrupt, or of a kind that cannot be converted."""


def _to_eight_bits(image: Image.Image, file_format: str | None, file_name: str) -> Image.Image:
    """``image`` with 16-bit grayscale values scaled to 8 bits; other 8-bit-or-less modes as they
    are. Raises :class:`UnreadableImageError` for value ranges that cannot be known."""
    # Older Pillow versions open 16-bit grayscale PNGs as 32-bit mode "I"; a PNG holds at most
    # 16 bits per sample, while a 32-bit TIFF's range is unknown.
    sixteen_bit = image.mode.startswith("I;16") or (image.mode == "I" and file_format == "PNG")
    if sixteen_bit:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > _SIXTEEN_BIT_MAX):
            raise UnreadableImageError(
                f"cannot read image {file_name}: its values {values.min()}..{values.max()} do "
                "not fit in 16 bits")
        eight_bits = (values * 255 + _SIXTEEN_BIT_MAX // 2) // _SIXTEEN_BIT_MAX
        return Image.fromarray(eight_bits.astype(np.uint8), mode="L")
    if image.mode in ("I", "F") or image.mode.startswith(("I;", "F;")):
        kind = "floating-point" if image.mode.startswith("F") else "32-bit integer"
        raise UnreadableImageError(
            f"cannot read image {file_name}: it is a {kind} image (PIL mode {image.mode}), whose "
            "value range is unknown; convert it to an 8- or 16-bit image")
    return image


def read_image(file_name: str, image_format: str | None = None) -> np.ndarray:
    """The image in ``file_name`` as an (H, W, C) array in ``image_format`` ("BGR", "RGB", "L", or
    any PIL mode; None keeps the file's), as Detectron2's ``read_image`` returns it, with 16-bit
    grayscale scaled to 8 bits. Raises :class:`UnreadableImageError` naming the file when it is
    missing, corrupt, or of a mode that cannot be converted."""
    try:
        with PathManager.open(file_name, "rb") as stream:
            image = Image.open(stream)
            file_format = image.format  # the rotated copy below no longer knows it
            image = ImageOps.exif_transpose(image)  # loads the pixels, as it rotates them
            return convert_PIL_to_numpy(_to_eight_bits(image, file_format, file_name),
                                        image_format)
    except UnreadableImageError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise UnreadableImageError(f"cannot read image {file_name}: {error}") from error


def model_image(image, image_format: str, name: str = "the image") -> np.ndarray:
    """``image`` as Detectron2's predictors feed it to the model: an (H, W, 3) uint8 array in
    ``image_format`` ("BGR" or "RGB", the config's INPUT.FORMAT). A grayscale (H, W) or (H, W, 1)
    uint8 array is converted, its channel repeated three times; anything else is a ValueError that
    says what was given (``name``) and what is expected. DefaultPredictor takes any array and
    fails deep inside, or predicts on a float image in 0..1 as on an almost black one."""
    expected = (f"an (H, W, 3) uint8 array in {image_format} order (INPUT.FORMAT), as "
                f"cv2.imread or mask_rcnn_ext.data.images.read_image(path, {image_format!r}) "
                "return it, or an (H, W) uint8 grayscale array")
    if not isinstance(image, np.ndarray):
        given = "None" if image is None else f"a {type(image).__module__}.{type(image).__name__}"
        raise ValueError(f"{name} is {given}; expected {expected}")
    if image.dtype != np.uint8:
        hint = ""
        if np.issubdtype(image.dtype, np.floating) and image.size and np.nanmax(image) <= 1:
            hint = (": its values lie in 0..1; scale them to 0..255 first, "
                    "(image * 255).round().astype(np.uint8)")
        elif image.dtype == np.uint16:
            hint = (": read image files with mask_rcnn_ext.data.images.read_image, which scales "
                    "16-bit images to 8 bits")
        raise ValueError(f"{name} has dtype {image.dtype}{hint}; expected {expected}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        hint = (" (4 channels: drop the alpha channel, image[:, :, :3])"
                if image.ndim == 3 and image.shape[2] == 4 else "")
        raise ValueError(f"{name} has shape {image.shape}{hint}; expected {expected}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty ({image.shape[0]} x {image.shape[1]} pixels); "
                         f"expected {expected}")
    return image

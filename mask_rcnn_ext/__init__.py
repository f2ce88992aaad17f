"""mask_rcnn_ext: swappable, measurable and faster Mask R-CNN parts for Detectron2.

Importing the package registers its components in Detectron2's registries.
"""

try:
    import detectron2.modeling  # noqa: F401 - fail early, with directions, if it is broken
except ImportError as error:
    raise ImportError(
        f"mask_rcnn_ext needs a working Detectron2, and importing it failed: {error}. "
        "Run `make setup` (README, 'Installing'), then `python -m mask_rcnn_ext.check`."
    ) from error

from . import data, layers, modeling  # noqa: F401 - imported for registration
from .config import add_mask_rcnn_ext_config, load_config

__all__ = ["add_mask_rcnn_ext_config", "load_config"]
__version__ = "0.1.0"

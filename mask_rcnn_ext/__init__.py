"""mask_rcnn_ext: swappable, measurable and faster Mask R-CNN parts for Detectron2.

Importing the package registers its components in Detectron2's registries.
"""

import warnings

with warnings.catch_warnings():
    # fvcore and Detectron2 compile functions with torch.jit.script when imported, and PyTorch's
    # deprecation warning for it then opened every command's output, though nothing the user
    # asked for uses TorchScript. Only these imports are silenced; the user's own calls warn.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    try:
        import detectron2.modeling  # noqa: F401 - fail early, with directions, if it is broken
    except ImportError as error:
        raise ImportError(
            f"mask_rcnn_ext needs a working Detectron2, and importing it failed: {error}. "
            "Run `make setup` (docs/installing.md), then `python -m mask_rcnn_ext.check`."
        ) from error

    from . import data, layers, modeling  # noqa: F401 - imported for registration
    from .config import add_mask_rcnn_ext_config, load_config

__all__ = ["add_mask_rcnn_ext_config", "load_config"]
__version__ = "0.1.0"

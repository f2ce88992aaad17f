"""mask_rcnn_ext: swappable, measurable and faster Mask R-CNN parts for Detectron2.

Importing the package registers its components in Detectron2's registries.
"""

__version__ = "0.1.0"

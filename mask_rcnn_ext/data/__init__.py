"""Data sets; importing this module registers the builtin synthetic ones."""

from .builtin import register_coco_format, register_synthetic

register_synthetic()

__all__ = ["register_coco_format", "register_synthetic"]

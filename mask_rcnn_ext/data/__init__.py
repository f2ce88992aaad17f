"""Data sets; importing this module registers the builtin synthetic ones."""

from .builtin import register_synthetic

register_synthetic()

__all__ = ["register_synthetic"]

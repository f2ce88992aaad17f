"""Detectron2 components; importing this module registers them."""

from .poolers import POOLER_REGISTRY, ROIPooler

__all__ = ["POOLER_REGISTRY", "ROIPooler"]

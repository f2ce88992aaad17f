"""RoI feature extractors: RoIAlign (avg/max), precise RoI pooling and RoIWarp.

All share the separable core in :mod:`mask_rcnn_ext.layers.separable`. RoIPool, for the paper's
ablation, is torchvision's (re-exported here).

Export: these ops run eagerly on CPU and CUDA. They cannot be traced, scripted or exported to
ONNX (their work split depends on box values); tracing raises an error that says so.
"""

from torchvision.ops import RoIPool as ROIPool
from torchvision.ops import roi_pool

from .precise_roi_pool import PreciseROIPool, precise_roi_pool
from .roi_align import ROIAlign, roi_align
from .roi_warp import ROIWarp, roi_warp

__all__ = [
    "ROIAlign",
    "roi_align",
    "PreciseROIPool",
    "precise_roi_pool",
    "ROIWarp",
    "roi_warp",
    "ROIPool",
    "roi_pool",
]

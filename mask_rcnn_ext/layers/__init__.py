"""RoI feature extractors: RoIAlign (avg/max), precise RoI pooling, RoIWarp and RoIPool.

Each op has a CPU and a CUDA implementation, chosen in one place (:mod:`.backends`, with the
reasons): the separable core (:mod:`.separable`) on CPU, torchvision's kernel or our Triton kernels
(:mod:`.triton_roi_pool`) on CUDA. The rules they all follow (RoI format and checks, box scaling,
sample positions, interpolation weights) are written once, in :mod:`.rules`. Box coordinates and
interpolation weights are float32 whatever the features' dtype, also under autocast; the output
has the features' dtype.

Export: while traced or scripted, every op runs a formulation that generalises to any boxes and
map size and maps to standard ONNX operators (:mod:`.traceable`; torchvision's ops for average
RoIAlign and RoIPool).
"""

from .backends import Backend, choose_backend
from .precise_roi_pool import PreciseROIPool, precise_roi_pool
from .roi_align import ROIAlign, roi_align
from .roi_pool import ROIPool, roi_pool
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
    "Backend",
    "choose_backend",
]

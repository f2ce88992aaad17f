"""Which implementation computes each RoI pooling op: the one place that decides, and the one
function that calls it (:func:`pool`), and the ops' module form (:class:`RoIPoolingModule`; the ops
in :mod:`.roi_align`, :mod:`.precise_roi_pool`, :mod:`.roi_warp` and :mod:`.roi_pool` only name
their computation and options).

The computation (``roi_align`` avg or max, ``precise_roi_pool``, ``roi_warp``, ``roi_pool``) says
*what* is computed; every implementation computes the same numbers (tested against the same
references). :data:`IMPLEMENTATIONS` lists each computation's implementations; this says *which*
one runs, by device and mode (:func:`choose_backend`):

================  ===========  ============  ======================  ========================
computation       CPU          CUDA          CUDA, deterministic     traced / scripted
================  ===========  ============  ======================  ========================
roi_align avg     separable    torchvision   triton (fixed point)    traceable [3]
roi_align max     separable    triton        triton (fixed point)    traceable
precise_roi_pool  separable    triton [1]    triton (fixed point)    traceable
roi_warp          separable    triton        triton (fixed point)    traceable
roi_pool          torchvision  torchvision   torchvision [2]         traceable [3]
================  ===========  ============  ======================  ========================

Other devices (MPS, XPU, ...) run the separable op, which is plain PyTorch. [1] When the boxes
need a gradient (IoU-Net's box refinement), the separable op runs: the kernel's gradient is with
respect to the features only. [2] Its gradient added by ``index_put_`` (:mod:`.torchvision_ops`):
torchvision's CUDA backward refuses deterministic mode. [3] Which is torchvision's op.

Why:

- CPU, separable (:mod:`.separable`, batched matrix products): faster than torchvision's
  single-threaded kernel, average forward+backward 0.22x (box head), 0.49x (mask head), 0.13x
  (1024 mixed-shape RoIs on one map) and 0.39x (the same while another process competes for the
  cores), on 2 cores (``python -m benchmarks.roi_align``, 2026-11-22, README); max aggregation
  and precise pooling have no other CPU implementation anywhere. Deterministic as it is (no
  atomics), so no other choice is needed.
- CUDA, average: torchvision's fused kernel, the one stock Detectron2 runs, so average RoIAlign
  can never be slower than stock's. Our Triton kernel for it is used only where torchvision's
  falls back to a slow pure-PyTorch path: deterministic mode (its backward uses float atomics).
  Low-precision features are pooled as torchvision's autocast does: upcast to float32, so that
  box coordinates stay float32.
- CUDA, max / precise / warp: our Triton kernels (:mod:`.triton_roi_pool`); the separable op
  would also run, but synchronises with the host several times per call to size its chunks.
  No GPU figures have been measured for them yet (``make bench-gpu``).
- Tracing and scripting: :func:`.traceable.pool`. For average RoIAlign and RoIPool it is
  torchvision's ops, which trace, script and export to ONNX (``RoiAlign``, opset >= 16 for
  ``aligned``; ``MaxRoiPool``); for the others, padded groups of windows whose sizes are tensors
  (the eager ops split their work by box values, which a trace would freeze). TorchScript cannot
  compile this dispatch: scripted, the ops' modules call :func:`.traceable.pool` (one fork, in
  :meth:`RoIPoolingModule.forward`).

:func:`forced` overrides the choice (benchmarks compare implementations with it).
"""

import contextlib
import enum
import functools
import importlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from . import separable, torchvision_ops, traceable
from .rules import check_batch_indices, full_precision, rois_from_boxes, validated_rois

__all__ = ["AUTO", "Backend", "COMPUTATIONS", "IMPLEMENTATIONS", "OPTIONS", "RoIPoolingModule",
           "check_backend", "choose_backend", "forced", "pool", "triton_ops"]


class Backend(str, enum.Enum):
    SEPARABLE = "separable"
    TORCHVISION = "torchvision"
    TRITON = "triton"
    TRACEABLE = "traceable"


def triton_ops() -> ModuleType:
    """:mod:`.triton_roi_pool`, imported on first use (it imports Triton)."""
    return importlib.import_module(f"{__package__}.triton_roi_pool")


def _triton(name: str, **options) -> Callable[..., Tensor]:
    """The Triton implementation ``name``, imported when first called."""

    def implementation(*args, **kwargs) -> Tensor:
        return getattr(triton_ops(), name)(*args, **options, **kwargs)

    return implementation


# The table: each computation's implementations. Each is called as
# ``implementation(input, rois, output_size, spatial_scale, **options)`` with checked (K, 5) RoIs
# (K > 0) and autocast off, and returns (K, C, P, Q) in the features' dtype.
IMPLEMENTATIONS: dict[str, dict[Backend, Callable[..., Tensor]]] = {
    "roi_align_avg": {
        Backend.SEPARABLE: functools.partial(separable.roi_align, mode="avg"),
        Backend.TORCHVISION: functools.partial(torchvision_ops.roi_align, mode="avg"),
        Backend.TRITON: _triton("roi_align", mode="avg"),
        Backend.TRACEABLE: functools.partial(traceable.pool, "roi_align_avg"),
    },
    "roi_align_max": {
        Backend.SEPARABLE: functools.partial(separable.roi_align, mode="max"),
        Backend.TRITON: _triton("roi_align", mode="max"),
        Backend.TRACEABLE: functools.partial(traceable.pool, "roi_align_max"),
    },
    "precise_roi_pool": {
        Backend.SEPARABLE: separable.precise_roi_pool,
        Backend.TRITON: _triton("precise_roi_pool"),
        Backend.TRACEABLE: functools.partial(traceable.pool, "precise_roi_pool"),
    },
    "roi_warp": {
        Backend.SEPARABLE: separable.roi_warp,
        Backend.TRITON: _triton("roi_warp"),
        Backend.TRACEABLE: functools.partial(traceable.pool, "roi_warp"),
    },
    "roi_pool": {
        Backend.TORCHVISION: torchvision_ops.roi_pool,
        Backend.TRACEABLE: functools.partial(traceable.pool, "roi_pool"),
    },
}
COMPUTATIONS = tuple(IMPLEMENTATIONS)
# Each computation's options beyond output size and scale: its implementations' keyword arguments.
OPTIONS = {"roi_align_avg": ("sampling_ratio", "aligned"),
           "roi_align_max": ("sampling_ratio", "aligned"), "precise_roi_pool": ("aligned",),
           "roi_warp": (), "roi_pool": ()}
_DESCRIPTIONS = {"roi_align_avg": "mode='avg' of roi_align", "roi_align_max":
                 "mode='max' of roi_align"}
# Computations whose result is differentiated with respect to the boxes too.
_BOX_GRADIENTS = ("precise_roi_pool",)
_forced: Backend | None = None
# A model's request (MODEL.ROI_POOLER_BACKEND, a pooler's ``backend``): the table's choice.
AUTO = "auto"
# Backends that run on CUDA devices only.
_CUDA_ONLY = (Backend.TRITON,)


def check_backend(computation: str, backend: str, device: str | torch.device | None = None, *,
                  key: str = "backend") -> None:
    """Raise, naming ``key``, ``backend`` and the choices, unless ``backend`` ("auto" or a
    :class:`Backend` value) implements ``computation`` and, when ``device`` is given, runs there.
    """
    if backend == AUTO:
        return
    available = [AUTO, *(b.value for b in IMPLEMENTATIONS[computation]
                         if device is None or torch.device(device).type == "cuda"
                         or b not in _CUDA_ONLY)]
    choices = f"choices for {_DESCRIPTIONS.get(computation, computation)}" + (
        f" on {device}" if device is not None else "") + f": {', '.join(available)}"
    if backend not in {b.value for b in Backend}:
        raise ValueError(f"{key} is {backend!r}, which is no RoI pooling implementation; {choices}")
    if Backend(backend) not in IMPLEMENTATIONS[computation]:
        raise ValueError(f"{key} is {backend!r}, which has no "
                         f"{_DESCRIPTIONS.get(computation, computation)}; {choices}")
    if backend not in available:
        raise ValueError(f"{key} is {backend!r}, which runs on CUDA only, not on {device}; "
                         f"{choices}")


def choose_backend(computation: str, features: Tensor, *, boxes_need_grad: bool = False,
                   requested: str = AUTO) -> Backend:
    """The implementation of ``computation`` (one of :data:`COMPUTATIONS`) for ``features``:
    :func:`forced`'s, else ``requested`` unless it is "auto", else by device and mode."""
    if computation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown RoI pooling computation {computation!r}; one of {COMPUTATIONS}")
    if torch.jit.is_tracing():
        return Backend.TRACEABLE
    if _forced is not None:
        return _forced
    if requested != AUTO:
        check_backend(computation, requested, features.device)
        return Backend(requested)
    if computation == "roi_pool":
        return Backend.TORCHVISION
    if features.device.type != "cuda":
        return Backend.SEPARABLE
    if computation == "roi_align_avg" and not torch.are_deterministic_algorithms_enabled():
        return Backend.TORCHVISION
    if boxes_need_grad:
        return Backend.SEPARABLE
    return Backend.TRITON


def pool(computation: str, input: Tensor, boxes: Tensor | list[Tensor],
         output_size: tuple[int, int], spatial_scale: float, *, backend: str = AUTO,
         **options) -> Tensor:
    """``computation`` (one of :data:`COMPUTATIONS`) of ``input`` (N, C, H, W) over ``boxes``
    ((K, 5) rows (batch_index, x1, y1, x2, y2), or a list of N Tensor[L, 4], in image pixels),
    by the implementation :func:`choose_backend` picks (``backend``, if not "auto") ->
    (K, C, P, Q).

    Eagerly, the boxes are checked first (:func:`.rules.validated_rois`, batch indices), and a box
    with a NaN or Inf coordinate pools to zeros with zero gradients, on every backend
    (torchvision's kernels read out of bounds or crash on them; a NaN box is what a diverged box
    regression gives, and it must not turn the other RoIs' values into NaN). A trace records none
    of this: an exported graph has no data-dependent checks."""
    if torch.jit.is_tracing():
        return traceable.pool(computation, input, rois_from_boxes(boxes, input), output_size,
                              spatial_scale, **options)
    rois = validated_rois(boxes, input)
    if computation not in _BOX_GRADIENTS:
        rois = rois.detach()
    if input.shape[1] == 0 or rois.shape[0] == 0:
        return input.new_zeros((rois.shape[0], input.shape[1], *output_size))
    check_batch_indices(rois, input.shape[0])
    chosen = choose_backend(computation, input, boxes_need_grad=rois.requires_grad,
                            requested=backend)
    implementation = IMPLEMENTATIONS[computation].get(chosen)
    if implementation is None:
        available = ", ".join(b.value for b in IMPLEMENTATIONS[computation])
        raise ValueError(f"RoI pooling: {chosen.value} has no "
                         f"{_DESCRIPTIONS.get(computation, computation)} (it has: {available})")
    finite = torch.isfinite(rois[:, 1:]).all(dim=1)
    with full_precision(input):
        if rois.device.type != "cuda" and bool(finite.all()):  # known without a host sync
            return implementation(input, rois, output_size, spatial_scale, **options)
        pooled = implementation(input, torch.where(finite[:, None], rois, 0.0), output_size,
                                spatial_scale, **options)
    return torch.where(finite[:, None, None, None], pooled, 0.0)


@contextlib.contextmanager
def forced(backend: Backend | str) -> Iterator[None]:
    """Within the block, every RoI op runs ``backend`` (if it cannot, it raises)."""
    global _forced
    previous, _forced = _forced, Backend(backend)
    try:
        yield
    finally:
        _forced = previous


class RoIPoolingModule(nn.Module):
    """An RoI op as a module: ``forward(input, boxes)`` is :func:`pool` of ``computation`` with the
    module's options (:data:`OPTIONS`) and ``backend``. Scripted, it is :func:`.traceable.pool`:
    TorchScript cannot compile the dispatch.

    Args:
        computation: one of :data:`COMPUTATIONS`.
        output_size: (P, Q), or one int for both.
        spatial_scale: feature-map pixels per image pixel.
        sampling_ratio, aligned: options of the computations that have them (:data:`OPTIONS`);
            the others ignore them.
    """

    computation: str
    # Which implementation runs (see check_backend); "auto": the table's choice.
    backend: str = AUTO

    def __init__(self, computation: str, output_size: Union[int, tuple[int, int]],  # noqa: UP007
                 spatial_scale: float, sampling_ratio: int = 0, aligned: bool = False):
        super().__init__()
        self.computation = computation
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, input: Tensor,
                boxes: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007 (TorchScript)
        if torch.jit.is_scripting():
            return traceable.pool(self.computation, input, rois_from_boxes(boxes, input),
                                  self.output_size, self.spatial_scale, self.sampling_ratio,
                                  self.aligned)
        return self.pooled(input, boxes)

    @torch.jit.unused
    def pooled(self, input: Tensor,
               boxes: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007 (TorchScript)
        """The eager (and traced) op."""
        return pool(self.computation, input, boxes, self.output_size, self.spatial_scale,
                    backend=self.backend, **self.options())

    @torch.jit.unused
    def options(self) -> dict:
        return {name: getattr(self, name) for name in OPTIONS[self.computation]}

    def extra_repr(self) -> str:
        options = {**self.options(), **({"backend": self.backend} if self.backend != AUTO
                                        else {})}
        listed = "".join(f", {key}={value!r}" for key, value in options.items())
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}{listed}"

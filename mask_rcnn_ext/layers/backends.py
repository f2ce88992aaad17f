"""Which implementation computes each RoI pooling op: the one place that decides.

The op's name (``roi_align`` avg or max, ``precise_roi_pool``, ``roi_warp``) says *what* is
computed; every implementation computes the same numbers (tested against the same references).
This table says *which* one runs, by device and mode:

================  ===========  ============  ====================  ==========================
computation       CPU          CUDA          CUDA, deterministic   traced / scripted (export)
================  ===========  ============  ====================  ==========================
roi_align avg     separable    torchvision   triton (fixed point)  torchvision
roi_align max     separable    triton        triton (fixed point)  traceable
precise_roi_pool  separable    triton [1]    triton (fixed point)  traceable
roi_warp          separable    triton        triton (fixed point)  traceable
================  ===========  ============  ====================  ==========================

Other devices (MPS, XPU, ...) run the separable op, which is plain PyTorch. [1] When the boxes
need a gradient (IoU-Net's box refinement), the separable op runs: the kernel's gradient is with
respect to the features only.

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
- Tracing and scripting: torchvision's op traces, scripts and exports to ONNX (``RoiAlign``,
  opset >= 16 for ``aligned``). The others run :mod:`.traceable`, one padded batch of windows
  whose sizes are tensors (the eager ops split their work by box values, which a trace would
  freeze). TorchScript cannot compile this dispatch, so the ops' modules pick that formulation
  themselves when scripted (``torch.jit.is_scripting()``); RoIPool is torchvision's everywhere
  (deterministic on CUDA: its gradient added by ``index_put_``, see :mod:`.roi_pool`).

:func:`forced` overrides the choice (benchmarks compare implementations with it).
"""

from __future__ import annotations

import contextlib
import enum
import importlib
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["Backend", "COMPUTATIONS", "choose_backend", "forced", "triton_ops"]


class Backend(str, enum.Enum):
    SEPARABLE = "separable"
    TORCHVISION = "torchvision"
    TRITON = "triton"
    TRACEABLE = "traceable"


COMPUTATIONS = ("roi_align_avg", "roi_align_max", "precise_roi_pool", "roi_warp")
_TRACED = {"roi_align_avg": Backend.TORCHVISION, "roi_align_max": Backend.TRACEABLE,
           "precise_roi_pool": Backend.TRACEABLE, "roi_warp": Backend.TRACEABLE}
_forced: Backend | None = None


def triton_ops() -> ModuleType:
    """:mod:`.triton_roi_pool`, imported on first use (it imports Triton)."""
    return importlib.import_module(f"{__package__}.triton_roi_pool")


def choose_backend(computation: str, features: Tensor, *, boxes_need_grad: bool = False
                   ) -> Backend:
    """The implementation of ``computation`` (one of :data:`COMPUTATIONS`) for ``features``."""
    if computation not in COMPUTATIONS:
        raise ValueError(f"unknown RoI pooling computation {computation!r}; one of {COMPUTATIONS}")
    if torch.jit.is_tracing():
        return _TRACED[computation]
    if _forced is not None:
        return _forced
    if features.device.type != "cuda":
        return Backend.SEPARABLE
    if computation == "roi_align_avg" and not torch.are_deterministic_algorithms_enabled():
        return Backend.TORCHVISION
    if boxes_need_grad:
        return Backend.SEPARABLE
    return Backend.TRITON


@contextlib.contextmanager
def forced(backend: Backend | str) -> Iterator[None]:
    """Within the block, every RoI op runs ``backend`` (if it cannot, it raises)."""
    global _forced
    previous, _forced = _forced, Backend(backend)
    try:
        yield
    finally:
        _forced = previous

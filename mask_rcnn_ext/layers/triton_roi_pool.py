"""GPU kernels (Triton) for RoIAlign (average and max), RoIWarp and precise RoI pooling.

They compute exactly what the CPU ops in this package compute (same conventions, see
:mod:`.roi_align`, :mod:`.roi_warp`, :mod:`.precise_roi_pool`), one program per RoI and block of
(channel, bin) outputs, like torchvision's and mmcv's CUDA kernels:

- RoIAlign and RoIWarp evaluate each bin's bilinear samples directly (average or maximum).
  RoIWarp is RoIAlign with one sample per bin on the quantised crop, clamped onto it.
- Precise pooling sums, per bin, every pixel it touches times the closed-form integral of that
  pixel's interpolation kernel over the bin (no samples).

Precision: box coordinates, sample positions and interpolation weights are float32 (float64 for
float64 features), whatever the features' dtype; float16/bfloat16 features are read as they are
and accumulated in float32, and the output has the features' dtype (as torchvision's ops under
autocast). Gradients flow to the features only.

Backward: each sample's gradient is added into the feature gradient with atomic adds, as
torchvision's CUDA kernel does, so the order of additions, and the last bits of the result, vary
from run to run. With ``torch.use_deterministic_algorithms(True)`` the contributions are instead
added as 64-bit integers in fixed point (each rounded once, before the sum): integer addition is
associative, so the result is bit-identical in every run, whatever the order. The scale is a power
of two chosen from the sum of |grad_output| (which bounds every partial sum, because each output's
weights add up to at most 1), so no sum overflows; a float32 contribution is represented exactly
unless it is below 2^-62 of that sum. The cost: a float64 multiply per contribution, 64-bit
instead of 32-bit atomics, and an int64 buffer the size of the features, converted to the
gradient a block at a time (float64 temporaries of 32 MiB at most).

This module imports Triton; :mod:`.backends` imports it only when a CUDA tensor needs it. Under
``TRITON_INTERPRET=1`` (set before import) the kernels run on CPU tensors, which is how CI tests
them.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .rules import compute_dtype, quantised_crops, samples_per_bin, scaled_boxes

__all__ = ["precise_roi_pool", "roi_align", "roi_warp"]

_BLOCK = 256
_AVG, _MAX = 0, 1
# Fixed-point headroom: the sum of |contributions| stays below 2**_FIXED_POINT_BITS < 2**63.
_FIXED_POINT_BITS = 62
# Values converted from fixed point at a time (32 MiB of float64 temporaries).
_CONVERSION_BLOCK = 1 << 22


@triton.jit
def _corners(y, x, height, width):
    """RoIAlign's bilinear sample at (y, x): whether it reads the map, its four neighbours and the
    fractional parts (torchvision's rules: 0 beyond one pixel outside, clamped within it), as
    rules.bilinear_sample_weights."""
    valid = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y = tl.minimum(tl.maximum(y, 0.0), height)
    x = tl.minimum(tl.maximum(x, 0.0), width)
    y_low = tl.floor(y).to(tl.int32)
    x_low = tl.floor(x).to(tl.int32)
    y_edge = y_low >= height - 1
    x_edge = x_low >= width - 1
    y_low = tl.where(y_edge, height - 1, y_low)
    x_low = tl.where(x_edge, width - 1, x_low)
    y_high = tl.where(y_edge, height - 1, y_low + 1)
    x_high = tl.where(x_edge, width - 1, x_low + 1)
    ly = tl.where(y_edge, 0.0, y - y_low)
    lx = tl.where(x_edge, 0.0, x - x_low)
    return valid, y_low, y_high, x_low, x_high, ly, lx


@triton.jit
def _accumulate(grad_ptr, offsets, value, mask, scale, DETERMINISTIC: tl.constexpr):
    """grad[offsets] += value: float atomics, or int64 fixed point when deterministic."""
    # A sum needs no memory ordering: relaxed atomics, as torchvision's atomicAdd (Triton's
    # default, acq_rel, orders every add against all other memory traffic).
    if DETERMINISTIC:
        fixed = tl.floor(value.to(tl.float64) * scale + 0.5).to(tl.int64)
        tl.atomic_add(grad_ptr + offsets, fixed, mask=mask, sem="relaxed")
    else:
        tl.atomic_add(grad_ptr + offsets, value, mask=mask, sem="relaxed")


@triton.jit
def _sample_position(start, bin_size, bins, sample, grid, low, high):
    # rules.bilinear_sample_positions, in its arithmetic order: start + p * bin + (s + .5) *
    # bin / grid.
    position = start + bins * bin_size + (sample + 0.5) * bin_size / grid
    return tl.minimum(tl.maximum(position, low), high)


@triton.jit
def _program_outputs(channels, pooled_h, pooled_w, BLOCK: tl.constexpr):
    """This program's RoI and block of its (channel, bin_y, bin_x) outputs. The RoI index is
    64-bit: an output offset ``roi * per_roi`` passes 2^31 from 42,800 RoIs of 256 x 14 x 14."""
    roi = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    per_roi = channels * pooled_h * pooled_w
    channel = offsets // (pooled_h * pooled_w)
    bin_y = (offsets // pooled_w) % pooled_h
    bin_x = offsets % pooled_w
    return roi, offsets, per_roi, offsets < per_roi, channel, bin_y, bin_x


@triton.jit
def _sample_grid(geometry_ptr, counts_ptr, roi):
    """An RoI's sample grid: start, bin size and clamp range per axis (geometry (K, 8)), its image
    and samples per bin along y and x (counts (K, 3))."""
    return (tl.load(geometry_ptr + roi * 8), tl.load(geometry_ptr + roi * 8 + 1),
            tl.load(geometry_ptr + roi * 8 + 2), tl.load(geometry_ptr + roi * 8 + 3),
            tl.load(geometry_ptr + roi * 8 + 4), tl.load(geometry_ptr + roi * 8 + 5),
            tl.load(geometry_ptr + roi * 8 + 6), tl.load(geometry_ptr + roi * 8 + 7),
            tl.load(counts_ptr + roi * 3), tl.load(counts_ptr + roi * 3 + 1),
            tl.load(counts_ptr + roi * 3 + 2))


@triton.jit
def _bilinear_forward(features_ptr, geometry_ptr, counts_ptr, output_ptr, argmax_ptr,
                      channels, height, width, pooled_h, pooled_w,
                      MODE: tl.constexpr, BLOCK: tl.constexpr):
    roi, offsets, per_roi, in_range, channel, bin_y, bin_x = _program_outputs(
        channels, pooled_h, pooled_w, BLOCK)
    compute = geometry_ptr.dtype.element_ty
    (start_y, start_x, bin_h, bin_w, low_y, high_y, low_x, high_x, image, grid_h,
     grid_w) = _sample_grid(geometry_ptr, counts_ptr, roi)
    plane = features_ptr + (image * channels + channel).to(tl.int64) * height * width
    if MODE == 0:
        result = tl.full((BLOCK,), 0.0, dtype=compute)
    else:
        result = tl.full((BLOCK,), float("-inf"), dtype=compute)
    winner = tl.full((BLOCK,), -1, dtype=tl.int32)
    for sample_y in range(grid_h):
        y = _sample_position(start_y, bin_h, bin_y, sample_y, grid_h, low_y, high_y)
        for sample_x in range(grid_w):
            x = _sample_position(start_x, bin_w, bin_x, sample_x, grid_w, low_x, high_x)
            valid, y_low, y_high, x_low, x_high, ly, lx = _corners(y, x, height, width)
            mask = in_range & valid
            v1 = tl.load(plane + y_low * width + x_low, mask=mask, other=0.0).to(compute)
            v2 = tl.load(plane + y_low * width + x_high, mask=mask, other=0.0).to(compute)
            v3 = tl.load(plane + y_high * width + x_low, mask=mask, other=0.0).to(compute)
            v4 = tl.load(plane + y_high * width + x_high, mask=mask, other=0.0).to(compute)
            hy = 1.0 - ly
            hx = 1.0 - lx
            value = hy * hx * v1 + hy * lx * v2 + ly * hx * v3 + ly * lx * v4
            value = tl.where(valid, value, 0.0)
            if MODE == 0:
                result += value
            else:
                # NaN wins and stays, as torch.max (the CPU op's maximum) propagates it.
                better = (value > result) | ((value != value) & (result == result))
                result = tl.where(better, value, result)
                winner = tl.where(better, sample_y * grid_w + sample_x, winner)
    if MODE == 0:
        result = result / tl.maximum(grid_h * grid_w, 1).to(compute)
    else:
        result = tl.where(winner >= 0, result, 0.0)
        tl.store(argmax_ptr + roi * per_roi + offsets, winner, mask=in_range)
    tl.store(output_ptr + roi * per_roi + offsets,
             result.to(output_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _bilinear_backward(grad_output_ptr, geometry_ptr, counts_ptr, argmax_ptr, grad_ptr, scale_ptr,
                       channels, height, width, pooled_h, pooled_w,
                       MODE: tl.constexpr, DETERMINISTIC: tl.constexpr, BLOCK: tl.constexpr):
    roi, offsets, per_roi, in_range, channel, bin_y, bin_x = _program_outputs(
        channels, pooled_h, pooled_w, BLOCK)
    compute = geometry_ptr.dtype.element_ty
    (start_y, start_x, bin_h, bin_w, low_y, high_y, low_x, high_x, image, grid_h,
     grid_w) = _sample_grid(geometry_ptr, counts_ptr, roi)
    scale = tl.load(scale_ptr)
    plane = (image * channels + channel).to(tl.int64) * height * width
    grad = tl.load(grad_output_ptr + roi * per_roi + offsets, mask=in_range, other=0.0)
    grad = grad.to(compute)
    if MODE == 0:
        grad = grad / tl.maximum(grid_h * grid_w, 1).to(compute)
        samples_y = grid_h
        samples_x = grid_w
    else:
        winner = tl.load(argmax_ptr + roi * per_roi + offsets, mask=in_range, other=-1)
        in_range = in_range & (winner >= 0)
        samples_y = 1
        samples_x = 1
    for step_y in range(samples_y):
        for step_x in range(samples_x):
            if MODE == 0:
                sample_y = step_y
                sample_x = step_x
            else:
                sample_y = tl.maximum(winner, 0) // tl.maximum(grid_w, 1)
                sample_x = tl.maximum(winner, 0) % tl.maximum(grid_w, 1)
            y = _sample_position(start_y, bin_h, bin_y, sample_y, grid_h, low_y, high_y)
            x = _sample_position(start_x, bin_w, bin_x, sample_x, grid_w, low_x, high_x)
            valid, y_low, y_high, x_low, x_high, ly, lx = _corners(y, x, height, width)
            mask = in_range & valid
            hy = 1.0 - ly
            hx = 1.0 - lx
            _accumulate(grad_ptr, plane + y_low * width + x_low, grad * hy * hx, mask, scale,
                        DETERMINISTIC)
            _accumulate(grad_ptr, plane + y_low * width + x_high, grad * hy * lx, mask, scale,
                        DETERMINISTIC)
            _accumulate(grad_ptr, plane + y_high * width + x_low, grad * ly * hx, mask, scale,
                        DETERMINISTIC)
            _accumulate(grad_ptr, plane + y_high * width + x_high, grad * ly * lx, mask, scale,
                        DETERMINISTIC)


@triton.jit
def _hat_integral(t):
    """The antiderivative of max(0, 1 - |s|), from -inf to t: rules.hat_integral."""
    t = tl.minimum(tl.maximum(t, -1.0), 1.0)
    return tl.where(t < 0, (t + 1.0) * (t + 1.0) * 0.5, 1.0 - (1.0 - t) * (1.0 - t) * 0.5)


@triton.jit
def _precise_pool(features_ptr, grad_output_ptr, geometry_ptr, counts_ptr, output_ptr, grad_ptr,
                  scale_ptr, channels, height, width, pooled_h, pooled_w,
                  BACKWARD: tl.constexpr, DETERMINISTIC: tl.constexpr, BLOCK: tl.constexpr):
    """Forward (output = bin means) or backward (grad += grad_output x the same weights)."""
    roi, offsets, per_roi, in_range, channel, bin_y, bin_x = _program_outputs(
        channels, pooled_h, pooled_w, BLOCK)
    compute = geometry_ptr.dtype.element_ty
    start_y = tl.load(geometry_ptr + roi * 4)
    start_x = tl.load(geometry_ptr + roi * 4 + 1)
    bin_h = tl.load(geometry_ptr + roi * 4 + 2)
    bin_w = tl.load(geometry_ptr + roi * 4 + 3)
    image = tl.load(counts_ptr + roi * 3)
    rows = tl.load(counts_ptr + roi * 3 + 1)
    columns = tl.load(counts_ptr + roi * 3 + 2)
    plane = (image * channels + channel).to(tl.int64) * height * width
    top = start_y + bin_y * bin_h
    bottom = top + bin_h
    left = start_x + bin_x * bin_w
    right = left + bin_w
    # A bin of zero or negative length on either axis gives 0, each axis on its own, as
    # traceable.integrated_bin_weights (a box inverted on both axes has a positive "area").
    per_height = tl.where(bin_h > 0, 1.0 / tl.where(bin_h > 0, bin_h, 1.0), 0.0)
    per_width = tl.where(bin_w > 0, 1.0 / tl.where(bin_w > 0, bin_w, 1.0), 0.0)
    per_area = per_height * per_width
    first_row = tl.floor(top).to(tl.int32)
    first_column = tl.floor(left).to(tl.int32)
    if BACKWARD:
        scale = tl.load(scale_ptr)
        grad = tl.load(grad_output_ptr + roi * per_roi + offsets, mask=in_range, other=0.0)
        grad = grad.to(compute) * per_area
    else:
        total = tl.full((BLOCK,), 0.0, dtype=compute)
    for row_step in range(rows):
        row = first_row + row_step
        weight_y = _hat_integral(bottom - row) - _hat_integral(top - row)
        row_ok = in_range & (row >= 0) & (row < height)
        for column_step in range(columns):
            column = first_column + column_step
            weight_x = _hat_integral(right - column) - _hat_integral(left - column)
            mask = row_ok & (column >= 0) & (column < width)
            pixel = plane + row * width + column
            if BACKWARD:
                _accumulate(grad_ptr, pixel, grad * weight_y * weight_x, mask, scale,
                            DETERMINISTIC)
            else:
                value = tl.load(features_ptr + pixel, mask=mask, other=0.0).to(compute)
                total += value * weight_y * weight_x
    if not BACKWARD:
        tl.store(output_ptr + roi * per_roi + offsets,
                 (total * per_area).to(output_ptr.dtype.element_ty), mask=in_range)


def _device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """``device`` made the current CUDA device while active: Triton launches on the current one,
    which need not be the tensors' (a model on cuda:1 while cuda:0 is current would pool the
    wrong memory, or fail)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch(kernel, device: torch.device, num_rois: int, per_roi: int, *args,
            **constants) -> None:
    """``kernel`` on ``device``, one program per RoI and block of its ``per_roi`` outputs."""
    with _device_guard(device):
        kernel[(num_rois, triton.cdiv(per_roi, _BLOCK))](*args, **constants, BLOCK=_BLOCK)


class _GradientBuffer:
    """Where the backward kernels add feature gradients: float (atomic) or int64 fixed point."""

    def __init__(self, grad_output: Tensor, shape: torch.Size, compute: torch.dtype):
        self.compute = compute
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        if self.deterministic:
            bound = grad_output.detach().abs().sum(dtype=torch.float64)
            _, exponent = torch.frexp(bound)  # bound < 2**exponent
            shift = (_FIXED_POINT_BITS - exponent).clamp(max=1000).to(torch.float64)
            self.bound = bound
            self.scale = torch.pow(2.0, shift).reshape(1)
            self.buffer = torch.zeros(shape, dtype=torch.int64, device=grad_output.device)
        else:
            self.scale = torch.ones(1, dtype=torch.float64, device=grad_output.device)
            self.buffer = torch.zeros(shape, dtype=compute, device=grad_output.device)

    def result(self, dtype: torch.dtype) -> Tensor:
        """The gradient in ``dtype``. From fixed point, it is converted a block of
        ``_CONVERSION_BLOCK`` values at a time: temporaries of one block in float64, not float64
        copies of the whole features (6.6 GB for one P2 level of 16 x 256 x 200 x 336)."""
        if not self.deterministic:
            return self.buffer.to(dtype)
        grad = torch.empty(self.buffer.shape, dtype=dtype, device=self.buffer.device)
        fixed, converted = self.buffer.view(-1), grad.view(-1)
        for start in range(0, fixed.numel(), _CONVERSION_BLOCK):
            block = slice(start, start + _CONVERSION_BLOCK)
            converted[block] = fixed[block].to(torch.float64) / self.scale
        # Non-finite gradients have no fixed-point form: they make the whole gradient NaN.
        return grad.masked_fill_(~self.bound.isfinite(), math.nan)


class _BilinearPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, geometry: Tensor, counts: Tensor, pooled: tuple[int, int],
                mode: int) -> Tensor:
        features = features.contiguous()
        _, channels, height, width = features.shape
        output = features.new_empty((geometry.shape[0], channels, *pooled))
        argmax = (torch.empty(output.shape, dtype=torch.int32, device=features.device)
                  if mode == _MAX else output)
        if output.numel():
            _launch(_bilinear_forward, features.device, geometry.shape[0], output[0].numel(),
                    features, geometry, counts, output, argmax, channels, height, width, *pooled,
                    MODE=mode)
        ctx.save_for_backward(geometry, counts, argmax if mode == _MAX else None)
        ctx.shape, ctx.dtype, ctx.pooled, ctx.mode = features.shape, features.dtype, pooled, mode
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        geometry, counts, argmax = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        _, channels, height, width = ctx.shape
        gradient = _GradientBuffer(grad_output, ctx.shape, geometry.dtype)
        if grad_output.numel():
            _launch(_bilinear_backward, grad_output.device, geometry.shape[0],
                    grad_output[0].numel(), grad_output, geometry, counts,
                    argmax if argmax is not None else grad_output, gradient.buffer,
                    gradient.scale, channels, height, width, *ctx.pooled, MODE=ctx.mode,
                    DETERMINISTIC=gradient.deterministic)
        return gradient.result(ctx.dtype), None, None, None, None


class _PrecisePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, geometry: Tensor, counts: Tensor,
                pooled: tuple[int, int]) -> Tensor:
        features = features.contiguous()
        _, channels, height, width = features.shape
        output = features.new_empty((geometry.shape[0], channels, *pooled))
        if output.numel():
            _launch(_precise_pool, features.device, geometry.shape[0], output[0].numel(),
                    features, output, geometry, counts, output, output, geometry, channels,
                    height, width, *pooled, BACKWARD=False, DETERMINISTIC=False)
        ctx.save_for_backward(geometry, counts)
        ctx.shape, ctx.dtype, ctx.pooled = features.shape, features.dtype, pooled
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        geometry, counts = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        _, channels, height, width = ctx.shape
        gradient = _GradientBuffer(grad_output, ctx.shape, geometry.dtype)
        if grad_output.numel():
            _launch(_precise_pool, grad_output.device, geometry.shape[0], grad_output[0].numel(),
                    grad_output, grad_output, geometry, counts, grad_output, gradient.buffer,
                    gradient.scale, channels, height, width, *ctx.pooled, BACKWARD=True,
                    DETERMINISTIC=gradient.deterministic)
        return gradient.result(ctx.dtype), None, None, None


def _counts(rois: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """(K, 3) int32: image index and two per-RoI loop counts."""
    return torch.stack((rois[:, 0].long(), first.long(), second.long()), 1).to(torch.int32)


def roi_align_triton(features: Tensor, rois: Tensor, output_size: tuple[int, int],
                     start: Tensor, extent: Tensor, sampling_ratio: int, mode: str) -> Tensor:
    """RoIAlign of ``rois`` (K, 5) whose (x, y) ``start`` and ``extent`` (K, 2) are already in
    feature pixels (see :func:`.roi_align.roi_align`)."""
    pooled_h, pooled_w = output_size
    bins = extent / extent.new_tensor([pooled_w, pooled_h])
    grid_y = samples_per_bin(extent[:, 1], pooled_h, sampling_ratio)
    grid_x = samples_per_bin(extent[:, 0], pooled_w, sampling_ratio)
    unbounded = torch.full_like(bins, math.inf)
    geometry = torch.stack((start[:, 1], start[:, 0], bins[:, 1], bins[:, 0],
                            -unbounded[:, 1], unbounded[:, 1], -unbounded[:, 0], unbounded[:, 0]),
                           1)
    counts = _counts(rois, grid_y, grid_x)
    return _BilinearPool.apply(features, geometry.contiguous(), counts, (pooled_h, pooled_w),
                               _MAX if mode == "max" else _AVG)


def roi_warp_triton(features: Tensor, rois: Tensor, output_size: tuple[int, int], start: Tensor,
                    length: Tensor) -> Tensor:
    """RoIWarp of the quantised crops ``start`` .. ``start + length - 1`` ((K, 2) int64, (x, y)):
    one sample per bin at (q + 0.5) * length / Q - 0.5 in the crop, clamped onto it."""
    pooled_h, pooled_w = output_size
    dtype = compute_dtype(features)
    start, length = start.to(dtype), length.to(dtype)
    bins = length / length.new_tensor([pooled_w, pooled_h])
    last = start + length - 1
    geometry = torch.stack((start[:, 1] - 0.5, start[:, 0] - 0.5, bins[:, 1], bins[:, 0],
                            start[:, 1], last[:, 1], start[:, 0], last[:, 0]), 1)
    ones = torch.ones_like(rois[:, 0])
    return _BilinearPool.apply(features, geometry.contiguous(), _counts(rois, ones, ones),
                               (pooled_h, pooled_w), _AVG)


def precise_roi_pool_triton(features: Tensor, rois: Tensor, output_size: tuple[int, int],
                            start: Tensor, extent: Tensor) -> Tensor:
    """Precise RoI pooling with (x, y) ``start`` and ``extent`` (K, 2) in feature pixels."""
    pooled_h, pooled_w = output_size
    bins = extent / extent.new_tensor([pooled_w, pooled_h])
    # A bin [a, a + b] touches pixels floor(a) .. ceil(a + b): at most floor(b) + 3 of them.
    reach = torch.floor(bins.clamp(min=0)).long() + 3
    geometry = torch.stack((start[:, 1], start[:, 0], bins[:, 1], bins[:, 0]), 1)
    return _PrecisePool.apply(features, geometry.detach().contiguous(),
                              _counts(rois, reach[:, 1], reach[:, 0]), (pooled_h, pooled_w))


# The implementations of :mod:`.backends`' table: checked (K, 5) RoIs (K > 0), autocast off.


def roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool, mode: str) -> Tensor:
    start, extent = scaled_boxes(rois, spatial_scale, aligned, legacy_min_size=True)
    return roi_align_triton(input, rois, output_size, start, extent, sampling_ratio, mode)


def precise_roi_pool(input: Tensor, rois: Tensor, output_size: tuple[int, int],
                     spatial_scale: float, aligned: bool) -> Tensor:
    start, extent = scaled_boxes(rois, spatial_scale, aligned, legacy_min_size=False)
    return precise_roi_pool_triton(input, rois, output_size, start, extent)


def roi_warp(input: Tensor, rois: Tensor, output_size: tuple[int, int],
             spatial_scale: float) -> Tensor:
    start_y, length_y, start_x, length_x = quantised_crops(rois, spatial_scale,
                                                           *input.shape[-2:])
    return roi_warp_triton(input, rois, output_size, torch.stack((start_x, start_y), 1),
                           torch.stack((length_x, length_y), 1))

"""The shared core of the separable RoI poolers.

For one RoI ``k`` and one channel, RoIAlign-average, precise RoI pooling and RoIWarp are all

    out[k] = Wy[k] @ F[b_k, y0_k : y0_k + Ly, x0_k : x0_k + Lx] @ Wx[k].T

where ``Wy`` (P x Ly) and ``Wx`` (Q x Lx) hold, per output row/column, the weight of every pixel of
the RoI's window along that axis (the weights of a 2-D bilinear sample are products of a y-weight
and an x-weight). An :class:`AxisWeights` describes one axis for every RoI; :func:`pool_separable`
gathers the windows (channels-last, so each pixel is one contiguous row of C values) and contracts
them with two batched matrix products, which are vectorised and multi-threaded on CPU and GPU
alike. RoIs are processed in chunks of similar window size, so padding and memory stay bounded.
The whole computation is differentiable by autograd, including with respect to the weights.

Precision: the weights' dtype (float32, or float64) is the arithmetic's; float16/bfloat16 features
are read as they are, each chunk's windows converted, and the output and the feature gradient
have the features' dtype. The backward adds every chunk's window gradients in a fixed order
(``index_add_`` on CPU), so it is deterministic.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .rules import (
    bilinear_bin_weights,
    bilinear_samples,
    contract_along_x,
    contract_along_y,
    gather_windows,
    integrated_bin_weights,
    pixel_table,
    quantised_crops,
    resized_crop_weights,
    samples_per_bin,
    scaled_boxes,
)

__all__ = ["AxisWeights", "pool_separable", "precise_roi_pool", "roi_align", "roi_warp",
           "window_pixels"]

# Upper bound on the gathered window values of one chunk (floats): bounds temporary memory.
# Kept well under glibc's largest mmap threshold (32 MB), so that chunk temporaries are reused
# from the heap instead of being fresh pages that fault on first touch (measured: 2x slower).
_CHUNK_VALUES = 1 << 22
# Below this many window pixels per map pixel, windows are read straight from the NCHW map
# instead of converting the map to pixel rows first (measured: the direct gather is cheaper up
# to about one window pixel per map pixel; the conversion is a map-sized copy).
_DIRECT_GATHER_FRACTION = 1.0
# Largest share of padding in a chunk's windows (measured on the benchmark's single-level case of
# mixed aspect ratios: 0.5 was 10% faster than 1, 2 or no limit; the FPN cases moved within noise).
_PADDING = 0.5
# Pixels per block when transposing a gradient back to NCHW on CPU (measured best of 64-1024).
_TRANSPOSE_BLOCK = 256


def window_pixels(start: Tensor, length: int, dtype: torch.dtype) -> Tensor:
    """Coordinates of ``length`` consecutive pixels from each ``start`` (G,) -> (G, length)."""
    return (start[:, None] + torch.arange(length, device=start.device)).to(dtype)


class AxisWeights(ABC):
    """The weights along one axis (y or x) of every RoI, over a window of pixels.

    ``start`` and ``length`` (both (K,) int64) are each RoI's window: pixels
    ``start .. start + length - 1``, all inside the feature map. ``rows`` ((K,) int64, or None
    when every RoI needs the same number) is how many matrix rows each RoI needs; RoIs needing
    similar numbers are chunked together.
    """

    start: Tensor
    length: Tensor
    rows: Tensor | None = None

    @abstractmethod
    def matrix(self, rows: Tensor, length: int) -> Tensor:
        """Weights of RoIs ``rows`` (G,) over windows of ``length`` pixels -> (G, R, length).

        R is the number of output rows (or sample rows). Columns past an RoI's own window are
        padding; :func:`pool_separable` zeroes them.
        """


def _chunks(axis_y: AxisWeights, axis_x: AxisWeights,
            channels: int) -> Iterator[tuple[Tensor, int, int]]:
    """RoI indices grouped by similar window shape: (rows, padded Ly, padded Lx) per group.

    Sorted by the number of output values (matrix rows x columns), then by window height (in
    steps of 2^(1/3)), then by width: windows of equal area but other shapes (tall and wide boxes)
    do not share a group, whose windows are padded to its largest height *and* width. A group
    grows while its padding stays under ``_PADDING`` of its windows and its padded windows and
    outputs stay under the budget.
    """
    window = axis_y.length * axis_x.length
    outputs = torch.ones_like(window)
    for axis in (axis_y, axis_x):
        if axis.rows is not None:
            outputs = outputs * axis.rows
    height_step = torch.floor(torch.log2(axis_y.length.double()) * 3).long()
    widest = int(axis_x.length.max()) + 1
    order = torch.argsort((outputs * (int(height_step.max()) + 1) + height_step) * widest
                          + axis_x.length)
    length_y, length_x = axis_y.length[order].tolist(), axis_x.length[order].tolist()
    size = outputs[order].tolist()
    begin = 0
    while begin < len(order):
        end, max_y, max_x, max_size, area = begin, 1, 1, 1, 0
        while end < len(order):
            grown = max(max_y, length_y[end]), max(max_x, length_x[end]), max(max_size, size[end])
            count, grown_area = end + 1 - begin, area + length_y[end] * length_x[end]
            per_roi = max(grown[0] * grown[1], grown[2]) * channels
            if end > begin and (count * per_roi > _CHUNK_VALUES or
                                count * grown[0] * grown[1] > (1 + _PADDING) * grown_area):
                break
            (max_y, max_x, max_size), area, end = grown, grown_area, end + 1
        yield order[begin:end], max_y, max_x
        begin = end


class _WindowContraction(torch.autograd.Function):
    """All chunks' window contractions in one autograd node.

    Inputs: the (N, C, H, W) features, then per chunk its window pixel index (G, Ly, Lx) into the
    features' pixels and its weights (G, R, Ly) and (G, S, Lx). Outputs per chunk: (G, R, S, C)
    (:func:`.rules.contract_along_x`, then :func:`.rules.contract_along_y`). The backward
    accumulates every chunk's window gradients into one pixel-row buffer with ``index_add_``
    (autograd's own indexing backward would allocate and fill one feature-sized buffer per chunk)
    and returns it in the features' NCHW layout.
    """

    @staticmethod
    def forward(ctx, features: Tensor, *chunks: Tensor) -> tuple[Tensor, ...]:
        window_pixels = sum(index.numel() for index in chunks[0::3])
        # Converting the whole map to pixel rows pays off when the windows cover much of it;
        # otherwise each window value is read straight from the NCHW map.
        if window_pixels > _DIRECT_GATHER_FRACTION * features.numel() // features.shape[1]:
            table = pixel_table(features)
            gather = functools.partial(gather_windows, table)
        else:
            gather = functools.partial(_gather_direct, features)
        outputs = []
        for index, weights_y, weights_x in zip(chunks[0::3], chunks[1::3], chunks[2::3],
                                                strict=True):
            along_x = contract_along_x(gather(index).to(weights_y.dtype), weights_x)
            outputs.append(contract_along_y(along_x, weights_y))
        ctx.save_for_backward(features, *chunks)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        features = ctx.saved_tensors[0]
        with torch.autocast(features.device.type, enabled=False):
            return _WindowContraction._backward(ctx, *grad_outputs)

    @staticmethod
    def _backward(ctx, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        features, *chunks = ctx.saved_tensors
        channels = features.shape[1]
        dtype = chunks[1].dtype
        grad_table = None
        if ctx.needs_input_grad[0]:
            grad_table = features.new_zeros(features.numel() // channels, channels, dtype=dtype)
        table = None
        grad_chunks: list[Tensor | None] = []
        for position, grad_values in enumerate(grad_outputs):
            index, weights_y, weights_x = chunks[3 * position:3 * position + 3]
            need_y, need_x = ctx.needs_input_grad[2 + 3 * position:4 + 3 * position]
            num, length_y = index.shape[:2]
            columns = weights_x.shape[1]
            grad_values = grad_values.to(dtype).reshape(num, weights_y.shape[1], -1)
            # (G, R, S*C) -> (G, Ly, S, C): undo the y contraction. The small transposed weights
            # are made contiguous: CPU batched products are several times slower on strided ones.
            grad_along_x = torch.bmm(weights_y.transpose(1, 2).contiguous(), grad_values).view(
                num, length_y, columns, channels)
            if grad_table is not None:
                # (G, Ly, Lx, C): undo the x contraction, one product per window row.
                grad_windows = torch.matmul(weights_x.transpose(1, 2).contiguous()[:, None],
                                            grad_along_x)
                grad_table.index_add_(0, index.reshape(-1), grad_windows.view(-1, channels))
            grad_y = grad_x = None
            if need_y or need_x:
                table = pixel_table(features) if table is None else table
                windows = gather_windows(table, index).to(dtype)
            if need_y:
                along_x = contract_along_x(windows, weights_x).view(num, length_y, -1)
                grad_y = torch.bmm(grad_values, along_x.transpose(1, 2))
            if need_x:
                grad_x = torch.matmul(grad_along_x, windows.transpose(2, 3)).sum(dim=1)
            grad_chunks += [None, grad_y, grad_x]
        grad_features = None
        if grad_table is not None:
            grad_features = _channels_first(grad_table, features.shape).to(features.dtype)
        return (grad_features, *grad_chunks)


def _channels_first(table: Tensor, shape: torch.Size) -> Tensor:
    """(N*H*W, C) pixel rows -> contiguous (N, C, H, W).

    On CPU, copied in blocks of pixels: one strided copy of a feature-sized map walks memory with
    a large stride and measured 2x slower (126 vs 63 ms for 2 x 256 x 200 x 304).
    """
    num_images, channels, height, width = shape
    rows = table.view(num_images, height * width, channels)
    if table.device.type != "cpu":
        return rows.permute(0, 2, 1).reshape(shape).contiguous()
    output = table.new_empty(num_images, channels, height * width)
    for start in range(0, height * width, _TRANSPOSE_BLOCK):
        block = slice(start, start + _TRANSPOSE_BLOCK)
        output[:, :, block].copy_(rows[:, block].transpose(1, 2))
    return output.view(shape)


def _gather_direct(features: Tensor, index: Tensor) -> Tensor:
    """The (G, Ly, Lx) window pixels (indices into N*H*W) of NCHW ``features`` -> (G, Ly, Lx, C)."""
    num_images, channels, height, width = features.shape
    image, pixel = index // (height * width), index % (height * width)
    return features.view(num_images, channels, height * width)[image, :, pixel]


def pool_separable(
    features: Tensor,
    batch_index: Tensor,
    axis_y: AxisWeights,
    axis_x: AxisWeights,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Contract every RoI's window with its axis weights.

    Args:
        features: (N, C, H, W).
        batch_index: (K,) int64 image of each RoI.
        axis_y, axis_x: the weights along each axis (R rows, S columns).
        reduce: optional ``reduce(values)`` applied to each chunk of G RoIs' contracted values,
            channels-last (G, R, S, C), returning (G, P, Q, C) (e.g. the maximum over each
            bin's samples, with one row and column per sample).

    Returns:
        (K, C, P, Q) with (P, Q) = (R, S) when ``reduce`` is None, in the features' dtype.
    """
    _, channels, height, width = features.shape
    if batch_index.shape[0] == 0:
        raise ValueError("pool_separable needs at least one RoI")
    order, chunk_tensors = [], []
    for rows, length_y, length_x in _chunks(axis_y, axis_x, channels):
        offsets_y = torch.arange(length_y, device=features.device)
        offsets_x = torch.arange(length_x, device=features.device)
        # Pixels past the map only pad short windows: clamp them, their weights are zero.
        pixel_y = (axis_y.start[rows, None] + offsets_y).clamp(max=height - 1)
        pixel_x = (axis_x.start[rows, None] + offsets_x).clamp(max=width - 1)
        index = (batch_index[rows, None, None] * height + pixel_y[:, :, None]) * width + pixel_x[
            :, None, :
        ]  # (G, Ly, Lx)
        weights_y = axis_y.matrix(rows, length_y) * (offsets_y < axis_y.length[rows, None])[:, None]
        weights_x = axis_x.matrix(rows, length_x) * (offsets_x < axis_x.length[rows, None])[:, None]
        chunk_tensors += [index, weights_y, weights_x]
        order.append(rows)
    values = _WindowContraction.apply(features, *chunk_tensors)
    if reduce is not None:
        values = [reduce(chunk_values) for chunk_values in values]
    # Chunk order back to RoI order with one permutation: writing each chunk in place instead
    # would make autograd copy the whole output gradient once per chunk (measured: 60% of a
    # single-level backward with 120 chunks).
    inverse = torch.argsort(torch.cat(order))
    pooled = torch.cat([chunk_values.permute(0, 3, 1, 2) for chunk_values in values])
    pooled = pooled.index_select(0, inverse)
    return pooled.to(features.dtype)


# Each computation on the separable core. Called by :func:`.backends.pool` with checked (K, 5)
# RoIs (K > 0) under autocast off; return (K, C, P, Q) in the features' dtype.


class BilinearSamples(AxisWeights):
    """RoIAlign's regularly spaced bilinear samples along one axis.

    Args:
        roi_start, roi_length: (K,) the RoI along this axis, in feature-map pixels.
        pooled: number of bins.
        sampling_ratio: samples per bin; ``<= 0`` for ceil(roi_length / pooled).
        size: the feature map's extent along this axis.
        per_sample: one matrix row per sample (bins x samples rows, for max pooling) instead of
            one row per bin holding the average of its samples.
    """

    def __init__(self, roi_start: Tensor, roi_length: Tensor, pooled: int, sampling_ratio: int,
                 size: int, per_sample: bool):
        self.grid = samples_per_bin(roi_length, pooled, sampling_ratio).long()
        self.pooled, self.size, self.per_sample = pooled, size, per_sample
        steps = torch.arange(max(int(self.grid.max()), 1) if len(self.grid) else 1,
                             device=roi_start.device)
        self.position, self.valid = bilinear_samples(roi_start, roi_length, pooled, self.grid,
                                                     steps, size)  # (K, P, S)
        # The window spans the valid samples, clamped onto the map.
        on_map = self.position.clamp(0, size - 1)
        low = torch.where(self.valid, on_map, math.inf).amin(dim=(1, 2))
        high = torch.where(self.valid, on_map, -math.inf).amax(dim=(1, 2))
        has_samples = self.valid.any(dim=2).any(dim=1)
        self.start = torch.where(has_samples, low, 0).floor().long()
        self.length = torch.where(has_samples, high.ceil().long() - self.start + 1, 1)
        self.rows = pooled * self.grid.clamp(min=1) if per_sample else None

    def samples_per_bin(self, rows: Tensor) -> int:
        return max(int(self.grid[rows].max()), 1)

    def matrix(self, rows: Tensor, length: int) -> Tensor:
        samples = self.samples_per_bin(rows)
        position = self.position[rows, :, :samples]
        pixels = window_pixels(self.start[rows], length, position.dtype)
        return bilinear_bin_weights(position, self.valid[rows, :, :samples], self.grid[rows],
                                    self.size, pixels, self.per_sample)


class _SampleMaximum(torch.autograd.Function):
    """Each bin's maximum over its Sy x Sx bilinear samples: (G, R, S, C) samples at the
    R = P*Sy sample rows and S = Q*Sx sample columns -> (G, P, Q, C).

    Only the winning samples' positions (uint8, the first of equal maxima in (y, x) order, like
    ``torch.max``) are kept; the backward scatters each bin's gradient to its winning sample in
    the samples' gradient (measured on CPU: 4% faster for the box head's whole pooling than
    broadcast products of one-hot masks, which beat scattering to the winner's interpolation taps
    and ``where`` over one mask of every sample).
    """

    @staticmethod
    def forward(ctx, samples: Tensor, pooled_y: int, pooled_x: int) -> Tensor:
        num, rows, columns, channels = samples.shape
        grid = samples.view(num, pooled_y, rows // pooled_y, pooled_x, columns // pooled_x,
                            channels)
        # amax, then the winners by comparison: max(dim) with indices over these strided dims
        # measured 10x slower on CPU than amax, and the winners are only needed for a backward.
        best_in_row = grid.amax(dim=4)  # (G, P, Sy, Q, C)
        best = best_in_row.amax(dim=2)  # (G, P, Q, C)
        if ctx.needs_input_grad[0]:
            # NaN propagates: without one in the maxima, there is none among the samples.
            with_nan = bool(best.isnan().any())
            winner_y = _first_maximum(best_in_row.unbind(2), best, with_nan)  # (G, P, Q, C)
            # The winning rows' samples only (G, P, Q, Sx, C): a 1 / Sy share of them all.
            winning_rows = grid.gather(2, winner_y.long()[:, :, None, :, None].expand(
                -1, -1, 1, -1, grid.shape[4], -1)).squeeze(2)
            winner_x = _first_maximum(winning_rows.unbind(3), best, with_nan)
            ctx.save_for_backward(winner_y, winner_x)
            ctx.samples = (rows // pooled_y, columns // pooled_x)
        return best

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        winner_y, winner_x = ctx.saved_tensors
        samples_y, samples_x = ctx.samples
        num, pooled_y, pooled_x, channels = grad.shape
        # Each bin's gradient to its winning sample: one scatter per bin row into its samples
        # (Sy, Q, Sx, C), at (winner_y, q, winner_x, c).
        row_length = samples_y * pooled_x * samples_x * channels
        bin_start = (torch.arange(pooled_x, device=grad.device)[:, None] * samples_x * channels
                     + torch.arange(channels, device=grad.device))  # (Q, C)
        position = (bin_start + winner_y.long() * (row_length // samples_y)
                    + winner_x.long() * channels)  # (G, P, Q, C)
        bin_rows = num * pooled_y
        grad_samples = grad.new_zeros(bin_rows, row_length)
        grad_samples.scatter_(1, position.view(bin_rows, -1), grad.reshape(bin_rows, -1))
        return (grad_samples.view(num, pooled_y * samples_y, pooled_x * samples_x, channels),
                None, None)


def _first_maximum(candidates: tuple[Tensor, ...], best: Tensor, with_nan: bool) -> Tensor:
    """The position (uint8) of the first of ``candidates`` that equals ``best``, their
    element-wise maximum, as ``torch.max``'s index; with ``with_nan``, NaN counts as the maximum.

    Counted as the number of leading candidates that are not the maximum: three passes over bytes
    per candidate (max(dim) with indices measured 10x slower than amax over these strided dims,
    and masked_fill_ or where into uint8 5-10x slower than these comparisons, on CPU).
    """
    if len(candidates) == 1:
        return torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
    winner = leading = None
    for candidate in candidates[:-1]:
        passed = candidate != best
        if with_nan:
            passed &= ~candidate.isnan()
        if leading is None:
            leading, winner = passed, passed.to(torch.uint8)
        else:
            leading &= passed
            winner += leading
    return winner


def _bin_maximum(axis_y: BilinearSamples, axis_x: BilinearSamples):
    """``reduce`` for :func:`pool_separable`: the maximum over each bin's samples."""

    def reduce(samples: Tensor) -> Tensor:
        return _SampleMaximum.apply(samples, axis_y.pooled, axis_x.pooled)

    return reduce


def roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool, mode: str) -> Tensor:
    """RoIAlign (average or max, :mod:`.roi_align`) on the separable core."""
    pooled_h, pooled_w = output_size
    start, extent = scaled_boxes(rois, spatial_scale, aligned, legacy_min_size=True)
    height, width = input.shape[-2:]
    per_sample = mode == "max"
    axis_y = BilinearSamples(start[:, 1], extent[:, 1], pooled_h, sampling_ratio, height,
                             per_sample)
    axis_x = BilinearSamples(start[:, 0], extent[:, 0], pooled_w, sampling_ratio, width,
                             per_sample)
    reduce = _bin_maximum(axis_y, axis_x) if per_sample else None
    return pool_separable(input, rois[:, 0].long(), axis_y, axis_x, reduce)


class IntegratedBins(AxisWeights):
    """Per bin, the integral of each pixel's interpolation kernel over the bin, per unit length.

    Args:
        roi_start, roi_length: (K,) the RoI along this axis, in feature-map pixels.
        pooled: number of bins.
        size: the feature map's extent along this axis.
    """

    def __init__(self, roi_start: Tensor, roi_length: Tensor, pooled: int, size: int):
        self.roi_start, self.roi_length, self.pooled = roi_start, roi_length, pooled
        # Pixel i contributes where |y - i| < 1 for some y in the RoI.
        low = roi_start.detach().floor().clamp(0, size - 1)
        high = (roi_start + roi_length).detach().ceil().clamp(0, size - 1)
        self.start = low.long()
        self.length = (high - low).long().clamp(min=0) + 1

    def matrix(self, rows: Tensor, length: int) -> Tensor:
        pixels = window_pixels(self.start[rows], length, self.roi_start.dtype)
        return integrated_bin_weights(self.roi_start[rows], self.roi_length[rows], self.pooled,
                                      pixels)


def precise_roi_pool(input: Tensor, rois: Tensor, output_size: tuple[int, int],
                     spatial_scale: float, aligned: bool) -> Tensor:
    """Precise RoI pooling (:mod:`.precise_roi_pool`) on the separable core; differentiable with
    respect to the boxes too."""
    start, extent = scaled_boxes(rois, spatial_scale, aligned, legacy_min_size=False)
    height, width = input.shape[-2:]
    axis_y = IntegratedBins(start[:, 1], extent[:, 1], output_size[0], height)
    axis_x = IntegratedBins(start[:, 0], extent[:, 0], output_size[1], width)
    return pool_separable(input, rois[:, 0].detach().long(), axis_y, axis_x)


class ResizedCrop(AxisWeights):
    """Bilinear resize of each crop ``start .. start + length - 1`` to ``pooled`` samples."""

    def __init__(self, start: Tensor, length: Tensor, pooled: int, dtype: torch.dtype):
        self.start, self.length, self.pooled, self.dtype = start, length, pooled, dtype

    def matrix(self, rows: Tensor, length: int) -> Tensor:
        offsets = window_pixels(torch.zeros_like(rows), length, self.dtype)
        return resized_crop_weights(self.length[rows], self.pooled, offsets)


def roi_warp(input: Tensor, rois: Tensor, output_size: tuple[int, int],
             spatial_scale: float) -> Tensor:
    """RoIWarp (:mod:`.roi_warp`) on the separable core."""
    start_y, length_y, start_x, length_x = quantised_crops(rois, spatial_scale,
                                                           *input.shape[-2:])
    axis_y = ResizedCrop(start_y, length_y, output_size[0], rois.dtype)
    axis_x = ResizedCrop(start_x, length_x, output_size[1], rois.dtype)
    return pool_separable(input, rois[:, 0].long(), axis_y, axis_x)

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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["AxisWeights", "hat", "pool_separable", "window_pixels"]

# Upper bound on the gathered window values of one chunk (floats): bounds temporary memory.
_CHUNK_VALUES = 1 << 23


def hat(t: Tensor) -> Tensor:
    """The linear-interpolation kernel max(0, 1 - |t|)."""
    return (1 - t.abs()).clamp(min=0)


def window_pixels(start: Tensor, length: int, dtype: torch.dtype) -> Tensor:
    """Coordinates of ``length`` consecutive pixels from each ``start`` (G,) -> (G, length)."""
    return (start[:, None] + torch.arange(length, device=start.device)).to(dtype)


class AxisWeights(ABC):
    """The weights along one axis (y or x) of every RoI, over a window of pixels.

    ``start`` and ``length`` (both (K,) int64) are each RoI's window: pixels
    ``start .. start + length - 1``, all inside the feature map.
    """

    start: Tensor
    length: Tensor

    @abstractmethod
    def matrix(self, rows: Tensor, length: int) -> Tensor:
        """Weights of RoIs ``rows`` (G,) over windows of ``length`` pixels -> (G, R, length).

        R is the number of output rows (or sample rows). Columns past an RoI's own window are
        padding; :func:`pool_separable` zeroes them.
        """


def _chunks(
    lengths_y: Tensor, lengths_x: Tensor, channels: int
) -> Iterator[tuple[Tensor, int, int]]:
    """RoI indices grouped by similar window size: (rows, padded Ly, padded Lx) per group."""
    area = lengths_y * lengths_x
    order = torch.argsort(area)
    ly_sorted = lengths_y[order].tolist()
    lx_sorted = lengths_x[order].tolist()
    begin = 0
    while begin < len(ly_sorted):
        end, max_y, max_x = begin, 1, 1
        while end < len(ly_sorted):
            grown_y, grown_x = max(max_y, ly_sorted[end]), max(max_x, lx_sorted[end])
            if end > begin and (end + 1 - begin) * grown_y * grown_x * channels > _CHUNK_VALUES:
                break
            max_y, max_x, end = grown_y, grown_x, end + 1
        yield order[begin:end], max_y, max_x
        begin = end


class _WindowContraction(torch.autograd.Function):
    """All chunks' window contractions in one autograd node.

    Inputs: the (N*H*W, C) feature table, then per chunk its window pixel index (G, Lx, Ly) and
    its weights (G, R, Ly) and (G, S, Lx). Outputs per chunk: (G, R, S, C). The backward
    accumulates every chunk's window gradients into one table-sized buffer with ``index_add_``
    (autograd's own indexing backward would allocate and fill one such buffer per chunk).
    """

    @staticmethod
    def forward(ctx, table: Tensor, *chunks: Tensor) -> tuple[Tensor, ...]:
        outputs = []
        for index, weights_y, weights_x in zip(chunks[0::3], chunks[1::3], chunks[2::3],
                                                strict=True):
            along_x = _contract_x(table, index, weights_x)
            outputs.append(_contract_y(along_x, weights_y, weights_x.shape[1]))
        ctx.save_for_backward(table, *chunks)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        table, *chunks = ctx.saved_tensors
        channels = table.shape[1]
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[0] else None
        grad_chunks: list[Tensor | None] = []
        for position, grad_values in enumerate(grad_outputs):
            index, weights_y, weights_x = chunks[3 * position:3 * position + 3]
            need_y, need_x = ctx.needs_input_grad[2 + 3 * position:4 + 3 * position]
            num, length_x, length_y = index.shape
            grad_values = grad_values.reshape(num, weights_y.shape[1], -1)  # (G, R, S*C)
            # (G, Ly, S*C) -> (G, S, Ly*C): undo _contract_y's transpose.
            grad_along_x = torch.bmm(weights_y.transpose(1, 2), grad_values)
            grad_along_x = grad_along_x.view(num, length_y, -1, channels).transpose(1, 2)
            grad_along_x = grad_along_x.reshape(num, -1, length_y * channels)
            if grad_table is not None:
                grad_windows = torch.bmm(weights_x.transpose(1, 2), grad_along_x)
                grad_table.index_add_(0, index.reshape(-1), grad_windows.view(-1, channels))
            grad_y = grad_x = None
            if need_y:
                along_x = _contract_x(table, index, weights_x)
                grad_y = torch.bmm(grad_values, along_x.transpose(1, 2))
            if need_x:
                windows = table.index_select(0, index.reshape(-1)).view(num, length_x, -1)
                grad_x = torch.bmm(grad_along_x, windows.transpose(1, 2))
            grad_chunks += [None, grad_y, grad_x]
        return (grad_table, *grad_chunks)


def _contract_x(table: Tensor, index: Tensor, weights_x: Tensor) -> Tensor:
    """Gather windows (G, Lx, Ly, C) and contract x -> (G, Ly, S*C)."""
    num, length_x, length_y = index.shape
    channels = table.shape[1]
    windows = table.index_select(0, index.reshape(-1)).view(num, length_x, length_y * channels)
    along_x = torch.bmm(weights_x, windows)  # (G, S, Ly*C)
    along_x = along_x.view(num, -1, length_y, channels).transpose(1, 2)
    return along_x.reshape(num, length_y, -1)


def _contract_y(along_x: Tensor, weights_y: Tensor, columns: int) -> Tensor:
    """(G, Ly, S*C) contracted along y -> (G, R, S, C)."""
    values = torch.bmm(weights_y, along_x)
    return values.view(values.shape[0], weights_y.shape[1], columns, -1)


def pool_separable(
    features: Tensor,
    batch_index: Tensor,
    axis_y: AxisWeights,
    axis_x: AxisWeights,
    reduce: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Contract every RoI's window with its axis weights.

    Args:
        features: (N, C, H, W).
        batch_index: (K,) int64 image of each RoI.
        axis_y, axis_x: the weights along each axis (R rows, S columns).
        reduce: optional ``reduce(values, rows)``, applied per chunk to the (G, C, R, S) values of
            RoIs ``rows``; it must return (G, C, P, Q) (e.g. a max over each bin's samples).

    Returns:
        (K, C, P, Q) with (P, Q) = (R, S) when ``reduce`` is None.
    """
    num_images, channels, height, width = features.shape
    if batch_index.shape[0] == 0:
        raise ValueError("pool_separable needs at least one RoI")
    # One row of C values per pixel. A no-op for channels_last inputs.
    table = features.permute(0, 2, 3, 1).reshape(num_images * height * width, channels)
    order, chunk_tensors = [], []
    for rows, length_y, length_x in _chunks(axis_y.length, axis_x.length, channels):
        offsets_y = torch.arange(length_y, device=features.device)
        offsets_x = torch.arange(length_x, device=features.device)
        # Pixels past the map only pad short windows: clamp them, their weights are zero.
        pixel_y = (axis_y.start[rows, None] + offsets_y).clamp(max=height - 1)
        pixel_x = (axis_x.start[rows, None] + offsets_x).clamp(max=width - 1)
        # x-major (G, Lx, Ly), so that the x contraction is one batched matrix product.
        index = (batch_index[rows, None, None] * height + pixel_y[:, None, :]) * width + pixel_x[
            :, :, None
        ]
        weights_y = axis_y.matrix(rows, length_y) * (offsets_y < axis_y.length[rows, None])[:, None]
        weights_x = axis_x.matrix(rows, length_x) * (offsets_x < axis_x.length[rows, None])[:, None]
        chunk_tensors += [index, weights_y, weights_x]
        order.append(rows)
    values = _WindowContraction.apply(table, *chunk_tensors)
    pieces = []
    for rows, chunk_values in zip(order, values, strict=True):
        chunk_values = chunk_values.permute(0, 3, 1, 2)  # (G, C, R, S)
        pieces.append(reduce(chunk_values, rows) if reduce is not None else chunk_values)
    pooled = torch.cat(pieces)
    inverse = torch.empty_like(batch_index)
    inverse[torch.cat(order)] = torch.arange(batch_index.shape[0], device=batch_index.device)
    return pooled[inverse].contiguous()

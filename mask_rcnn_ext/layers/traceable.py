"""Every RoI pooling computation as plain tensor operations: what runs while a model is traced
(``torch.jit.trace``, and so ONNX export) or scripted (``torch.jit.script``).

The eager ops split the RoIs into chunks of similar window size, Python decisions on box values
that a trace would freeze. Here every RoI's window is padded to the longest one, whose length is a
tensor, so one trace is right for any boxes, any number of them and any feature-map size:

    out[k] = Wy[k] @ F[b_k, window_k] @ Wx[k].T

with (K, R, L) weight matrices over the padded windows, built by the same rules as the eager ops
(:mod:`.rules`). In ONNX this is Range, Gather, MatMul,
ReduceMax and elementwise operators only. Average RoIAlign and RoIPool use torchvision's ops,
which trace, script and export to ONNX's ``RoiAlign`` / ``MaxRoiPool``.

Memory: the windows of all RoIs at once, K x Ly x Lx x C values (Ly, Lx the longest window
sides), where the eager ops bound theirs by chunking; fine for inference, which is what exported
models run. Written for TorchScript: typing's ``Union`` (TorchScript reads no ``X | Y``
annotations), no Python values computed from tensor data.
"""


import torch
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align
from torchvision.ops import roi_pool as torchvision_roi_pool

from .rules import (
    bilinear_sample_positions,
    bilinear_sample_weights,
    integrated_bin_weights,
    quantised_crop,
    resized_crop_weights,
    samples_per_bin,
    scaled_boxes,
)

__all__ = ["precise_roi_pool", "roi_align", "roi_pool", "roi_warp"]


# The traced formulation.


def _windows(low: Tensor, high: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Windows of pixels covering [low, high] (K,) clamped onto 0 .. size - 1, all padded to the
    longest: (K, L) pixel coordinates (some past the map in padded windows) and (K, L) their
    in-map indices."""
    first = torch.minimum(low, high).clamp(0, size - 1).floor()
    last = torch.maximum(low, high).clamp(0, size - 1).ceil()
    # One extra candidate of length 1, so that the maximum is defined without RoIs.
    longest = torch.cat((last - first + 1, first.new_ones(1))).max().long()
    pixels = first[:, None] + torch.arange(longest, device=low.device, dtype=low.dtype)
    return pixels, pixels.long().clamp(max=size - 1)


def _contract(features: Tensor, batch_index: Tensor, rows: Tensor, weights_y: Tensor,
              columns: Tensor, weights_x: Tensor) -> Tensor:
    """Each RoI's window (rows (K, Ly) x columns (K, Lx) of image ``batch_index``) contracted
    with (K, R, Ly) and (K, S, Lx) weights -> (K, S, R, C), in the weights' dtype."""
    num_rois = rows.shape[0]
    _, channels, height, width = features.shape
    index = (batch_index[:, None, None] * height + rows[:, :, None]) * width + columns[:, None, :]
    table = features.permute(0, 2, 3, 1).reshape(-1, channels)
    windows = table.index_select(0, index.reshape(-1)).to(weights_y.dtype)
    windows = windows.reshape(num_rois, rows.shape[1], columns.shape[1] * channels)
    along_y = torch.bmm(weights_y, windows).reshape(num_rois, weights_y.shape[1],
                                                    columns.shape[1], channels)
    along_y = along_y.transpose(1, 2).reshape(num_rois, columns.shape[1],
                                              weights_y.shape[1] * channels)
    return torch.bmm(weights_x, along_y).reshape(num_rois, weights_x.shape[1],
                                                 weights_y.shape[1], channels)


def _align_axis(roi_start: Tensor, roi_length: Tensor, pooled: int, sampling_ratio: int,
                size: int, per_sample: bool) -> tuple[Tensor, Tensor]:
    """RoIAlign's weights along one axis -> (K, R, L) and the (K, L) window indices. R = P bins
    (averages), or S x P samples, sample-major (``per_sample``, for maxima)."""
    grid = samples_per_bin(roi_length, pooled, sampling_ratio)
    slots = torch.cat((grid, grid.new_ones(1))).max().long()
    steps = torch.arange(slots, device=roi_start.device)
    position = bilinear_sample_positions(roi_start, roi_length, pooled, grid.clamp(min=1), steps)
    valid = (grid[:, None, None] > 0) & (position >= -1) & (position <= size)
    pixels, index = _windows(roi_start, roi_start + roi_length, size)
    weights = bilinear_sample_weights(position, valid, size, pixels)  # (K, P, S, L)
    if per_sample:
        rows = weights.shape[1] * weights.shape[2]
        return weights.transpose(1, 2).reshape(weights.shape[0], rows, weights.shape[3]), index
    real = steps[None, None, :] < grid[:, None, None]
    return (weights * real[..., None]).sum(2) / grid.clamp(min=1)[:, None, None], index


def roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool, mode: str) -> Tensor:
    """:func:`mask_rcnn_ext.layers.roi_align` on (K, 5) ``rois`` -> (K, C, P, Q)."""
    pooled_h, pooled_w = output_size
    if mode == "avg":
        return torchvision_roi_align(input.to(rois.dtype), rois, output_size, spatial_scale,
                                     sampling_ratio, aligned).to(input.dtype)
    start, extent = scaled_boxes(rois, spatial_scale, aligned, True)
    height, width = input.shape[-2], input.shape[-1]
    weights_y, rows = _align_axis(start[:, 1], extent[:, 1], pooled_h, sampling_ratio, height,
                                  True)
    weights_x, columns = _align_axis(start[:, 0], extent[:, 0], pooled_w, sampling_ratio, width,
                                     True)
    samples = _contract(input, rois[:, 0].long(), rows, weights_y, columns, weights_x)
    num_rois, columns, rows, channels = samples.shape
    # (K, Sx * Q, Sy * P, C), sample-major on both axes: the maximum over each bin's samples.
    samples = samples.reshape(num_rois, columns // pooled_w, pooled_w, rows, channels).amax(1)
    best = samples.reshape(num_rois, pooled_w, rows // pooled_h, pooled_h, channels).amax(2)
    return best.permute(0, 3, 2, 1).to(input.dtype)


def precise_roi_pool(input: Tensor, rois: Tensor, output_size: tuple[int, int],
                     spatial_scale: float, aligned: bool) -> Tensor:
    """:func:`mask_rcnn_ext.layers.precise_roi_pool` on (K, 5) ``rois`` -> (K, C, P, Q)."""
    start, extent = scaled_boxes(rois, spatial_scale, aligned, False)
    height, width = input.shape[-2], input.shape[-1]
    pixels_y, rows = _windows(start[:, 1], start[:, 1] + extent[:, 1], height)
    pixels_x, columns = _windows(start[:, 0], start[:, 0] + extent[:, 0], width)
    # The interpolated map is zero past its last pixel: padded pixels there weigh nothing.
    weights_y = (integrated_bin_weights(start[:, 1], extent[:, 1], output_size[0], pixels_y)
                 * (pixels_y < height)[:, None])
    weights_x = (integrated_bin_weights(start[:, 0], extent[:, 0], output_size[1], pixels_x)
                 * (pixels_x < width)[:, None])
    pooled = _contract(input, rois[:, 0].long(), rows, weights_y, columns, weights_x)
    return pooled.permute(0, 3, 2, 1).to(input.dtype)


def _crop_axis(low: Tensor, high: Tensor, pooled: int, size: int) -> tuple[Tensor, Tensor]:
    """RoIWarp's weights along one axis (:func:`quantised_crop`, then the crop resized)
    -> (K, P, L) and the (K, L) window indices."""
    first, last = quantised_crop(low, high, size)
    pixels, index = _windows(first, last, size)
    weights = resized_crop_weights(last - first + 1, pooled, pixels - first[:, None])
    return weights, index


def roi_warp(input: Tensor, rois: Tensor, output_size: tuple[int, int],
             spatial_scale: float) -> Tensor:
    """:func:`mask_rcnn_ext.layers.roi_warp` on (K, 5) ``rois`` -> (K, C, P, Q)."""
    scaled = rois[:, 1:] * spatial_scale
    height, width = input.shape[-2], input.shape[-1]
    weights_y, rows = _crop_axis(scaled[:, 1], scaled[:, 3], output_size[0], height)
    weights_x, columns = _crop_axis(scaled[:, 0], scaled[:, 2], output_size[1], width)
    pooled = _contract(input, rois[:, 0].long(), rows, weights_y, columns, weights_x)
    return pooled.permute(0, 3, 2, 1).to(input.dtype)


def roi_pool(input: Tensor, rois: Tensor, output_size: tuple[int, int],
             spatial_scale: float) -> Tensor:
    """:func:`mask_rcnn_ext.layers.roi_pool` on (K, 5) ``rois`` -> (K, C, P, Q)."""
    return torchvision_roi_pool(input.to(rois.dtype), rois, output_size,
                                spatial_scale).to(input.dtype)

"""Every RoI pooling computation as plain tensor operations: what runs while a model is traced
(``torch.jit.trace``, and so ONNX export) or scripted (``torch.jit.script``).

The eager ops split the RoIs into chunks of similar window size, Python decisions on box values
that a trace would freeze. Here every RoI's window is padded to the longest one, whose length is a
tensor, so one trace is right for any boxes, any number of them and any feature-map size:

    out[k] = Wy[k] @ F[b_k, window_k] @ Wx[k].T

with (K, R, L) weight matrices over the padded windows, built by the same weight formulas as the
eager ops (they are defined here and used there too). In ONNX this is Range, Gather, MatMul,
ReduceMax and elementwise operators only. Average RoIAlign and RoIPool use torchvision's ops,
which trace, script and export to ONNX's ``RoiAlign`` / ``MaxRoiPool``.

Memory: the windows of all RoIs at once, K x Ly x Lx x C values (Ly, Lx the longest window
sides), where the eager ops bound theirs by chunking; fine for inference, which is what exported
models run. Written for TorchScript: typing's ``Union`` (TorchScript reads no ``X | Y``
annotations), no Python values computed from tensor data.
"""

from typing import Union

import torch
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align
from torchvision.ops import roi_pool as torchvision_roi_pool

from .backends import compute_dtype
from .separable import hat

__all__ = [
    "as_rois",
    "bilinear_sample_positions",
    "bilinear_sample_weights",
    "hat_integral",
    "integrated_bin_weights",
    "precise_roi_pool",
    "quantised_crop",
    "resized_crop_weights",
    "roi_align",
    "roi_pool",
    "roi_warp",
    "scaled_boxes",
]


# The weight formulas, shared with the eager ops' axis weights.


def bilinear_sample_positions(roi_start: Tensor, roi_length: Tensor, pooled: int, grid: Tensor,
                              steps: Tensor) -> Tensor:
    """RoIAlign's sample coordinates along one axis -> (K, P, S).

    Args:
        roi_start, roi_length: (K,) the RoI along the axis, in feature pixels.
        pooled: P bins.
        grid: (K,) samples per bin (>= 1 where used).
        steps: (S,) sample slots; an RoI with fewer samples than slots repeats its own
            (slot s holds sample s mod grid), so that every slot holds a real sample.
    """
    bin_size = (roi_length / pooled)[:, None, None]
    bins = torch.arange(pooled, device=roi_start.device, dtype=roi_start.dtype)
    grid = grid[:, None, None].to(roi_start.dtype)
    sample = torch.remainder(steps[None, None, :].to(roi_start.dtype), grid)
    # The reference kernels' arithmetic order: start + p * bin + (s + .5) * bin / grid.
    return (roi_start[:, None, None] + bins[None, :, None] * bin_size
            + (sample + 0.5) * bin_size / grid)


def bilinear_sample_weights(position: Tensor, valid: Tensor, size: int, pixels: Tensor) -> Tensor:
    """Linear-interpolation weight of each pixel for each sample: (K, P, S) positions, (K, L)
    pixel coordinates -> (K, P, S, L). A sample outside [-1, size] (``valid`` False) weighs
    nothing; one within a pixel of the map is clamped onto it, as the reference kernels do."""
    weights = hat(position.clamp(0, size - 1)[..., None] - pixels[:, None, None, :])
    return weights * valid[..., None]


def hat_integral(t: Tensor) -> Tensor:
    """The antiderivative of hat(s) = max(0, 1 - |s|), from -inf to t."""
    t = t.clamp(-1, 1)
    return torch.where(t < 0, (t + 1) ** 2 / 2, 1 - (1 - t) ** 2 / 2)


def integrated_bin_weights(roi_start: Tensor, roi_length: Tensor, pooled: int,
                           pixels: Tensor) -> Tensor:
    """Precise RoI pooling's weights along one axis: per bin, the integral of each pixel's
    interpolation kernel over the bin, per unit length; 0 for bins of zero length.
    (K,) RoIs, (K, L) pixel coordinates -> (K, P, L)."""
    bins = torch.arange(pooled + 1, device=roi_start.device, dtype=roi_start.dtype)
    bin_size = roi_length[:, None] / pooled
    edges = roi_start[:, None] + bins[None] * bin_size  # (K, P + 1)
    cumulative = hat_integral(edges[:, :, None] - pixels[:, None, :])  # (K, P + 1, L)
    integral = cumulative[:, 1:] - cumulative[:, :-1]
    per_length = torch.where(bin_size > 0, bin_size, torch.ones_like(bin_size))
    return torch.where(bin_size[..., None] > 0, integral / per_length[..., None], 0.0)


def resized_crop_weights(crop_length: Tensor, pooled: int, offsets: Tensor) -> Tensor:
    """RoIWarp's bilinear resize (``align_corners=False``) of crops of ``crop_length`` (K,) pixels
    to ``pooled`` samples, over pixel ``offsets`` (K, L) from each crop's start -> (K, P, L)."""
    crop = crop_length[:, None].to(offsets.dtype)
    outputs = torch.arange(pooled, device=offsets.device, dtype=offsets.dtype)
    source = ((outputs[None] + 0.5) * crop / pooled - 0.5).clamp(min=0)
    source = torch.minimum(source, crop - 1)  # (K, P), in crop pixels
    return hat(source[:, :, None] - offsets[:, None, :])


def scaled_boxes(rois: Tensor, spatial_scale: float, aligned: bool,
                 legacy_min_size: bool) -> tuple[Tensor, Tensor]:
    """(x, y) start and extent (K, 2) of each RoI in feature pixels: scaled, shifted by -0.5 if
    ``aligned``; with ``legacy_min_size`` (unaligned RoIAlign) extents are at least 1 pixel."""
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:3] * spatial_scale - offset
    extent = rois[:, 3:5] * spatial_scale - offset - start
    if legacy_min_size and not aligned:
        extent = extent.clamp(min=1.0)
    return start, extent


# The traced formulation.


def as_rois(boxes: Union[Tensor, list[Tensor]], features: Tensor) -> Tensor:  # noqa: UP007
    """(K, 5) RoIs (batch_index, x1, y1, x2, y2) in float32 (float64 for float64 features)."""
    dtype = compute_dtype(features)
    if isinstance(boxes, Tensor):
        return boxes.to(device=features.device, dtype=dtype)
    parts: list[Tensor] = []
    for i, per_image in enumerate(boxes):
        index = torch.full((per_image.shape[0], 1), i, dtype=dtype, device=features.device)
        parts.append(torch.cat((index, per_image.to(device=features.device, dtype=dtype)), 1))
    if len(parts) == 0:
        return torch.zeros((0, 5), dtype=dtype, device=features.device)
    return torch.cat(parts)


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
    if sampling_ratio > 0:
        grid = torch.full_like(roi_start, float(sampling_ratio))
    else:
        grid = torch.ceil(roi_length / pooled)
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


def quantised_crop(low: Tensor, high: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """RoIWarp's quantisation: RoI edges (K,) in feature pixels rounded to the
    nearest pixel (halves up) and clamped onto the map -> first and last pixel of each crop."""
    first = torch.floor(low + 0.5).clamp(0, size - 1)
    return first, torch.maximum(torch.floor(high + 0.5).clamp(0, size - 1), first)


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

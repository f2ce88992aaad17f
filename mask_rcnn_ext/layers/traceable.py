"""Every RoI pooling computation as plain tensor operations: what runs while a model is traced
(``torch.jit.trace``, and so ONNX export) or scripted (``torch.jit.script``), through
:func:`pool`.

The eager ops split the RoIs into chunks of similar window size, Python decisions on box values
that a trace would freeze. Here the RoIs are sorted by box area and split into ``_GROUPS`` groups
of equal count, and each group's windows are padded to the group's longest, whose length is a
tensor, so one trace is right for any boxes, any number of them and any feature-map size (the
groups are a loop, in TorchScript and in ONNX). Each group computes the separable contraction of
:mod:`.rules` with weights built by the same rules as the eager ops. In ONNX this is Loop, TopK,
Slice, Range, Gather, MatMul, ReduceMax and elementwise operators only. Average RoIAlign and
RoIPool use torchvision's ops, which trace, script and export to ONNX's ``RoiAlign`` /
``MaxRoiPool``.

Memory: the windows of one group at a time, at most ceil(K / ``_GROUPS``) x Ly x Lx x C values
(Ly, Lx the group's longest window sides, at most the map's), where padding every RoI to the
longest window of all would hold K of them (about 18 GB for an R50-C4 model's 1000 proposals at
800 x 1216). Written for TorchScript: typing's ``Union``, no Python values computed from tensor
data.
"""

import torch
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align
from torchvision.ops import roi_pool as torchvision_roi_pool

from .rules import (
    bilinear_bin_weights,
    bilinear_samples,
    contract_along_x,
    contract_along_y,
    gather_windows,
    integrated_bin_weights,
    pixel_table,
    quantised_crop,
    resized_crop_weights,
    samples_per_bin,
    scaled_boxes,
)

__all__ = ["pool"]

# Groups of RoIs pooled one after the other: the windows held at once are a sixteenth of
# padding all RoIs together.
_GROUPS = 16


def pool(computation: str, input: Tensor, rois: Tensor, output_size: tuple[int, int],
         spatial_scale: float, sampling_ratio: int = 0, aligned: bool = False,
         groups: int = _GROUPS) -> Tensor:
    """``computation`` (a row of :data:`.backends.IMPLEMENTATIONS`) of (N, C, H, W) ``input`` over
    (K, 5) ``rois`` -> (K, C, P, Q); ``sampling_ratio`` and ``aligned`` where it has them. The
    RoIs are pooled in ``groups`` groups (an argument: TorchScript reads no module constants)."""
    if computation == "roi_align_avg":
        return torchvision_roi_align(input.to(rois.dtype), rois, output_size, spatial_scale,
                                     sampling_ratio, aligned).to(input.dtype)
    if computation == "roi_pool":
        return torchvision_roi_pool(input.to(rois.dtype), rois, output_size,
                                    spatial_scale).to(input.dtype)
    return _in_groups(computation, input, rois, output_size, spatial_scale, sampling_ratio,
                      aligned, groups)


# Traced, this is one call of its compiled form (a loop; ONNX's Loop), not ``groups`` unrolled
# copies: unrolled, the graph of an R18-FPN with ROIAlignMax grew from about 7,000 nodes to
# 100,000, and its ONNX export and first runs took minutes.
@torch.jit.script_if_tracing
def _in_groups(computation: str, input: Tensor, rois: Tensor, output_size: tuple[int, int],
               spatial_scale: float, sampling_ratio: int, aligned: bool, groups: int) -> Tensor:
    # One empty box (area 0, image 0) per group, so that no group is empty: ONNX Runtime cannot
    # reshape empty tensors whose shape it infers (-1), and the ops handle K = 0 alike.
    count = rois.shape[0]
    padded = torch.cat((rois, rois.new_zeros(groups, 5)))
    area = (padded[:, 3] - padded[:, 1]).abs() * (padded[:, 4] - padded[:, 2]).abs()
    order = torch.argsort(area)
    total = order.shape[0]
    pooled: list[Tensor] = []
    for group in range(groups):
        members = padded.index_select(0, order[total * group // groups:
                                               total * (group + 1) // groups])
        if computation == "roi_align_max":
            pooled.append(_roi_align_max(input, members, output_size, spatial_scale,
                                         sampling_ratio, aligned))
        elif computation == "precise_roi_pool":
            pooled.append(_precise_roi_pool(input, members, output_size, spatial_scale, aligned))
        elif computation == "roi_warp":
            pooled.append(_roi_warp(input, members, output_size, spatial_scale))
        else:
            raise ValueError("unknown RoI pooling computation " + computation)
    where = torch.argsort(order)[:count]  # each RoI's place in the sorted order
    return torch.cat(pooled).index_select(0, where).to(input.dtype)


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
    with (K, R, Ly) and (K, S, Lx) weights -> (K, R, S, C), in the weights' dtype."""
    _, _, height, width = features.shape
    index = (batch_index[:, None, None] * height + rows[:, :, None]) * width + columns[:, None, :]
    windows = gather_windows(pixel_table(features), index).to(weights_y.dtype)
    return contract_along_y(contract_along_x(windows, weights_x), weights_y)


def _align_axis(roi_start: Tensor, roi_length: Tensor, pooled: int, sampling_ratio: int,
                size: int) -> tuple[Tensor, Tensor]:
    """RoIAlign's weights along one axis, one row per sample slot (bin-major) -> (K, P * S, L),
    and the (K, L) window indices."""
    grid = samples_per_bin(roi_length, pooled, sampling_ratio)
    slots = torch.cat((grid, grid.new_ones(1))).max().long()
    steps = torch.arange(slots, device=roi_start.device)
    position, valid = bilinear_samples(roi_start, roi_length, pooled, grid, steps, size)
    pixels, index = _windows(roi_start, roi_start + roi_length, size)
    return bilinear_bin_weights(position, valid, grid, size, pixels, True), index


def _roi_align_max(input: Tensor, rois: Tensor, output_size: tuple[int, int],
                   spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    pooled_h, pooled_w = output_size
    start, extent = scaled_boxes(rois, spatial_scale, aligned, True)
    weights_y, rows = _align_axis(start[:, 1], extent[:, 1], pooled_h, sampling_ratio,
                                  input.shape[-2])
    weights_x, columns = _align_axis(start[:, 0], extent[:, 0], pooled_w, sampling_ratio,
                                     input.shape[-1])
    # (K, P * Sy, Q * Sx, C), bin-major on both axes: the maximum over each bin's samples.
    samples = _contract(input, rois[:, 0].long(), rows, weights_y, columns, weights_x)
    num_rois, sample_rows, sample_columns, channels = samples.shape
    samples = samples.view(num_rois, pooled_h, sample_rows // pooled_h, pooled_w,
                           sample_columns // pooled_w, channels)
    # The first of equal maxima in (y, x) order takes the gradient, as in the eager ops.
    best_in_row = samples.max(dim=4).values  # (K, P, Sy, Q, C)
    return best_in_row.max(dim=2).values.permute(0, 3, 1, 2)


def _precise_roi_pool(input: Tensor, rois: Tensor, output_size: tuple[int, int],
                      spatial_scale: float, aligned: bool) -> Tensor:
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
    return pooled.permute(0, 3, 1, 2)


def _crop_axis(low: Tensor, high: Tensor, pooled: int, size: int) -> tuple[Tensor, Tensor]:
    """RoIWarp's weights along one axis (:func:`.rules.quantised_crop`, then the crop resized)
    -> (K, P, L) and the (K, L) window indices."""
    first, last = quantised_crop(low, high, size)
    pixels, index = _windows(first, last, size)
    weights = resized_crop_weights(last - first + 1, pooled, pixels - first[:, None])
    return weights, index


def _roi_warp(input: Tensor, rois: Tensor, output_size: tuple[int, int],
              spatial_scale: float) -> Tensor:
    scaled = rois[:, 1:] * spatial_scale
    weights_y, rows = _crop_axis(scaled[:, 1], scaled[:, 3], output_size[0], input.shape[-2])
    weights_x, columns = _crop_axis(scaled[:, 0], scaled[:, 2], output_size[1], input.shape[-1])
    pooled = _contract(input, rois[:, 0].long(), rows, weights_y, columns, weights_x)
    return pooled.permute(0, 3, 1, 2)

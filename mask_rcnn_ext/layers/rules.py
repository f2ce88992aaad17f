"""The rules of RoI pooling, each written once and followed by every implementation (the eager
separable ops, the traced formulation, the Triton kernels' launch code): the RoI format and its
checks, the dtype of box arithmetic, box scaling and quantisation, sample positions, which samples
count, the interpolation weights and their integrals, and the separable contraction that both the
eager and the traced ops compute:

    out[k] = Wy[k] @ F[b_k, window_k] @ Wx[k].T

with ``Wy`` (P x Ly) and ``Wx`` (Q x Lx) the weights of each output row and column over the RoI's
window of Ly x Lx pixels (a 2-D bilinear weight is the product of a y-weight and an x-weight).

Written for TorchScript too (the traced formulation is scripted): typing's ``Union``, no Python
values computed from tensor data outside the eager-only checks. Where Triton's language forces a
kernel to restate a rule, the kernel's comment names the function here that it mirrors.
"""

import contextlib
from typing import Union

import torch
from torch import Tensor

__all__ = [
    "bilinear_bin_weights",
    "bilinear_sample_positions",
    "bilinear_sample_weights",
    "bilinear_samples",
    "check_batch_indices",
    "compute_dtype",
    "contract_along_x",
    "contract_along_y",
    "full_precision",
    "gather_windows",
    "hat",
    "hat_integral",
    "integrated_bin_weights",
    "pixel_table",
    "quantised_crop",
    "quantised_crop_extent",
    "quantised_crops",
    "resized_crop_weights",
    "rois_from_boxes",
    "samples_per_bin",
    "scaled_boxes",
    "validated_rois",
]


def compute_dtype(features: Tensor) -> torch.dtype:
    """The dtype of box coordinates and interpolation weights: float32, or float64 for float64
    features (never float16/bfloat16, whose rounding would move boxes by whole pixels)."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def full_precision(features: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for the op's own arithmetic (it picks its dtypes itself, see
    :func:`compute_dtype`); the output has the features' dtype, as torchvision's ops under
    autocast."""
    return torch.autocast(features.device.type, enabled=False)


def hat(t: Tensor) -> Tensor:
    """The linear-interpolation kernel max(0, 1 - |t|)."""
    return (1 - t.abs()).clamp(min=0)


def samples_per_bin(roi_length: Tensor, pooled: int, sampling_ratio: int) -> Tensor:
    """RoIAlign's samples per bin along one axis (K,), in ``roi_length``'s dtype:
    ``sampling_ratio``, or, if it is <= 0, ceil(roi_length / pooled) (adaptive, as Detectron2 and
    torchvision)."""
    if sampling_ratio > 0:
        return torch.full_like(roi_length, float(sampling_ratio))
    return torch.ceil(roi_length / pooled)


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


def bilinear_samples(roi_start: Tensor, roi_length: Tensor, pooled: int, grid: Tensor,
                     steps: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """RoIAlign's samples along one axis: their positions (:func:`bilinear_sample_positions`)
    and which of them count, (K, P, S) each. A sample counts when its RoI has samples (``grid``
    (K,) > 0) and it lies within one pixel of the map, in [-1, ``size``]."""
    position = bilinear_sample_positions(roi_start, roi_length, pooled, grid.clamp(min=1), steps)
    valid = (grid[:, None, None] > 0) & (position >= -1) & (position <= size)
    return position, valid


def bilinear_bin_weights(position: Tensor, valid: Tensor, grid: Tensor, size: int,
                         pixels: Tensor, per_sample: bool) -> Tensor:
    """RoIAlign's weights along one axis over (K, L) ``pixels``, from :func:`bilinear_samples`:
    (K, P, L), each bin's mean over its ``grid`` (K,) samples, or with ``per_sample`` one row per
    sample slot, bin-major: (K, P * S, L) (for the maximum; a slot past ``grid`` repeats a sample
    of its bin)."""
    weights = bilinear_sample_weights(position, valid, size, pixels)  # (K, P, S, L)
    num_rois, pooled, slots, length = weights.shape
    if per_sample:
        return weights.reshape(num_rois, pooled * slots, length)
    real = torch.arange(slots, device=grid.device)[None, None, :] < grid[:, None, None]
    return (weights * real[..., None]).sum(2) / grid.clamp(min=1)[:, None, None].to(weights.dtype)


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


def pixel_table(features: Tensor) -> Tensor:
    """(N, C, H, W) -> (N*H*W, C): one row of C values per pixel (a view if channels_last)."""
    num_images, channels, height, width = features.shape
    return features.permute(0, 2, 3, 1).reshape(num_images * height * width, channels)


def gather_windows(table: Tensor, index: Tensor) -> Tensor:
    """The (G, Ly, Lx) window pixels' rows of a :func:`pixel_table` -> (G, Ly, Lx, C)."""
    return table.index_select(0, index.reshape(-1)).view(
        index.shape[0], index.shape[1], index.shape[2], table.shape[1])


def contract_along_x(windows: Tensor, weights_x: Tensor) -> Tensor:
    """(G, Ly, Lx, C) windows contracted along x with (G, S, Lx) weights -> (G, Ly, S, C): one
    (S x Lx) @ (Lx x C) product per window row.

    x first, then y (:func:`contract_along_y`): each product's operands and result are contiguous
    in channels-last windows, where y first needs the y-contracted values transposed for the x
    products (measured on CPU: 10-30% slower forward, and up to 6x slower backward through the
    transpose at max pooling's sample counts).
    """
    return torch.matmul(weights_x[:, None], windows)


def contract_along_y(along_x: Tensor, weights_y: Tensor) -> Tensor:
    """(G, Ly, S, C) values contracted along y with (G, R, Ly) weights -> (G, R, S, C): one
    (R x Ly) @ (Ly x S*C) product per RoI."""
    num, length_y, columns, channels = along_x.shape
    along_y = torch.bmm(weights_y, along_x.reshape(num, length_y, columns * channels))
    return along_y.view(num, weights_y.shape[1], columns, channels)


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


def quantised_crop(low: Tensor, high: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """RoIWarp's quantisation: RoI edges (K,) in feature pixels rounded to the
    nearest pixel (halves up) and clamped onto the map -> first and last pixel of each crop."""
    first = torch.floor(low + 0.5).clamp(0, size - 1)
    return first, torch.maximum(torch.floor(high + 0.5).clamp(0, size - 1), first)


def quantised_crop_extent(low: Tensor, high: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """:func:`quantised_crop` as (K,) int64 first pixels and lengths."""
    first, last = quantised_crop(low, high, size)
    return first.long(), (last - first).long() + 1


def quantised_crops(rois: Tensor, spatial_scale: float, height: int,
                    width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RoIWarp's crops of (K, 5) ``rois`` on an ``height`` x ``width`` map: (K,) int64 first
    pixel and length along y, then along x (:func:`quantised_crop_extent`)."""
    scaled = rois[:, 1:] * spatial_scale
    return (*quantised_crop_extent(scaled[:, 1], scaled[:, 3], height),
            *quantised_crop_extent(scaled[:, 0], scaled[:, 2], width))


def rois_from_boxes(boxes: Union[Tensor, list[Tensor]],  # noqa: UP007
                    features: Tensor) -> Tensor:
    """(K, 5) RoIs (batch_index, x1, y1, x2, y2) in float32 (float64 for float64 features),
    unchecked (see :func:`validated_rois`)."""
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


def validated_rois(boxes: Tensor | list[Tensor], features: Tensor) -> Tensor:
    """Boxes, validated, as a (K, 5) tensor of (batch_index, x1, y1, x2, y2), in float32 (float64
    for float64 features): never in a low-precision feature dtype, which would move boxes by whole
    pixels."""
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if isinstance(boxes, (list, tuple)):
        for i, per_image in enumerate(boxes):
            if per_image.dim() != 2 or per_image.shape[1] != 4:
                raise ValueError(
                    f"boxes[{i}] must be a Tensor[L, 4], got shape {tuple(per_image.shape)}"
                )
    elif not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {shape}")
    return rois_from_boxes(list(boxes) if isinstance(boxes, tuple) else boxes, features)


def check_batch_indices(rois: Tensor, num_images: int) -> None:
    """Raise unless every RoI's batch index is an integer in 0 .. ``num_images`` - 1 (a -1 would
    pool the last image, as negative Python indices do). On CUDA, a device-side assertion, as
    PyTorch's own indexing kernels check their indices: no host synchronisation."""
    index = rois[:, 0]
    valid = (index >= 0) & (index < num_images) & (index == index.floor())
    if rois.device.type != "cuda":
        if not bool(valid.all()):
            row = int((~valid).nonzero()[0])
            raise ValueError(f"boxes row {row}: batch index {index[row].item()} is not the index "
                             f"of one of the {num_images} images (an integer 0 .. "
                             f"{num_images - 1})")
        return
    torch._assert_async(valid.all(), "RoI op: a batch index in boxes[:, 0] is not the index of "
                                     "an image in the features")

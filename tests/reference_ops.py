"""Slow, obviously-correct reference implementations shared by the tests."""

import math


def bilinear_sample(feature, y, x):
    """RoIAlign's bilinear sample of a (H, W) map at one point, written out case by case."""
    height, width = feature.shape
    if y < -1 or y > height or x < -1 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = math.floor(y), math.floor(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return float((1 - ly) * (1 - lx) * feature[y0, x0] + (1 - ly) * lx * feature[y0, x1]
                 + ly * (1 - lx) * feature[y1, x0] + ly * lx * feature[y1, x1])


def pool_bins(features, image_index, output_size, grids, sample_point, aggregate):
    """Reference pooling, one sample at a time (float64).

    For RoI k (on image ``image_index[k]``), every channel and bin (p, q): ``aggregate`` of the
    bilinear samples at ``sample_point(k, p, q, iy, ix)`` (y, x) for iy, ix in ``grids[k]``.
    """
    import torch

    pooled_h, pooled_w = output_size
    output = torch.zeros(len(grids), features.shape[1], pooled_h, pooled_w, dtype=torch.float64)
    for k, (grid_h, grid_w) in enumerate(grids):
        for c in range(features.shape[1]):
            feature = features[image_index[k], c].double()
            for p in range(pooled_h):
                for q in range(pooled_w):
                    values = [bilinear_sample(feature, *sample_point(k, p, q, iy, ix))
                              for iy in range(grid_h) for ix in range(grid_w)]
                    output[k, c, p, q] = aggregate(values)
    return output


def roi_align_max(features, rois, output_size, scale, sampling_ratio, aligned,
                  nan_propagates=False):
    """Max over each bin's bilinear samples; with ``nan_propagates``, NaN if one is NaN (as
    torch.max), else as Python's ``max``, which NaN makes order-dependent."""
    pooled_h, pooled_w = output_size
    offset = 0.5 if aligned else 0.0
    geometry, grids = [], []
    for x1, y1, x2, y2 in rois[:, 1:].tolist():
        x1, y1, x2, y2 = (v * scale - offset for v in (x1, y1, x2, y2))
        width, height = x2 - x1, y2 - y1
        if not aligned:
            width, height = max(width, 1.0), max(height, 1.0)
        geometry.append((x1, y1, width, height))
        grids.append((sampling_ratio if sampling_ratio > 0 else math.ceil(height / pooled_h),
                      sampling_ratio if sampling_ratio > 0 else math.ceil(width / pooled_w)))

    def sample_point(k, p, q, iy, ix):
        x1, y1, width, height = geometry[k]
        grid_h, grid_w = grids[k]
        return (y1 + (p + (iy + 0.5) / grid_h) * height / pooled_h,
                x1 + (q + (ix + 0.5) / grid_w) * width / pooled_w)

    def maximum(values):
        if nan_propagates and any(math.isnan(value) for value in values):
            return math.nan
        return max(values) if values else 0.0

    return pool_bins(features, rois[:, 0].long().tolist(), output_size, grids, sample_point,
                     maximum)


def interpolated(feature, y, x):
    """The bilinearly interpolated (H, W) map at points y (A,), x (B,): zero beyond one pixel
    outside the map, no clamping (precise RoI pooling's continuous feature) -> (A, B)."""
    import torch

    rows = torch.arange(feature.shape[0], dtype=torch.float64)
    cols = torch.arange(feature.shape[1], dtype=torch.float64)
    weight_y = (1 - (y[:, None] - rows).abs()).clamp(min=0)
    weight_x = (1 - (x[:, None] - cols).abs()).clamp(min=0)
    return weight_y @ feature.double() @ weight_x.T


def precise_pool_numerical(features, rois, output_size, scale, aligned, steps=1024):
    """Bin means of the interpolated feature by the midpoint rule on a steps x steps grid."""
    import torch

    pooled_h, pooled_w = output_size
    output = torch.zeros(len(rois), features.shape[1], pooled_h, pooled_w, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    midpoints = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (v * scale - offset for v in (x1, y1, x2, y2))
        bin_h, bin_w = (y2 - y1) / pooled_h, (x2 - x1) / pooled_w
        if bin_h <= 0 or bin_w <= 0:
            continue
        for p in range(pooled_h):
            for q in range(pooled_w):
                ys = y1 + (p + midpoints) * bin_h
                xs = x1 + (q + midpoints) * bin_w
                for c in range(features.shape[1]):
                    output[k, c, p, q] = interpolated(features[int(b), c], ys, xs).mean()
    return output


def roi_warp_by_resize(features, rois, output_size, scale):
    """Quantise (round half up, clamp onto the map), crop, and resize with F.interpolate."""
    import torch
    from torch.nn.functional import interpolate

    height, width = features.shape[-2:]
    pieces = []
    for b, x1, y1, x2, y2 in rois.tolist():
        def quantise(low, high, size):
            start = min(max(math.floor(low * scale + 0.5), 0), size - 1)
            end = min(max(math.floor(high * scale + 0.5), 0), size - 1)
            return start, max(end, start)

        ys, ye = quantise(y1, y2, height)
        xs, xe = quantise(x1, x2, width)
        crop = features[int(b):int(b) + 1, :, ys:ye + 1, xs:xe + 1]
        pieces.append(interpolate(crop, size=output_size, mode="bilinear", align_corners=False))
    return torch.cat(pieces)


def roi_pool_quantised(features, rois, output_size, scale):
    """Fast R-CNN's RoIPool, written out: the box rounded to whole feature pixels (half away from
    zero) and at least 1 x 1; bin p covers rows [floor(p h), ceil((p + 1) h)) of it (h = box
    height / P), clipped to the map; the bin's maximum, or 0 if it is empty."""
    import torch

    def to_pixel(value):
        return int(math.copysign(math.floor(abs(value * scale) + 0.5), value * scale))

    pooled_h, pooled_w = output_size
    height, width = features.shape[-2:]
    output = torch.zeros(len(rois), features.shape[1], pooled_h, pooled_w, dtype=torch.float64)
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (to_pixel(v) for v in (x1, y1, x2, y2))
        bin_h, bin_w = max(y2 - y1 + 1, 1) / pooled_h, max(x2 - x1 + 1, 1) / pooled_w
        for p in range(pooled_h):
            rows = range(max(math.floor(p * bin_h) + y1, 0),
                         min(math.ceil((p + 1) * bin_h) + y1, height))
            for q in range(pooled_w):
                cols = range(max(math.floor(q * bin_w) + x1, 0),
                             min(math.ceil((q + 1) * bin_w) + x1, width))
                if rows and cols:
                    window = features[int(b), :, rows.start:rows.stop, cols.start:cols.stop]
                    output[k, :, p, q] = window.double().amax(dim=(1, 2))
    return output

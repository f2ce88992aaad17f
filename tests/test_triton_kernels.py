"""The Triton (CUDA) kernels, without a GPU, beyond the grid of test_roi_ops.py (which runs them
through the dispatch table against the references): their edge cases, low precision, the
deterministic backward, launch devices, and compilation for real GPU targets. Run by Triton's
interpreter on CPU tensors (conftest's ``triton_kernels``).
"""

import itertools
import math
import re

import pytest
import torch

import reference_ops
from helpers import peak_growth
from mask_rcnn_ext import layers
from mask_rcnn_ext.layers.rules import quantised_crop_extent, scaled_boxes, validated_rois

OUTPUT = (3, 4)


@pytest.fixture
def kernels(triton_kernels):
    return triton_kernels


def _features(dtype=torch.float64, seed=0):
    return torch.randn(2, 3, 12, 15, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# Image pixels at scale 0.5 on a 12 x 15 map: ordinary, partly outside on either side, wholly
# outside, sub-pixel, zero size, zero width, and one covering the map. Small enough that adaptive
# sampling stays cheap in the interpreter.
BOXES = torch.tensor([
    [0, 4.2, 6.6, 17.9, 14.3],
    [1, -5.0, -3.0, 7.0, 9.5],
    [0, 24.0, 18.0, 33.0, 29.0],
    [1, 40.0, 40.0, 50.0, 50.0],
    [0, 10.1, 10.2, 10.6, 10.5],
    [1, 8.0, 8.0, 8.0, 8.0],
    [0, 3.0, 5.0, 3.0, 20.0],
    [1, -1.0, -2.0, 31.0, 25.0],
], dtype=torch.float64)


def _align(kernels, features, boxes, sampling_ratio, aligned, mode):
    rois = validated_rois(boxes, features)
    start, extent = scaled_boxes(rois, 0.5, aligned, legacy_min_size=True)
    return kernels.roi_align_triton(features, rois, OUTPUT, start, extent, sampling_ratio, mode)


def _precise(kernels, features, boxes, aligned):
    rois = validated_rois(boxes, features)
    start, extent = scaled_boxes(rois, 0.5, aligned, legacy_min_size=False)
    return kernels.precise_roi_pool_triton(features, rois, OUTPUT, start, extent)


def _warp(kernels, features, boxes):
    rois = validated_rois(boxes, features)
    height, width = features.shape[-2:]
    scaled = rois[:, 1:] * 0.5
    start_y, length_y = quantised_crop_extent(scaled[:, 1], scaled[:, 3], height)
    start_x, length_x = quantised_crop_extent(scaled[:, 0], scaled[:, 2], width)
    return kernels.roi_warp_triton(features, rois, OUTPUT, torch.stack((start_x, start_y), 1),
                                   torch.stack((length_x, length_y), 1))


def _gradient(output, features, seed=1):
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed),
                       dtype=output.dtype)
    return torch.autograd.grad(output, features, grad)[0]


def test_precise_gives_zero_for_bins_of_negative_length_on_either_axis(kernels):
    """As the CPU op and the numerical integral: a box inverted on one axis or both pools to 0
    (inverted on both, its bins' 'area' is positive, which the kernel once took for a bin)."""
    inverted = torch.tensor([[0, 17.9, 14.3, 4.2, 6.6],     # both axes
                             [1, 17.9, 6.6, 4.2, 14.3],     # x only
                             [0, 4.2, 14.3, 17.9, 6.6]],    # y only
                            dtype=torch.float64)
    features = _features().requires_grad_(True)
    for aligned in (False, True):
        ours = _precise(kernels, features, inverted, aligned)
        expected = reference_ops.precise_pool_numerical(features.detach(), inverted, OUTPUT, 0.5,
                                                        aligned, steps=4)
        assert torch.equal(expected, torch.zeros_like(expected))
        torch.testing.assert_close(ours, expected, atol=0, rtol=0)
        cpu = layers.precise_roi_pool(features, inverted, OUTPUT, 0.5, aligned)
        torch.testing.assert_close(_gradient(ours, features), _gradient(cpu, features),
                                   atol=0, rtol=0)


def test_max_propagates_nan_samples(kernels):
    """A bin with a NaN sample (one whose four neighbours hold a NaN, as torchvision computes a
    sample) is NaN and takes the bin's gradient, as torch.max propagates NaN (``value > best`` is
    false for NaN: the kernel once skipped them, and pooled 0 NaN bins)."""
    features = _features()
    features[0, 1, 5:8, 4:6] = math.nan
    features[1, :, 0, 0] = math.nan
    for sampling_ratio in (0, 2):
        expected = reference_ops.roi_align_max(features, BOXES, OUTPUT, 0.5, sampling_ratio,
                                               True, nan_propagates=True)
        ours = _align(kernels, features.requires_grad_(True), BOXES, sampling_ratio, True, "max")
        assert int(expected.isnan().sum()) > 0
        torch.testing.assert_close(ours, expected, atol=1e-12, rtol=1e-12, equal_nan=True)
        # The CPU op makes more bins NaN (a window's NaN reaches every sample of the window
        # through its zero weights); elsewhere both send the gradient to the same samples.
        cpu = layers.roi_align(features, BOXES, OUTPUT, 0.5, sampling_ratio, True, mode="max")
        grad = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1),
                           dtype=ours.dtype).masked_fill(cpu.isnan(), 0)
        ours_grad, = torch.autograd.grad(ours, features, grad)
        cpu_grad, = torch.autograd.grad(cpu, features, grad)
        torch.testing.assert_close(ours_grad, cpu_grad, atol=1e-12, rtol=1e-12)
        features = features.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision_features_compute_in_float32(kernels, dtype):
    """Features are read in their dtype, positions and sums are float32, output in their dtype."""
    features = _features(dtype).requires_grad_(True)
    exact = features.detach().double()
    for mode in ("avg", "max"):
        ours = _align(kernels, features, BOXES, 0, True, mode)
        assert ours.dtype == dtype
        expected = layers.roi_align(exact, BOXES, OUTPUT, 0.5, 0, True, mode=mode)
        tolerance = 1e-6 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(ours.double(), expected, atol=tolerance, rtol=tolerance)
        assert _gradient(ours, features).dtype == dtype


def _permuted_gradient(kernels, pool, features, order):
    output = pool(kernels, features, BOXES[order])
    grad = torch.randn((len(BOXES), *output.shape[1:]),
                       generator=torch.Generator().manual_seed(2), dtype=output.dtype)
    return torch.autograd.grad(output, features, grad[order])[0]


POOLS = {
    "avg": lambda k, f, b: _align(k, f, b, 0, True, "avg"),
    "max": lambda k, f, b: _align(k, f, b, 0, True, "max"),
    "precise": lambda k, f, b: _precise(k, f, b, True),
    "warp": _warp,
}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_deterministic_gradient_does_not_depend_on_the_order_of_additions(kernels, name):
    """The deterministic backward sums in fixed point: permuting the RoIs (and so the order in
    which their contributions are added, as GPU atomics would) gives the same bits, and the
    values of the float backward. The float backward's bits do depend on the order."""
    features = _features(torch.float32).requires_grad_(True)
    orders = [torch.arange(len(BOXES)), torch.arange(len(BOXES)).flip(0),
              torch.randperm(len(BOXES), generator=torch.Generator().manual_seed(4))]
    pool = POOLS[name]
    floats = [_permuted_gradient(kernels, pool, features, order) for order in orders]
    torch.use_deterministic_algorithms(True)
    try:
        fixed = [_permuted_gradient(kernels, pool, features, order) for order in orders]
    finally:
        torch.use_deterministic_algorithms(False)
    for first, other in itertools.pairwise(fixed):
        assert torch.equal(first, other)
    torch.testing.assert_close(fixed[0], floats[0], atol=1e-6, rtol=1e-6)
    if name in ("avg", "precise"):  # enough overlapping additions for float rounding to show
        assert not all(torch.equal(floats[0], other) for other in floats[1:])


def test_deterministic_gradient_of_non_finite_output_gradient_is_nan(kernels):
    features = _features(torch.float32).requires_grad_(True)
    output = _align(kernels, features, BOXES, 0, True, "avg")
    grad = torch.zeros_like(output)
    grad[0, 0, 0, 0] = float("inf")
    torch.use_deterministic_algorithms(True)
    try:
        (gradient,) = torch.autograd.grad(output, features, grad)
    finally:
        torch.use_deterministic_algorithms(False)
    assert gradient.isnan().all()


@pytest.mark.parametrize("capability", [80, 90])
def test_kernels_compile_for_gpus(capability):
    """Every kernel variant the ops launch compiles for Ampere and Hopper (no GPU needed): the
    interpreter does not check types the way the compiler does."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mask_rcnn_ext.layers import triton_roi_pool as compiled

    target = GPUTarget("cuda", capability, 32)
    shape = {name: "i32" for name in ("channels", "height", "width", "pooled_h", "pooled_w")}
    for features, compute in [("fp32", "fp32"), ("fp16", "fp32"), ("bf16", "fp32"),
                              ("fp64", "fp64")]:
        for deterministic in (False, True):
            grad = "*i64" if deterministic else f"*{compute}"
            for mode in (0, 1):
                kernels = [
                    (compiled._bilinear_forward,
                     {"features_ptr": f"*{features}", "geometry_ptr": f"*{compute}",
                      "counts_ptr": "*i32", "output_ptr": f"*{features}", "argmax_ptr": "*i32"},
                     {"MODE": mode}),
                    (compiled._bilinear_backward,
                     {"grad_output_ptr": f"*{features}", "geometry_ptr": f"*{compute}",
                      "counts_ptr": "*i32", "argmax_ptr": "*i32", "grad_ptr": grad,
                      "scale_ptr": "*fp64"},
                     {"MODE": mode, "DETERMINISTIC": deterministic}),
                    (compiled._precise_pool,
                     {"features_ptr": f"*{features}", "grad_output_ptr": f"*{features}",
                      "geometry_ptr": f"*{compute}", "counts_ptr": "*i32",
                      "output_ptr": f"*{features}", "grad_ptr": grad, "scale_ptr": "*fp64"},
                     {"BACKWARD": bool(mode), "DETERMINISTIC": deterministic}),
                ]
                for kernel, pointers, constants in kernels:
                    constants = {**constants, "BLOCK": compiled._BLOCK}
                    signature = {**pointers, **shape, **dict.fromkeys(constants, "constexpr")}
                    binary = triton.compile(ASTSource(kernel, signature, constexprs=constants),
                                            target=target)
                    _check_atomics_are_relaxed(binary.asm["ptx"])
                    _check_output_offsets_are_64_bit(binary.asm["ttir"])


def _check_atomics_are_relaxed(ptx: str) -> None:
    """A sum needs no memory ordering: every atomic add is relaxed, as torchvision's atomicAdd
    (Triton's default, acq_rel, compiles to atom.global.gpu.acq_rel.add)."""
    atomics = set(re.findall(r"\b(?:atom|red)\.[a-z0-9.]+", ptx))
    assert all(".relaxed." in atomic for atomic in atomics), atomics


def _check_output_offsets_are_64_bit(ttir: str) -> None:
    """Each RoI's offset into the output (and its argmax and gradient) is added in 64 bits: with
    32, K x C x P x Q >= 2^31 (42,800 RoIs of 256 x 14 x 14) would wrap around and write
    elsewhere, silently. (Too large to run here: 8.6 GB of float32 output.)"""
    offsets = re.findall(r"tt\.addptr %(?:output_ptr|argmax_ptr|grad_output_ptr)\b[^:]*: "
                         r"!tt\.ptr<\w+>, (\w+)", ttir)
    assert all(width == "i64" for width in offsets), offsets


def test_every_launch_enters_the_features_device(kernels, monkeypatch):
    """Triton launches on the current CUDA device: each launch (forward and backward, every
    kernel) enters the features' device first, which makes it current."""
    entered = []
    guard = kernels._device_guard
    monkeypatch.setattr(kernels, "_device_guard",
                        lambda device: entered.append(device) or guard(device))
    features = _features().requires_grad_(True)
    for pool in POOLS.values():
        _gradient(pool(kernels, features, BOXES), features)
    assert entered == [features.device] * 2 * len(POOLS)
    # On CUDA, entering is torch.cuda.device's (built here without a GPU: nothing is entered).
    second = guard(torch.device("cuda", 1))
    assert isinstance(second, torch.cuda.device) and second.idx == 1


_CONVERSION_PEAK = """
import torch
from mask_rcnn_ext.layers import triton_roi_pool as kernels

torch.use_deterministic_algorithms(True)
shape = torch.Size((1, 64, 1024, 1024))
gradient = kernels._GradientBuffer(torch.ones(4, 64, 7, 7), shape, torch.float32)
gradient.buffer.random_(-2**40, 2**40)  # every page touched, as the kernels' additions do
start = start_peak()
result = gradient.result(torch.float32)
grown = peak_since(start)
expected = gradient.buffer.double() / gradient.scale
assert torch.equal(result, expected.float())
print(grown / shape.numel())
"""


def test_deterministic_gradient_is_converted_without_feature_sized_float64_copies():
    """Converting the int64 fixed-point gradient allocates its float32 result and O(block)
    temporaries: the peak grows by ~4 bytes per feature value (float64 copies of the whole
    buffer, as before, made it ~16)."""
    grown_per_value = peak_growth(_CONVERSION_PEAK)
    assert grown_per_value < 6, grown_per_value

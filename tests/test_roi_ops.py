"""One grid for every implementation of every RoI pooling computation, as torchvision tests its RoI
ops (its RoIOpTester): each (op, backend) pair of the dispatch table that can run here, forced
through the table (Triton's kernels by Triton's interpreter), on the edge boxes, with aligned
on and off and fixed and adaptive sampling, in float64, float32, float16 and bfloat16, with
contiguous and channels-last features, against an independent float64 reference (torchvision,
the brute-force loops of reference_ops.py); gradients by finite differences in float64, and every
other dtype, backend and layout against that gradient. Each op also runs on CUDA when present
(the table's choice). Then the export forms (traced, scripted, ONNX Runtime) against the same
references, inputs that are not ordinary, and what each op adds."""

import contextlib
import functools
import io
from unittest import mock

import pytest
import torch
from torchvision.ops import roi_align as torchvision_roi_align

import reference_ops
from helpers import peak_growth
from mask_rcnn_ext import layers
from mask_rcnn_ext.layers import backends
from mask_rcnn_ext.layers.backends import IMPLEMENTATIONS, Backend
from mask_rcnn_ext.modeling import POOLER_REGISTRY

OUTPUT_SIZE, SCALE, SAMPLING_RATIO = (3, 4), 0.5, 2
POOLER_TYPES = ("ROIAlign", "ROIAlignV2", "ROIAlignMax", "PreciseROIPool", "ROIWarp", "ROIPool")
# (atol, rtol) of each dtype against the float64 reference of the same (rounded) features.
TOLERANCES = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5),
              torch.float16: (5e-3, 5e-3), torch.bfloat16: (4e-2, 4e-2)}
# Boxes in image pixels (scale 0.5 -> a 10 x 13 map), over 2 images.
BOXES = torch.tensor([
    [0, 4.2, 6.6, 17.9, 14.3],      # ordinary
    [1, -5.0, -3.0, 7.0, 9.5],      # partly outside (top left)
    [0, 15.0, 11.0, 29.0, 24.0],    # partly outside (bottom right)
    [1, 40.0, 40.0, 50.0, 50.0],    # wholly outside
    [0, 10.1, 10.2, 10.6, 10.5],    # sub-pixel
    [1, -20.0, -20.0, 60.0, 50.0],  # huge
    [0, 8.0, 8.0, 8.0, 8.0],        # empty
    [1, 7.0, 3.0, 7.0, 16.0],       # zero width
], dtype=torch.float64)

# Each op: its computation and options, and its reference (features, boxes) -> pooled.
OPS = {
    **{f"avg-{'aligned' if aligned else 'legacy'}-{'adaptive' if ratio <= 0 else ratio}":
       ("roi_align_avg", {"sampling_ratio": ratio, "aligned": aligned},
        functools.partial(torchvision_roi_align, output_size=OUTPUT_SIZE, spatial_scale=SCALE,
                          sampling_ratio=ratio, aligned=aligned))
       for aligned in (False, True) for ratio in (0, 2)},
    **{f"max-{'aligned' if aligned else 'legacy'}-{'adaptive' if ratio <= 0 else ratio}":
       ("roi_align_max", {"sampling_ratio": ratio, "aligned": aligned},
        functools.partial(reference_ops.roi_align_max, output_size=OUTPUT_SIZE, scale=SCALE,
                          sampling_ratio=ratio, aligned=aligned))
       for aligned in (False, True) for ratio in (0, 2)},
    **{f"precise-{'aligned' if aligned else 'legacy'}":
       ("precise_roi_pool", {"aligned": aligned},
        functools.partial(reference_ops.precise_pool_numerical, output_size=OUTPUT_SIZE,
                          scale=SCALE, aligned=aligned))
       for aligned in (False, True)},
    "warp": ("roi_warp", {}, functools.partial(reference_ops.roi_warp_by_resize,
                                               output_size=OUTPUT_SIZE, scale=SCALE)),
    "pool": ("roi_pool", {}, functools.partial(reference_ops.roi_pool_quantised,
                                               output_size=OUTPUT_SIZE, scale=SCALE)),
}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
# The interpreter takes about a second per call: its kernels run in fewer dtypes and layouts
# (values in float64, gradients in float16; float32 and float16 values in test_triton_kernels.py).
_INTERPRETED_DTYPES = {"forward": (torch.float64,), "backward": (torch.float16,)}


def _implementations(dtypes, direction="forward", layouts=tuple(LAYOUTS)):
    """(op, backend, dtype, layout) of every implementation of every op."""
    cases = []
    for op, (computation, _, _) in OPS.items():
        for backend in IMPLEMENTATIONS[computation]:
            for dtype in dtypes:
                for layout in layouts:
                    if backend == Backend.TRITON and (
                            dtype not in _INTERPRETED_DTYPES[direction]
                            or layout != "contiguous"):
                        continue
                    cases.append(pytest.param(op, backend.value, dtype, layout,
                                              id=f"{op}-{backend.value}-{str(dtype)[6:]}-{layout}"))
    return cases


def _features(dtype: torch.dtype) -> torch.Tensor:
    """Random multiples of 1/64 in [-4, 4]: the same values in every dtype (bfloat16 included), so
    that one float64 reference serves them all."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(-256, 257, (2, 3, 10, 13), generator=generator) / 64).to(dtype)


@functools.cache
def _reference(op: str) -> torch.Tensor:
    return OPS[op][2](_features(torch.float64), BOXES)


@pytest.fixture
def implementation(request):
    """``run(op, features, boxes)``: the op by the backend of the test's parameters, forced
    through the table (Triton by the interpreter)."""
    backend = request.node.callspec.params.get("backend")
    if backend == Backend.TRITON.value:
        request.getfixturevalue("triton_kernels")

    def run(op: str, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        computation, options, _ = OPS[op]
        forcing = backends.forced(backend) if backend else contextlib.nullcontext()
        with forcing:
            return backends.pool(computation, features, boxes, OUTPUT_SIZE, SCALE, **options)

    return run


def _layout(features: torch.Tensor, layout: str) -> torch.Tensor:
    return features.contiguous(memory_format=LAYOUTS[layout])


@pytest.mark.parametrize("op, backend, dtype, layout", _implementations(TOLERANCES))
def test_forward_equals_reference(implementation, op, backend, dtype, layout):
    features = _layout(_features(dtype), layout)
    output = implementation(op, features, BOXES.to(torch.float32 if dtype != torch.float64
                                                   else dtype))
    assert output.dtype == dtype
    atol, rtol = TOLERANCES[dtype]
    if OPS[op][0] == "precise_roi_pool":  # the reference integrates numerically, to 5e-6
        atol = max(atol, 5e-6)
    torch.testing.assert_close(output.double(), _reference(op), atol=atol, rtol=rtol)


@pytest.mark.parametrize("op, backend, dtype, layout",
                         [case for case in _implementations([torch.float64])
                          if case.values[1] != Backend.TRITON.value])
def test_float64_gradient_equals_finite_differences(implementation, op, backend, dtype, layout):
    features = _layout(_features(dtype), layout).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: implementation(op, f, BOXES), (features,),
                                    fast_mode=True)


def _output_weights(shape) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@functools.cache
def _reference_gradient(op: str) -> torch.Tensor:
    """The float64 gradient (of the table's CPU choice, checked by finite differences above) of
    the summed output weighted by a fixed random tensor."""
    computation, options, _ = OPS[op]
    features = _features(torch.float64).requires_grad_(True)
    output = backends.pool(computation, features, BOXES, OUTPUT_SIZE, SCALE, **options)
    (gradient,) = torch.autograd.grad(output, features, _output_weights(output.shape))
    return gradient


@pytest.mark.parametrize("op, backend, dtype, layout",
                         _implementations([torch.float32, torch.float16, torch.bfloat16],
                                          "backward"))
def test_backward_equals_float64_gradient(implementation, op, backend, dtype, layout):
    features = _layout(_features(dtype), layout).requires_grad_(True)
    output = implementation(op, features, BOXES.to(torch.float32))
    (gradient,) = torch.autograd.grad(output, features, _output_weights(output.shape).to(dtype))
    assert gradient.dtype == dtype and gradient.shape == features.shape
    atol, rtol = TOLERANCES[dtype]
    # A pixel's gradient sums the weights of every sample that reads it: allow for that many
    # roundings of the weights in low precision.
    torch.testing.assert_close(gradient.double(), _reference_gradient(op),
                               atol=4 * atol, rtol=rtol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("op", OPS)
def test_cuda_forward_and_backward_equal_reference(implementation, op, dtype):
    """On CUDA, the table's choice (torchvision or Triton compiled for the GPU)."""
    features = _features(dtype).cuda().requires_grad_(True)
    output = implementation(op, features, BOXES.to("cuda", torch.float32 if dtype != torch.float64
                                                   else dtype))
    atol, rtol = TOLERANCES[dtype]
    if OPS[op][0] == "precise_roi_pool":
        atol = max(atol, 5e-6)
    torch.testing.assert_close(output.cpu().double(), _reference(op), atol=atol, rtol=rtol)
    if dtype != torch.float64:
        (gradient,) = torch.autograd.grad(output, features,
                                          _output_weights(output.shape).to("cuda", dtype))
        torch.testing.assert_close(gradient.cpu().double(), _reference_gradient(op),
                                   atol=4 * atol, rtol=rtol)


def _op(pooler_type: str):
    return POOLER_REGISTRY.get(pooler_type)(OUTPUT_SIZE, SCALE, SAMPLING_RATIO)


@functools.cache
def _type_reference(pooler_type: str) -> torch.Tensor:
    """The reference of the op behind a registered pooler type (sampling ratio 2)."""
    op = {"ROIAlign": "avg-legacy-2", "ROIAlignV2": "avg-aligned-2", "ROIAlignMax":
          "max-aligned-2", "PreciseROIPool": "precise-aligned", "ROIWarp": "warp",
          "ROIPool": "pool"}[pooler_type]
    return _reference(op)


# The export forms: traced on one map size and a few boxes, scripted, and exported to ONNX, each
# run on the cases above (another map size, another number of boxes, none) against the same
# references. Traced and scripted ops run mask_rcnn_ext.layers.traceable (or torchvision's ops).
EXPORT_FORMS = ("traced", "scripted", "onnx")
_TRACE_FEATURES = torch.randn(1, 3, 6, 7, generator=torch.Generator().manual_seed(2))
_TRACE_BOXES = torch.tensor([[0, 1.0, 1.0, 5.0, 6.0], [0, 2.0, 0.5, 9.0, 4.0]])


def _exported(pooler_type: str, form: str, dtype: torch.dtype):
    """The op in ``form``, as a function (features, boxes) -> pooled features."""
    op = _op(pooler_type)
    example = (_TRACE_FEATURES.to(dtype), _TRACE_BOXES.to(dtype))
    if form == "traced":
        return torch.jit.trace(op, example)
    if form == "scripted":
        return torch.jit.script(op)
    onnxruntime = pytest.importorskip("onnxruntime")
    buffer = io.BytesIO()
    torch.onnx.export(op, example, buffer, opset_version=17, dynamo=False,
                      input_names=["features", "boxes"],
                      dynamic_axes={"features": [0, 2, 3], "boxes": [0]})
    session = onnxruntime.InferenceSession(buffer.getvalue(),
                                           providers=["CPUExecutionProvider"])
    return lambda features, boxes: torch.from_numpy(session.run(
        None, {"features": features.numpy(), "boxes": boxes.numpy()})[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("form", EXPORT_FORMS)
@pytest.mark.parametrize("pooler_type", POOLER_TYPES)
def test_export_forms_equal_reference(pooler_type, form, dtype):
    if form == "onnx" and dtype == torch.float64:
        pytest.skip("exported models run in float32")
    op = _exported(pooler_type, form, dtype)
    features = _features(dtype)
    atol, rtol = TOLERANCES[dtype]
    if pooler_type == "PreciseROIPool":
        atol = max(atol, 5e-6)
    torch.testing.assert_close(op(features, BOXES.to(dtype)).double(),
                               _type_reference(pooler_type), atol=atol, rtol=rtol)
    empty = op(features, BOXES[:0].to(dtype))
    assert empty.shape == (0, features.shape[1], *OUTPUT_SIZE)


def test_traced_op_runs_the_traceable_formulation_only_while_tracing():
    """Eager speed is untouched: outside a trace the eager op runs (here, on CPU, separable)."""
    from mask_rcnn_ext.layers import traceable

    op = _op("ROIAlignMax")
    features = _features(torch.float32)
    with mock.patch.object(traceable, "pool", wraps=traceable.pool) as traced:
        op(features, BOXES.float())
        assert traced.call_count == 0
        torch.jit.trace(op, (_TRACE_FEATURES, _TRACE_BOXES))
        assert traced.call_count > 0


# --- inputs that are not ordinary ---------------------------------------------------------------

# Each (pooler type, backend forced on CPU): every implementation an input can reach.
_BACKEND_CASES = [(t, "separable") for t in POOLER_TYPES if t != "ROIPool"] + [
    ("ROIAlignV2", "torchvision"), ("ROIAlign", "torchvision"), ("ROIPool", None)]
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("pooler_type, backend", _BACKEND_CASES)
def test_boxes_with_nan_or_inf_pool_to_zeros_and_leave_the_others_alone(pooler_type, backend):
    """torchvision's kernels read out of bounds or crash (a segmentation fault with a fixed
    sampling ratio) on such boxes; ours gave NaN or an IndexError."""
    from mask_rcnn_ext.layers import backends

    bad = torch.tensor([[0, NAN, 1, 5, 5], [1, 1, 1, INF, 5], [0, -INF, -INF, INF, INF],
                        [1, 2, 2, NAN, NAN]], dtype=torch.float64)
    boxes = torch.cat((BOXES[:3], bad, BOXES[3:]))
    good_rows = torch.cat((torch.arange(3), torch.arange(3 + len(bad), len(boxes))))
    features = _features(torch.float64).requires_grad_(True)
    op = _op(pooler_type)
    forcing = backends.forced(backend) if backend else contextlib.nullcontext()
    with forcing:
        output = op(features, boxes)
        (gradient,) = torch.autograd.grad((output * output.detach().sin()).sum(), features)
        expected = op(features, BOXES)
        (expected_gradient,) = torch.autograd.grad((expected * expected.detach().sin()).sum(),
                                                   features)
    assert torch.equal(output[good_rows], expected)
    assert torch.equal(output[3:7], torch.zeros_like(output[3:7]))
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-12, atol=1e-12)


def test_precise_pooling_gives_nan_boxes_no_gradient():
    from mask_rcnn_ext.layers import precise_roi_pool

    boxes = torch.cat((BOXES[:2], torch.tensor([[0, NAN, 1, 5, 5]], dtype=torch.float64))
                      ).requires_grad_(True)
    output = precise_roi_pool(_features(torch.float64), boxes, OUTPUT_SIZE, SCALE, aligned=True)
    (gradient,) = torch.autograd.grad(output.sum(), boxes)
    assert torch.isfinite(gradient).all() and torch.equal(gradient[2], torch.zeros(5).double())
    assert gradient[:2, 1:].abs().sum() > 0


@pytest.mark.parametrize("index", [-1, 2, 0.5, NAN])
@pytest.mark.parametrize("pooler_type", POOLER_TYPES)
def test_batch_indices_that_are_not_an_image_are_refused(pooler_type, index):
    boxes = BOXES.clone()
    boxes[4, 0] = index  # -1 used to pool the last image, as a negative Python index
    with pytest.raises(ValueError, match=f"boxes row 4: batch index {float(index)} is not the "
                                         "index of "
                                         "one of the 2 images"):
        _op(pooler_type)(_features(torch.float64), boxes)


@pytest.mark.parametrize("pooler_type", POOLER_TYPES)
def test_features_without_channels_give_an_empty_output(pooler_type):
    output = _op(pooler_type)(torch.zeros(2, 0, 10, 13, dtype=torch.float64), BOXES)
    assert output.shape == (len(BOXES), 0, *OUTPUT_SIZE)


def test_roi_pool_gradient_added_by_index_put_equals_torchvisions():
    """RoIPool's deterministic backward (for CUDA, where torchvision's refuses
    ``use_deterministic_algorithms``), run here on CPU: the forward is torchvision's, and the
    gradient, added at the maxima's pixels by index_put_, equals torchvision's own."""
    from torchvision.ops import roi_pool as torchvision_roi_pool

    from mask_rcnn_ext.layers.torchvision_ops import _DeterministicRoIPool

    features = _features(torch.float64).requires_grad_(True)
    ours = _DeterministicRoIPool.apply(features, BOXES, OUTPUT_SIZE, SCALE)
    reference = torchvision_roi_pool(features, BOXES, OUTPUT_SIZE, SCALE)
    torch.testing.assert_close(ours, _type_reference("ROIPool"), atol=0, rtol=0)
    grad = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(ours, features, grad)[0],
                               torch.autograd.grad(reference, features, grad)[0], atol=0, rtol=0)


_TRACED_PEAK = """
import sys, torch
from mask_rcnn_ext.layers import traceable

groups = int(sys.argv[1])
features = torch.randn(1, 64, 100, 100)
small = torch.tensor([0, 10.0, 10.0, 12.0, 12.0]).repeat(150, 1)
whole = torch.tensor([0, 0.0, 0.0, 99.0, 99.0]).repeat(10, 1)
rois = torch.cat((small, whole))
grown = []
with torch.no_grad():
    for computation in ("roi_align_max", "precise_roi_pool", "roi_warp"):
        traceable.pool(computation, features, rois[:20], (7, 7), 1.0, groups=groups)  # warm-up
        start = start_peak()
        traceable.pool(computation, features, rois, (7, 7), 1.0, groups=groups)
        grown.append(peak_since(start))
print(max(grown))
"""


def test_traced_form_holds_the_windows_of_one_group_at_a_time():
    """160 RoIs, 10 of them covering the whole 100 x 100 x 64 map, pooled by max RoIAlign,
    precise pooling and RoIWarp: padding every RoI's window to the longest held 160 whole-map
    windows (over 400 MB); the traced form pools its sixteen groups of similar area one after the
    other, each padded to its own longest."""
    one_window = 101 * 101 * 64 * 4  # bytes, float32
    group = -(-(160 + 16) // 16)  # RoIs per group, one padding box per group included
    grown = peak_growth(_TRACED_PEAK, "16")
    # A group's windows, its values contracted along y and their copies, (max) its samples:
    # about 4.5 groups of windows (1.8 GB without groups).
    assert grown < 8 * group * one_window, (grown, group * one_window)


# --- what each op adds ---------------------------------------------------------------------------


def _many_realistic_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    sizes = torch.exp(torch.empty(count, 2).uniform_(1.0, 6.0, generator=generator))
    corners = torch.rand(count, 2, generator=generator) * torch.tensor([304.0, 200.0]) - sizes / 2
    return torch.cat((torch.randint(0, 2, (count, 1), generator=generator).float(), corners,
                      corners + sizes), dim=1)


def test_avg_equals_torchvision_on_many_realistic_boxes():
    """Enough RoIs of mixed sizes to split into several chunks of different window sizes."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 16, 50, 76, generator=generator)
    boxes = _many_realistic_boxes(600, generator)
    torch.testing.assert_close(layers.roi_align(features, boxes, 7, 0.25, 0, True),
                               torchvision_roi_align(features, boxes, 7, 0.25, 0, True),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("op", ["max-aligned-adaptive", "precise-aligned", "warp"])
def test_traced_groups_equal_the_eager_op_on_many_realistic_boxes(op):
    """Hundreds of RoIs of mixed sizes, sorted into the traced form's groups and back."""
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 4, 50, 76, generator=generator, dtype=torch.float64)
    boxes = _many_realistic_boxes(300, generator).double()
    computation, options, _ = OPS[op]
    pooled = {}
    for backend in ("separable", "traceable"):
        with backends.forced(backend):
            pooled[backend] = backends.pool(computation, features, boxes, (7, 7), 0.25,
                                             **options)
    torch.testing.assert_close(pooled["traceable"], pooled["separable"], atol=1e-10, rtol=1e-10)


def test_list_of_boxes_equals_tensor_form():
    features = _features(torch.float32)
    per_image = [BOXES[BOXES[:, 0] == i, 1:] for i in range(2)]
    ordered = torch.cat([BOXES[BOXES[:, 0] == i] for i in range(2)])
    torch.testing.assert_close(layers.roi_align(features, per_image, 3, 0.5, 2, True),
                               layers.roi_align(features, ordered, 3, 0.5, 2, True))


def test_max_differs_from_avg_and_bounds_it():
    features, boxes = torch.randn(2, 4, 10, 13, generator=torch.Generator().manual_seed(0)), BOXES
    average = layers.roi_align(features, boxes[:3], 3, 0.5, 2, True)
    maximum = layers.roi_align(features, boxes[:3], 3, 0.5, 2, True, mode="max")
    assert (maximum >= average - 1e-6).all()
    assert (maximum > average + 1e-3).float().mean() > 0.5


def _max_by_torch_max(features: torch.Tensor, boxes: torch.Tensor, pooled: int,
                      grid: int) -> torch.Tensor:
    """Aligned max RoIAlign (scale 1) by its definition: each bin's grid x grid bilinear samples
    stacked in (y, x) order and reduced by ``torch.max``, whose gradient goes to the first of
    equal maxima. Boxes inside the map, away from its border."""
    outputs = []
    for image, x1, y1, x2, y2 in boxes.tolist():
        bins = []
        for p in range(pooled):
            for q in range(pooled):
                samples = []
                for iy in range(grid):
                    for ix in range(grid):
                        y = y1 - 0.5 + (p + (iy + 0.5) / grid) * (y2 - y1) / pooled
                        x = x1 - 0.5 + (q + (ix + 0.5) / grid) * (x2 - x1) / pooled
                        top, left = int(y), int(x)
                        dy, dx = y - top, x - left
                        rows = features[int(image), :, top:top + 2, left:left + 2]
                        samples.append((1 - dy) * (1 - dx) * rows[:, 0, 0]
                                       + (1 - dy) * dx * rows[:, 0, 1]
                                       + dy * (1 - dx) * rows[:, 1, 0] + dy * dx * rows[:, 1, 1])
                bins.append(torch.stack(samples).max(dim=0).values)
        outputs.append(torch.stack(bins, dim=1).view(-1, pooled, pooled))
    return torch.stack(outputs)


@pytest.mark.parametrize("backend", ["separable", "traceable"])
def test_max_gradient_goes_to_the_first_of_equal_maxima(backend):
    """Channel 0 is constant (every sample ties), channel 1 has a constant plateau that is its
    maximum (the samples on it tie) and channel 2 is random: the gradient as torch.max's."""
    features = torch.randn(1, 3, 12, 12, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(3))
    features[0, 0] = 1.0
    features[0, 1, 4:8, 3:9] = 5.0
    boxes = torch.tensor([[0, 2.3, 3.1, 10.2, 9.4], [0, 4.0, 4.5, 8.5, 8.0]], dtype=torch.float64)
    weights = _output_weights((2, 3, 2, 2))
    gradients = []
    for pool in (lambda f: _max_by_torch_max(f, boxes, 2, 3),
                 lambda f: backends.pool("roi_align_max", f, boxes, (2, 2), 1.0,
                                         sampling_ratio=3, aligned=True)):
        leaf = features.clone().requires_grad_(True)
        with backends.forced(backend):
            output = pool(leaf)
        (gradient,) = torch.autograd.grad(output, leaf, weights)
        gradients.append((output, gradient))
    (expected, expected_gradient), (output, gradient) = gradients
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(gradient, expected_gradient)


def test_sample_maximum_routes_the_gradient_as_torch_max():
    """The eager max over each bin's samples, against ``torch.max`` over the bin's samples in
    (y, x) order: ties (values from a few levels) go to the first, NaN propagates and takes the
    gradient at its first occurrence."""
    from mask_rcnn_ext.layers.separable import _SampleMaximum

    generator = torch.Generator().manual_seed(4)
    pooled_y, samples_y, pooled_x, samples_x = 2, 3, 3, 2
    samples = torch.randint(0, 3, (4, pooled_y * samples_y, pooled_x * samples_x, 5),
                            generator=generator).double()
    samples[0, 1, 2, 0] = samples[2, 4, 0, 3] = samples[2, 5, 1, 3] = float("nan")
    weights = torch.rand(4, pooled_y, pooled_x, 5, generator=generator, dtype=torch.float64)
    results = []
    for reduce in (lambda v: _SampleMaximum.apply(v, pooled_y, pooled_x),
                   lambda v: v.view(4, pooled_y, samples_y, pooled_x, samples_x, 5)
                   .permute(0, 1, 3, 5, 2, 4).reshape(4, pooled_y, pooled_x, 5, -1)
                   .max(dim=4).values):
        leaf = samples.clone().requires_grad_(True)
        output = reduce(leaf)
        results.append((output, *torch.autograd.grad(output, leaf, weights)))
    (output, gradient), (expected, expected_gradient) = results
    assert output.isnan().sum() == 2
    torch.testing.assert_close(output, expected, equal_nan=True)
    torch.testing.assert_close(gradient, expected_gradient)


def test_empty_boxes_and_bad_input():
    features = _features(torch.float32)
    assert layers.roi_align(features, torch.zeros(0, 5), (3, 4), 0.5).shape == (0, 3, 3, 4)
    assert layers.roi_align(features, [torch.zeros(0, 4)] * 2, 2, 0.5,
                            mode="max").shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        layers.roi_align(features, BOXES, 3, mode="median")
    with pytest.raises(ValueError, match=r"Tensor\[K, 5\]"):
        layers.roi_align(features, torch.zeros(3, 4), 3)
    with pytest.raises(ValueError, match=r"boxes\[1\] must be a Tensor\[L, 4\]"):
        layers.roi_align(features, [torch.zeros(1, 4), torch.zeros(2, 5)], 3)


def test_modules_repr_forward_and_empty_boxes():
    features = _features(torch.float64)
    module = layers.ROIAlign((7, 7), 0.25, 0, aligned=True, mode="max")
    assert "mode='max'" in repr(module) and "aligned=True" in repr(module)
    torch.testing.assert_close(module(features, BOXES),
                               layers.roi_align(features, BOXES, 7, 0.25, 0, True, "max"))
    assert "aligned=True" in repr(layers.PreciseROIPool(7, 0.25, aligned=True))
    assert "spatial_scale=0.25" in repr(layers.ROIWarp(7, 0.25))
    for module in (layers.PreciseROIPool(3, 0.5), layers.ROIWarp(3, 0.5), layers.ROIPool(3, 0.5)):
        assert module(features, torch.zeros(0, 5, dtype=torch.float64)).shape == (0, 3, 3, 3)


@pytest.mark.parametrize("direct_fraction", [0.0, 1e9])
def test_both_window_gather_paths(monkeypatch, direct_fraction):
    """Windows come from a pixel-row copy of the map, or straight from the NCHW map when they
    cover little of it; both give torchvision's results and gradients."""
    from mask_rcnn_ext.layers import separable

    monkeypatch.setattr(separable, "_DIRECT_GATHER_FRACTION", direct_fraction)
    features = _features(torch.float64).requires_grad_(True)
    ours = layers.roi_align(features, BOXES, 4, 0.5, 0, True)
    reference = torchvision_roi_align(features, BOXES, 4, 0.5, 0, True)
    torch.testing.assert_close(ours, reference)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, features, grad)[0],
                               torch.autograd.grad(reference, features, grad)[0])


def test_tracing_runs_torchvision_for_avg():
    """The traced form of average RoIAlign is torchvision's op (which exports to ONNX's
    RoiAlign)."""
    features = _features(torch.float32)
    traced = torch.jit.trace(layers.ROIAlign(3, 0.5, 0, aligned=True), (features, BOXES.float()))
    other = torch.randn(2, 3, 10, 13, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(traced(other, BOXES.float()),
                               torchvision_roi_align(other, BOXES.float(), 3, 0.5, 0, True))
    assert "torchvision::roi_align" in str(traced.graph)


def test_precise_pool_hand_cases():
    constant = torch.full((1, 1, 10, 10), 3.0, dtype=torch.float64)
    inside = torch.tensor([[0, 2.0, 2.5, 7.0, 6.0]], dtype=torch.float64)
    # Interpolating a constant map inside its pixel centres gives the constant everywhere.
    torch.testing.assert_close(layers.precise_roi_pool(constant, inside, 2),
                               torch.full((1, 1, 2, 2), 3.0, dtype=torch.float64))
    # Zero-area bins give 0 (as the paper's implementation).
    empty = torch.tensor([[0, 4.0, 4.0, 4.0, 8.0]], dtype=torch.float64)
    assert layers.precise_roi_pool(constant, empty, 2).abs().max() == 0
    # One bin over [0, 1] x [0, 1] of a single-pixel impulse at (0, 0): the integral of
    # (1 - y)(1 - x) over the unit square is 1/4.
    impulse = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    impulse[0, 0, 0, 0] = 1.0
    unit = torch.tensor([[0, 0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    assert layers.precise_roi_pool(impulse, unit, 1).item() == pytest.approx(0.25)


@pytest.mark.parametrize("aligned", [False, True])
def test_precise_pool_gradcheck_features_and_boxes(aligned):
    features = torch.randn(2, 2, 8, 9, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    image = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    coordinates = torch.tensor([[1.3, 2.2, 11.9, 9.4], [-2.1, 3.3, 6.7, 14.2]],
                               dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, c: layers.precise_roi_pool(f, torch.cat((image, c), 1), (2, 3), 0.5, aligned),
        (features, coordinates))

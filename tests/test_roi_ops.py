"""Every pooler type as torchvision tests its RoI ops (its RoIOpTester): each case on every device
(CPU; CUDA when present), in float64, float32, float16 and bfloat16, with contiguous and
channels-last features, against an independent float64 reference; gradients by finite
differences in float64, and every other dtype, device and layout against that gradient. Then the
export forms (traced, scripted, ONNX Runtime) of every type against the same references."""

import contextlib
import functools
import io
from unittest import mock

import pytest
import torch
from torchvision.ops import roi_align as torchvision_roi_align

import reference_ops
from mask_rcnn_ext.modeling import POOLER_REGISTRY

OUTPUT_SIZE, SCALE, SAMPLING_RATIO = (3, 4), 0.5, 2
POOLER_TYPES = ("ROIAlign", "ROIAlignV2", "ROIAlignMax", "PreciseROIPool", "ROIWarp", "ROIPool")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]
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
], dtype=torch.float64)


def _features(dtype: torch.dtype) -> torch.Tensor:
    """Random features, rounded to ``dtype`` (so that the reference sees the same values)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 10, 13, generator=generator, dtype=torch.float64).to(dtype)


@functools.cache
def _reference(pooler_type: str, dtype: torch.dtype) -> torch.Tensor:
    features = _features(dtype).double()
    if pooler_type in ("ROIAlign", "ROIAlignV2"):
        return torchvision_roi_align(features, BOXES, OUTPUT_SIZE, SCALE, SAMPLING_RATIO,
                                     aligned=pooler_type == "ROIAlignV2")
    if pooler_type == "ROIAlignMax":
        return reference_ops.roi_align_max(features, BOXES, OUTPUT_SIZE, SCALE, SAMPLING_RATIO,
                                           aligned=True)
    if pooler_type == "PreciseROIPool":
        return reference_ops.precise_pool_numerical(features, BOXES, OUTPUT_SIZE, SCALE,
                                                    aligned=True)
    if pooler_type == "ROIWarp":
        return reference_ops.roi_warp_by_resize(features, BOXES, OUTPUT_SIZE, SCALE)
    return reference_ops.roi_pool_quantised(features, BOXES, OUTPUT_SIZE, SCALE)


def _op(pooler_type: str):
    return POOLER_REGISTRY.get(pooler_type)(OUTPUT_SIZE, SCALE, SAMPLING_RATIO)


def _layout(features: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return features.contiguous(memory_format=torch.channels_last) if channels_last else features


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pooler_type", POOLER_TYPES)
def test_forward_equals_reference(pooler_type, device, dtype, channels_last):
    features = _layout(_features(dtype).to(device), channels_last)
    boxes = BOXES.to(device, torch.float32 if dtype != torch.float64 else dtype)
    output = _op(pooler_type)(features, boxes)
    assert output.dtype == dtype and output.device.type == device
    atol, rtol = TOLERANCES[dtype]
    if pooler_type == "PreciseROIPool":  # the reference integrates numerically, to 5e-6
        atol = max(atol, 5e-6)
    torch.testing.assert_close(output.cpu().double(), _reference(pooler_type, dtype),
                               atol=atol, rtol=rtol)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("pooler_type", POOLER_TYPES)
def test_float64_gradient_equals_finite_differences(pooler_type, channels_last):
    features = _layout(_features(torch.float64), channels_last).requires_grad_(True)
    op = _op(pooler_type)
    assert torch.autograd.gradcheck(lambda f: op(f, BOXES), (features,), fast_mode=True)


@functools.cache
def _reference_gradient(pooler_type: str, dtype: torch.dtype) -> torch.Tensor:
    """The float64 gradient (checked by finite differences above) of the summed output weighted
    by a fixed random tensor, at the features rounded to ``dtype``."""
    features = _features(dtype).double().requires_grad_(True)
    output = _op(pooler_type)(features, BOXES)
    (gradient,) = torch.autograd.grad(output, features, _output_weights(output.shape))
    return gradient


def _output_weights(shape) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pooler_type", POOLER_TYPES)
def test_backward_equals_float64_gradient(pooler_type, device, dtype, channels_last):
    features = _layout(_features(dtype).to(device), channels_last).requires_grad_(True)
    output = _op(pooler_type)(features, BOXES.to(device, torch.float32))
    weights = _output_weights(output.shape).to(device, dtype)
    (gradient,) = torch.autograd.grad(output, features, weights)
    assert gradient.dtype == dtype and gradient.shape == features.shape
    atol, rtol = TOLERANCES[dtype]
    # A pixel's gradient sums the weights of every sample that reads it: allow for that many
    # roundings of the weights in low precision.
    torch.testing.assert_close(gradient.cpu().double(), _reference_gradient(pooler_type, dtype),
                               atol=4 * atol, rtol=rtol)


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
                               _reference(pooler_type, dtype), atol=atol, rtol=rtol)
    empty = op(features, BOXES[:0].to(dtype))
    assert empty.shape == (0, features.shape[1], *OUTPUT_SIZE)


def test_traced_op_runs_the_traceable_formulation_only_while_tracing():
    """Eager speed is untouched: outside a trace the eager op runs (here, on CPU, separable)."""
    from mask_rcnn_ext.layers.backends import IMPLEMENTATIONS, Backend

    op = _op("ROIAlignMax")
    features = _features(torch.float32)
    row = IMPLEMENTATIONS["roi_align_max"]
    traced = mock.Mock(wraps=row[Backend.TRACEABLE])
    with mock.patch.dict(row, {Backend.TRACEABLE: traced}):
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
    good_rows = torch.tensor([0, 1, 2, 7, 8, 9, 10])
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
    torch.testing.assert_close(ours, _reference("ROIPool", torch.float64), atol=0, rtol=0)
    grad = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(ours, features, grad)[0],
                               torch.autograd.grad(reference, features, grad)[0], atol=0, rtol=0)

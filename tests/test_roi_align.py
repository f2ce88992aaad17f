"""mask_rcnn_ext.layers.roi_align against torchvision (avg) and a per-sample loop (max)."""

import pytest
import torch
from torchvision.ops import roi_align as torchvision_roi_align

import reference_ops
from mask_rcnn_ext.layers import ROIAlign, roi_align


def _features(dtype=torch.float32, seed=0, shape=(3, 4, 24, 30)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


def _boxes(dtype=torch.float32):
    """Every case the issue lists, over three images (image pixels, scale 0.5 -> map 24 x 30)."""
    return torch.tensor([
        [0, 10.0, 8.0, 40.0, 30.0],     # ordinary
        [1, -12.0, -6.0, 14.0, 20.0],   # partly outside (top left)
        [2, 50.0, 36.0, 75.0, 60.0],    # partly outside (bottom right)
        [0, 70.0, 60.0, 90.0, 80.0],    # wholly outside
        [1, 20.3, 20.1, 20.9, 20.4],    # sub-pixel
        [2, -100.0, -80.0, 200.0, 150.0],  # huge
        [0, 30.0, 30.0, 30.0, 30.0],    # zero size
        [1, 7.0, 9.0, 7.0, 40.0],       # zero width
        [2, 3.3, 5.7, 57.2, 44.9],      # covers most of the map
    ], dtype=dtype)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_avg_equals_torchvision_forward_and_backward(aligned, sampling_ratio):
    features = _features().requires_grad_(True)
    boxes = _boxes()
    ours = roi_align(features, boxes, (5, 4), 0.5, sampling_ratio, aligned)
    reference = torchvision_roi_align(features, boxes, (5, 4), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad(ours, features, grad)
    (grad_reference,) = torch.autograd.grad(reference, features, grad)
    torch.testing.assert_close(grad_ours, grad_reference, atol=1e-5, rtol=1e-5)


def test_avg_equals_torchvision_on_many_realistic_boxes():
    """Enough RoIs of mixed sizes to split into several chunks of different window sizes."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 16, 50, 76, generator=generator)
    sizes = torch.exp(torch.empty(600, 2).uniform_(1.0, 6.0, generator=generator))
    corners = torch.rand(600, 2, generator=generator) * torch.tensor([304.0, 200.0]) - sizes / 2
    boxes = torch.cat((torch.randint(0, 2, (600, 1), generator=generator).float(), corners,
                       corners + sizes), dim=1)
    torch.testing.assert_close(roi_align(features, boxes, 7, 0.25, 0, True),
                               torchvision_roi_align(features, boxes, 7, 0.25, 0, True),
                               atol=1e-5, rtol=1e-5)


def test_list_of_boxes_equals_tensor_form():
    features, boxes = _features(), _boxes()
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(3)]
    ordered = torch.cat([boxes[boxes[:, 0] == i] for i in range(3)])
    torch.testing.assert_close(roi_align(features, per_image, 3, 0.5, 2, True),
                               roi_align(features, ordered, 3, 0.5, 2, True))


def test_channels_last_input_and_float64():
    features, boxes = _features(torch.float64), _boxes(torch.float64)
    expected = torchvision_roi_align(features, boxes, 3, 0.5, 0, True)
    torch.testing.assert_close(
        roi_align(features.to(memory_format=torch.channels_last), boxes, 3, 0.5, 0, True),
        expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_max_equals_per_sample_reference(aligned, sampling_ratio):
    features = _features(torch.float64, shape=(3, 2, 24, 30))
    boxes = _boxes(torch.float64)
    ours = roi_align(features, boxes, (3, 4), 0.5, sampling_ratio, aligned, mode="max")
    expected = reference_ops.roi_align_max(features, boxes, (3, 4), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=1e-12)


def test_max_differs_from_avg_and_bounds_it():
    features, boxes = _features(), _boxes()[:3]
    average = roi_align(features, boxes, 3, 0.5, 2, True)
    maximum = roi_align(features, boxes, 3, 0.5, 2, True, mode="max")
    assert (maximum >= average - 1e-6).all()
    assert (maximum > average + 1e-3).float().mean() > 0.5


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(mode, aligned):
    features = _features(torch.float64, shape=(2, 2, 9, 11)).requires_grad_(True)
    boxes = torch.tensor([[0, 1.3, 2.2, 15.9, 12.4], [1, -3.1, 4.3, 9.7, 21.2],
                          [1, 6.6, 6.1, 7.3, 6.9]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f: roi_align(f, boxes, (3, 2), 0.5, 2, aligned, mode=mode), (features,))


def test_empty_boxes_and_bad_input():
    features = _features()
    assert roi_align(features, torch.zeros(0, 5), (3, 4), 0.5).shape == (0, 4, 3, 4)
    assert roi_align(features, [torch.zeros(0, 4)] * 3, 2, 0.5, mode="max").shape == (0, 4, 2, 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        roi_align(features, _boxes(), 3, mode="median")
    with pytest.raises(ValueError, match=r"Tensor\[K, 5\]"):
        roi_align(features, torch.zeros(3, 4), 3)
    with pytest.raises(ValueError, match=r"boxes\[1\] must be a Tensor\[L, 4\]"):
        roi_align(features, [torch.zeros(1, 4), torch.zeros(2, 5)], 3)


def test_module_repr_and_forward():
    module = ROIAlign((7, 7), 0.25, 0, aligned=True, mode="max")
    assert "mode='max'" in repr(module) and "aligned=True" in repr(module)
    features, boxes = _features(), _boxes()
    torch.testing.assert_close(module(features, boxes),
                               roi_align(features, boxes, 7, 0.25, 0, True, "max"))


@pytest.mark.parametrize("direct_fraction", [0.0, 1e9])
def test_both_window_gather_paths(monkeypatch, direct_fraction):
    """Windows come from a pixel-row copy of the map, or straight from the NCHW map when they
    cover little of it; both give torchvision's results and gradients."""
    from mask_rcnn_ext.layers import separable

    monkeypatch.setattr(separable, "_DIRECT_GATHER_FRACTION", direct_fraction)
    features = _features(torch.float64).requires_grad_(True)
    boxes = _boxes(torch.float64)
    ours = roi_align(features, boxes, 4, 0.5, 0, True)
    reference = torchvision_roi_align(features, boxes, 4, 0.5, 0, True)
    torch.testing.assert_close(ours, reference)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, features, grad)[0],
                               torch.autograd.grad(reference, features, grad)[0])


def test_tracing_runs_torchvision_for_avg():
    """The dispatch's tracing slot for average RoIAlign: torchvision's op (which exports to ONNX's
    RoiAlign); every type's export forms are tested in test_roi_ops.py."""
    features, boxes = _features(), _boxes()
    traced = torch.jit.trace(ROIAlign(3, 0.5, 0, aligned=True), (features, boxes))
    other = _features(seed=5)
    torch.testing.assert_close(traced(other, boxes),
                               torchvision_roi_align(other, boxes, 3, 0.5, 0, True))
    assert "torchvision::roi_align" in str(traced.graph)

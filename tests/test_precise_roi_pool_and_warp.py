"""Precise RoI pooling against numerical integration; RoIWarp against crop + F.interpolate."""

import pytest
import torch

import reference_ops
from mask_rcnn_ext.layers import PreciseROIPool, ROIWarp, precise_roi_pool, roi_warp


def _features(seed=0, shape=(2, 3, 12, 15)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


BOXES = torch.tensor([
    [0, 4.2, 6.6, 17.9, 14.3],    # ordinary
    [1, -5.0, -3.0, 7.0, 9.5],    # partly outside
    [0, 24.0, 18.0, 33.0, 29.0],  # partly outside (bottom right)
    [1, 40.0, 40.0, 50.0, 50.0],  # wholly outside
    [0, 10.1, 10.2, 10.6, 10.5],  # sub-pixel
    [1, -20.0, -20.0, 60.0, 50.0],  # huge
], dtype=torch.float64)


@pytest.mark.parametrize("aligned", [False, True])
def test_precise_pool_equals_numerical_integration(aligned):
    features = _features()
    ours = precise_roi_pool(features, BOXES, (3, 2), 0.5, aligned)
    expected = reference_ops.precise_pool_numerical(features, BOXES, (3, 2), 0.5, aligned)
    # The midpoint rule's error on 1024 x 1024 points is below 5e-6 for these bins.
    torch.testing.assert_close(ours, expected, atol=5e-6, rtol=0)


def test_precise_pool_hand_cases():
    constant = torch.full((1, 1, 10, 10), 3.0, dtype=torch.float64)
    inside = torch.tensor([[0, 2.0, 2.5, 7.0, 6.0]], dtype=torch.float64)
    # Interpolating a constant map inside its pixel centres gives the constant everywhere.
    torch.testing.assert_close(precise_roi_pool(constant, inside, 2), torch.full((1, 1, 2, 2), 3.0,
                                                                               dtype=torch.float64))
    # Zero-area bins give 0 (as the paper's implementation).
    empty = torch.tensor([[0, 4.0, 4.0, 4.0, 8.0]], dtype=torch.float64)
    assert precise_roi_pool(constant, empty, 2).abs().max() == 0
    # One bin over [0, 1] x [0, 1] of a single-pixel impulse at (0, 0): the integral of
    # (1 - y)(1 - x) over the unit square is 1/4.
    impulse = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    impulse[0, 0, 0, 0] = 1.0
    unit = torch.tensor([[0, 0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    assert precise_roi_pool(impulse, unit, 1).item() == pytest.approx(0.25)


@pytest.mark.parametrize("aligned", [False, True])
def test_precise_pool_gradcheck_features_and_boxes(aligned):
    features = _features(shape=(2, 2, 8, 9)).requires_grad_(True)
    image = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    coordinates = torch.tensor([[1.3, 2.2, 11.9, 9.4], [-2.1, 3.3, 6.7, 14.2]],
                               dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, c: precise_roi_pool(f, torch.cat((image, c), 1), (2, 3), 0.5, aligned),
        (features, coordinates))


def test_warp_equals_crop_and_resize():
    features = _features()
    torch.testing.assert_close(roi_warp(features, BOXES, (4, 5), 0.5),
                               reference_ops.roi_warp_by_resize(features, BOXES, (4, 5), 0.5))


def test_warp_gradcheck():
    features = _features(shape=(2, 2, 8, 9)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: roi_warp(f, BOXES[:3], (3, 2), 0.5), (features,))


def test_modules_and_empty_boxes():
    features = _features()
    assert "aligned=True" in repr(PreciseROIPool(7, 0.25, aligned=True))
    assert "spatial_scale=0.25" in repr(ROIWarp(7, 0.25))
    for module in (PreciseROIPool(3, 0.5), ROIWarp(3, 0.5)):
        assert module(features, torch.zeros(0, 5, dtype=torch.float64)).shape == (0, 3, 3, 3)

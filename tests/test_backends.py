"""The dispatch table, mixed precision and deterministic gradients of every pooler type (CPU)."""

import re
import types
from pathlib import Path

import pytest
import torch
from detectron2.structures import Boxes

from mask_rcnn_ext.layers import Backend, choose_backend, roi_align
from mask_rcnn_ext.layers.backends import forced
from mask_rcnn_ext.modeling import ROIPooler

TYPES = ["ROIAlign", "ROIAlignV2", "ROIAlignMax", "PreciseROIPool", "ROIWarp", "ROIPool"]


def _on(device: str):
    """Something with the features' device, enough for the choice (no CUDA needed)."""
    return types.SimpleNamespace(device=torch.device(device))


def test_choice_per_device_and_mode():
    expected = {
        ("cpu", False): dict.fromkeys(
            ["roi_align_avg", "roi_align_max", "precise_roi_pool", "roi_warp"], Backend.SEPARABLE),
        ("cuda", False): {"roi_align_avg": Backend.TORCHVISION, "roi_align_max": Backend.TRITON,
                          "precise_roi_pool": Backend.TRITON, "roi_warp": Backend.TRITON},
        ("cuda", True): dict.fromkeys(
            ["roi_align_avg", "roi_align_max", "precise_roi_pool", "roi_warp"], Backend.TRITON),
    }
    for (device, deterministic), table in expected.items():
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            chosen = {name: choose_backend(name, _on(device)) for name in table}
        finally:
            torch.use_deterministic_algorithms(previous)
        assert chosen == table, (device, deterministic)
    # The kernel's gradient is for the features only: boxes that need one go to the separable op.
    assert choose_backend("precise_roi_pool", _on("cuda"), boxes_need_grad=True) is \
        Backend.SEPARABLE
    assert choose_backend("roi_align_max", _on("mps")) is Backend.SEPARABLE
    with forced("triton"):
        assert choose_backend("roi_align_avg", _on("cpu")) is Backend.TRITON
    with pytest.raises(ValueError, match="unknown RoI pooling computation 'roi_align_median'"):
        choose_backend("roi_align_median", _on("cpu"))


def test_forcing_torchvision_on_max_is_refused():
    features, boxes = torch.randn(1, 2, 8, 8), torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
    with forced("torchvision"), pytest.raises(ValueError, match="torchvision has no mode='max'"):
        roi_align(features, boxes, 2, 1.0, 0, True, mode="max")


def _large_image_case(dtype=torch.float32):
    """A 1280 x 1280 image at stride 8, with boxes whose corners bfloat16 cannot represent
    (1001 -> 1000, 903 -> 904): rounding them would move bins by up to half a feature pixel."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 160, 160, generator=generator).to(dtype)
    boxes = [Boxes(torch.tensor([[1001.0, 903.0, 1100.0, 1010.0], [13.0, 7.0, 301.0, 97.0]])),
             Boxes(torch.tensor([[501.0, 603.0, 777.0, 1013.0]]))]
    return [features], boxes


@pytest.mark.parametrize("pooler_type", TYPES)
def test_cpu_autocast_keeps_float32(pooler_type):
    """Under CPU bfloat16 autocast, float32 features pool in float32 (as torchvision's ops):
    the same numbers as without autocast, where all four of our ops used to raise."""
    features, boxes = _large_image_case()
    pooler = ROIPooler(7, (1 / 8,), 0, pooler_type)
    expected = pooler(features, boxes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = pooler(features, boxes)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("pooler_type", TYPES)
def test_bfloat16_features_keep_float32_boxes(pooler_type, autocast):
    """bfloat16 features: the output is bfloat16 and within bfloat16's rounding of the float32
    result on the same values, forward and backward (boxes and weights stay float32)."""
    features, boxes = _large_image_case(torch.bfloat16)
    features = [features[0].requires_grad_(True)]
    reference_features = [features[0].detach().float().requires_grad_(True)]
    pooler = ROIPooler(7, (1 / 8,), 0, pooler_type)
    reference = pooler(reference_features, boxes)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        pooled = pooler(features, boxes)
    assert pooled.dtype == torch.bfloat16
    scale = reference.abs().max().item()
    torch.testing.assert_close(pooled.float(), reference, atol=scale / 128, rtol=1 / 128)
    grad = torch.randn(reference.shape, generator=torch.Generator().manual_seed(1))
    (grad_ours,) = torch.autograd.grad(pooled, features, grad.bfloat16())
    (grad_reference,) = torch.autograd.grad(reference, reference_features, grad)
    assert grad_ours.dtype == torch.bfloat16
    scale = grad_reference.abs().max().item()
    torch.testing.assert_close(grad_ours.float(), grad_reference, atol=scale / 64, rtol=1 / 64)


@pytest.mark.parametrize("pooler_type", TYPES)
def test_deterministic_gradients_are_bit_identical(pooler_type):
    """With deterministic algorithms on, two backward passes give the same bits (CPU)."""
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 32, 100, 152, generator=generator).requires_grad_(True)]
    corners = torch.rand(2, 300, 2, generator=generator) * torch.tensor([608.0, 400.0])
    sizes = torch.exp(torch.empty(2, 300, 2).uniform_(2.0, 5.5, generator=generator))
    boxes = [Boxes(torch.cat((c, c + s), 1)) for c, s in zip(corners, sizes, strict=True)]
    pooler = ROIPooler(7, (1 / 4,), 0, pooler_type)
    grad = torch.randn(600, 32, 7, 7, generator=generator)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = (torch.autograd.grad(pooler(features, boxes), features, grad)[0]
                         for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert first.abs().sum() > 0
    assert torch.equal(first, second)


def test_amp_training_without_a_gpu_fails_first_naming_the_key(tiny_coco_dataset, tmp_path):
    """Detectron2 v0.6's AMPTrainer asserts CUDA only in its first step; our Trainer refuses
    before building anything, and names the key."""
    from helpers import small_mask_rcnn_cfg
    from mask_rcnn_ext.engine import Trainer

    cfg = small_mask_rcnn_cfg(tiny_coco_dataset, tmp_path / "output", depth=18)
    cfg.SOLVER.AMP.ENABLED = True
    with pytest.raises(ValueError, match=r"SOLVER.AMP.ENABLED is True, but MODEL.DEVICE is 'cpu'"):
        Trainer(cfg)
    assert not (tmp_path / "output").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_a_cuda_device_without_a_gpu_is_refused_naming_the_key(tiny_coco_dataset, tmp_path):
    """The COCO configs say MODEL.DEVICE cuda (Detectron2's default); without a GPU, PyTorch fails
    when the model moves there, naming no key."""
    from detectron2.modeling import build_model

    from helpers import small_mask_rcnn_cfg
    from mask_rcnn_ext.config import load_lazy_config
    from mask_rcnn_ext.engine import LazyTrainer, Predictor, Trainer

    cfg = small_mask_rcnn_cfg(tiny_coco_dataset, tmp_path, depth=18)
    cfg.MODEL.DEVICE = "cuda"
    with pytest.raises((RuntimeError, AssertionError)):  # what Detectron2 alone gives
        build_model(cfg)
    refused = r"MODEL.DEVICE is 'cuda', but no CUDA GPU is available.*MODEL.DEVICE cpu runs"
    for build in (Trainer, Trainer.build_model, Predictor):
        with pytest.raises(ValueError, match=refused):
            build(cfg)
    config = Path(__file__).parent.parent / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.py"
    lazy = load_lazy_config(str(config), ["train.device=cuda"])
    with pytest.raises(ValueError, match=r"train.device is 'cuda'.*train.device=cpu runs"):
        LazyTrainer.build_model(lazy)


def test_a_models_pooler_backend_is_forced_by_its_config_key():
    """MODEL.ROI_POOLER_BACKEND (a pooler's ``backend``) makes every pooler of the model run that
    implementation; the output is the same numbers (here: traceable on CPU, against separable)."""
    from unittest import mock

    from detectron2.modeling import build_model

    from helpers import small_mask_rcnn_cfg
    from mask_rcnn_ext.layers.backends import IMPLEMENTATIONS

    cfg = small_mask_rcnn_cfg(depth=18)
    cfg.MODEL.ROI_HEADS.NAME = "MaskRCNNExtROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNFCNHead"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignMax"
    features = [torch.randn(2, 8, 16, 20, generator=torch.Generator().manual_seed(s))
                for s in range(4)]
    boxes = [Boxes(torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 60.0, 50.0]]))] * 2
    automatic = build_model(cfg)
    cfg.MODEL.ROI_POOLER_BACKEND = "traceable"
    model = build_model(cfg)
    assert all(p.backend == "traceable" for pooler in (model.roi_heads.box_pooler,
                                                       model.roi_heads.mask_pooler)
               for p in pooler.level_poolers)
    row = IMPLEMENTATIONS["roi_align_max"]
    traced = mock.Mock(wraps=row[Backend.TRACEABLE])
    with mock.patch.dict(row, {Backend.TRACEABLE: traced}):
        expected = automatic.roi_heads.box_pooler(features, boxes)
        assert traced.call_count == 0  # "auto" on CPU: separable
        pooled = model.roi_heads.box_pooler(features, boxes)
    assert traced.call_count > 0
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)


def test_a_pooler_backend_that_cannot_run_is_refused_naming_key_value_and_choices():
    from detectron2.modeling import build_model

    from helpers import small_mask_rcnn_cfg

    cfg = small_mask_rcnn_cfg(depth=18)
    cfg.MODEL.ROI_HEADS.NAME = "MaskRCNNExtROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNFCNHead"
    cfg.MODEL.DEVICE = "meta"  # the model's structure is what is checked
    cases = {
        ("ROIAlignV2", "cuda_kernel"): "MODEL.ROI_POOLER_BACKEND is 'cuda_kernel', which is no "
                                       "RoI pooling implementation; choices for mode='avg' of "
                                       "roi_align on meta: auto, separable, torchvision, "
                                       "traceable",
        ("ROIAlignMax", "torchvision"): "MODEL.ROI_POOLER_BACKEND is 'torchvision', which has no "
                                        "mode='max' of roi_align; choices",
        ("PreciseROIPool", "triton"): "MODEL.ROI_POOLER_BACKEND is 'triton', which runs on CUDA "
                                      "only, not on meta; choices for precise_roi_pool on meta: "
                                      "auto, separable, traceable",
        ("ROIAlignRotated", "separable"): "MODEL.ROI_POOLER_BACKEND is 'separable', but pooler "
                                          "type 'ROIAlignRotated' has no implementations to "
                                          "choose from",
    }
    for (pooler_type, backend), message in cases.items():
        cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = pooler_type
        cfg.MODEL.ROI_POOLER_BACKEND = backend
        with pytest.raises(ValueError, match=re.escape(message)):
            build_model(cfg)
    # A pooler built in Python (or by a LazyConfig) names its own argument.
    with pytest.raises(ValueError, match="backend is 'gpu'"):
        ROIPooler(7, (0.25,), 0, "ROIAlignV2", backend="gpu")

"""MODEL.SPEEDUPS: frozen batch norm folded into convolutions, and the channels-last layout, change
a model's outputs and gradients only by float rounding, and keep its state dict stock."""

import numpy as np
import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from helpers import small_mask_rcnn_cfg
from mask_rcnn_ext.modeling.speedups import (
    FoldedFrozenBNConv2d,
    apply_speedups,
    fold_frozen_batchnorm,
    memory_format,
)
from support.models import calibrated_model, synthetic_images, training_batch


def _conv_with_frozen_bn(bias: bool, dtype) -> Conv2d:
    generator = torch.Generator().manual_seed(0)
    norm = FrozenBatchNorm2d(6)
    for buffer in (norm.weight, norm.bias, norm.running_mean):
        buffer.copy_(torch.randn(6, generator=generator))
    norm.running_var.copy_(torch.rand(6, generator=generator) + 0.1)
    conv = Conv2d(4, 6, 3, padding=1, stride=2, bias=bias, norm=norm, activation=F.relu)
    torch.nn.init.normal_(conv.weight, generator=generator)
    if bias:
        torch.nn.init.normal_(conv.bias, generator=generator)
    return conv.to(dtype)


@pytest.mark.parametrize("bias", [False, True])
def test_folded_conv_equals_conv_then_frozen_batchnorm(bias):
    reference = _conv_with_frozen_bn(bias, torch.float64)
    folded = _conv_with_frozen_bn(bias, torch.float64)
    assert fold_frozen_batchnorm(folded) == 1 and type(folded) is FoldedFrozenBNConv2d
    assert folded.state_dict().keys() == reference.state_dict().keys()
    inputs = torch.randn(2, 4, 9, 11, dtype=torch.float64, requires_grad=True)
    expected = reference(inputs)
    grad_output = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (inputs, reference.weight), grad_output)
    actual = folded(inputs)
    actual_grads = torch.autograd.grad(actual, (inputs, folded.weight), grad_output)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_memory_format_setting():
    assert memory_format("auto", "cpu") == torch.channels_last
    assert memory_format("auto", "cuda:0") == torch.contiguous_format
    assert memory_format("contiguous", "cpu") == torch.contiguous_format
    with pytest.raises(ValueError, match=r"MODEL.SPEEDUPS.MEMORY_FORMAT.*'nhwc'"):
        memory_format("nhwc", "cpu")


def _frozen_bn_cfg():
    cfg = small_mask_rcnn_cfg(depth=18)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.FPN.NORM = ""
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.ROI_HEADS.NAME = "MaskRCNNExtROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNFCNHead"
    cfg.MODEL.SPEEDUPS.FOLD_FROZEN_BATCHNORM = True
    cfg.MODEL.SPEEDUPS.MEMORY_FORMAT = "channels_last"
    return cfg


def test_model_outputs_and_training_are_unchanged_within_rounding():
    cfg = _frozen_bn_cfg()
    (image, objects), = synthetic_images(1, (64, 96))
    stock = calibrated_model(cfg, image)
    fast = calibrated_model(cfg, image)
    assert apply_speedups(fast, cfg) is fast
    assert sum(type(m) is FoldedFrozenBNConv2d for m in fast.modules()) == 20  # all of R-18's
    assert fast.state_dict().keys() == stock.state_dict().keys()

    inputs = [{"image": torch.from_numpy(image.transpose(2, 0, 1).copy())}]
    with torch.no_grad():
        expected, actual = stock(inputs)[0]["instances"], fast(inputs)[0]["instances"]
    assert len(actual) == len(expected) > 0
    torch.testing.assert_close(actual.pred_boxes.tensor, expected.pred_boxes.tensor,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(actual.scores, expected.scores, rtol=1e-4, atol=1e-4)
    assert torch.equal(actual.pred_classes, expected.pred_classes)
    differing = (actual.pred_masks != expected.pred_masks).float().mean().item()
    assert differing < 1e-4

    # Training: the same losses; and the same backbone gradients for a fixed loss on its features
    # (the detector's own losses pick proposals by near-tied random-weight scores, so a rounding
    # difference can pick another proposal, which is not what is tested here).
    batch = training_batch([(image, objects)], cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    losses = []
    for model in (stock, fast):
        model.train()
        torch.manual_seed(0)  # the same proposal sampling
        with EventStorage():
            losses.append({name: value.item() for name, value in model(batch).items()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-6)

    pixels = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    gradients = []
    for model in (stock, fast):
        features = model.backbone(pixels)
        weights = torch.Generator().manual_seed(1)
        loss = sum((f * torch.randn(f.shape, generator=weights)).sum()
                   for _, f in sorted(features.items()))
        parameters = [p for p in model.backbone.parameters() if p.requires_grad]
        gradients.append(torch.autograd.grad(loss, parameters))
    for fast_grad, stock_grad in zip(gradients[1], gradients[0], strict=True):
        torch.testing.assert_close(fast_grad, stock_grad, rtol=1e-4,
                                   atol=1e-5 * stock_grad.abs().max().item())


def test_trainer_and_predictor_apply_the_config(tiny_coco_dataset, tmp_path):
    from mask_rcnn_ext.engine import Predictor, Trainer

    cfg = _frozen_bn_cfg()
    cfg.DATASETS.TRAIN = (tiny_coco_dataset,)
    cfg.OUTPUT_DIR = str(tmp_path)
    for model in (Trainer.build_model(cfg), Predictor(cfg, check_weights=False).model):
        assert any(type(m) is FoldedFrozenBNConv2d for m in model.modules())
        assert model.backbone.bottom_up.stem.conv1.weight.is_contiguous(
            memory_format=torch.channels_last)
    cfg.MODEL.SPEEDUPS.FOLD_FROZEN_BATCHNORM = False
    cfg.MODEL.SPEEDUPS.MEMORY_FORMAT = "contiguous"
    model = Trainer.build_model(cfg)
    assert not any(type(m) is FoldedFrozenBNConv2d for m in model.modules())
    assert model.backbone.bottom_up.stem.conv1.weight.is_contiguous()
    assert np.isfinite(sum(p.sum().item() for p in model.parameters()))

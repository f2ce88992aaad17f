"""Detectron2's compiled deformable-convolution entry points, on ``torchvision.ops.deform_conv2d``.

Detectron2 (``layers/deform_conv.py``) calls these with preallocated output and gradient tensors,
which are written in place; the ``columns``/``ones`` buffers of its CUDA kernel are unused here.
torchvision's kernel uses the same offset layout (per deformable group and kernel tap, a (dy, dx)
pair) and the same DCNv2 modulation, and runs on CPU and CUDA alike. Backward passes are taken by
autograd through torchvision's differentiable op.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import deform_conv2d

__all__ = [
    "deform_conv_backward_filter",
    "deform_conv_backward_input",
    "deform_conv_forward",
    "modulated_deform_conv_backward",
    "modulated_deform_conv_forward",
]


def _check_layout(
    op: str, input: Tensor, weight: Tensor, offset: Tensor, kernel_h: int, kernel_w: int,
    group: int, deformable_group: int,
) -> None:
    """torchvision infers the groups from tensor shapes; refuse arguments that disagree."""
    if tuple(weight.shape[2:]) != (kernel_h, kernel_w):
        raise ValueError(
            f"{op}: kernel size {(kernel_h, kernel_w)} does not match weight {tuple(weight.shape)}"
        )
    if input.shape[1] != weight.shape[1] * group:
        raise ValueError(
            f"{op}: group={group} does not match input channels {input.shape[1]} and weight "
            f"{tuple(weight.shape)}"
        )
    if offset.shape[1] != 2 * deformable_group * kernel_h * kernel_w:
        raise ValueError(
            f"{op}: deformable_group={deformable_group} does not match offset channels "
            f"{offset.shape[1]} (expected 2 * groups * {kernel_h} * {kernel_w})"
        )


def _conv(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    return deform_conv2d(
        input, offset, weight, bias,
        stride=(stride_h, stride_w), padding=(pad_h, pad_w), dilation=(dil_h, dil_w), mask=mask,
    )


def _grads(outputs: Tensor, inputs: tuple[Tensor, ...], grad_output: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(outputs, inputs, grad_output, allow_unused=True)


def deform_conv_forward(
    input: Tensor, weight: Tensor, offset: Tensor, output: Tensor, columns: Tensor, ones: Tensor,
    kW: int, kH: int, dW: int, dH: int, padW: int, padH: int, dilationW: int, dilationH: int,
    group: int, deformable_group: int, im2col_step: int,
) -> int:
    """Deformable convolution (DCNv1); writes (N, C_out, H_out, W_out) into ``output``."""
    _check_layout("deform_conv_forward", input, weight, offset, kH, kW, group, deformable_group)
    with torch.no_grad():
        output.copy_(_conv(input, weight, offset, None, None, dH, dW, padH, padW, dilationH,
                           dilationW))
    return 1


def deform_conv_backward_input(
    input: Tensor, offset: Tensor, gradOutput: Tensor, gradInput: Tensor, gradOffset: Tensor,
    weight: Tensor, columns: Tensor, kW: int, kH: int, dW: int, dH: int, padW: int, padH: int,
    dilationW: int, dilationH: int, group: int, deformable_group: int, im2col_step: int,
) -> int:
    """Writes the gradients with respect to the input and the offsets."""
    _check_layout(
        "deform_conv_backward_input", input, weight, offset, kH, kW, group, deformable_group
    )
    with torch.enable_grad():
        x = input.detach().requires_grad_(True)
        off = offset.detach().requires_grad_(True)
        out = _conv(x, weight.detach(), off, None, None, dH, dW, padH, padW, dilationH, dilationW)
        grad_x, grad_off = _grads(out, (x, off), gradOutput)
    gradInput.copy_(grad_x)
    gradOffset.copy_(grad_off)
    return 1


def deform_conv_backward_filter(
    input: Tensor, offset: Tensor, gradOutput: Tensor, gradWeight: Tensor, columns: Tensor,
    ones: Tensor, kW: int, kH: int, dW: int, dH: int, padW: int, padH: int, dilationW: int,
    dilationH: int, group: int, deformable_group: int, scale: float, im2col_step: int,
) -> int:
    """Adds ``scale`` times the gradient with respect to the weight into ``gradWeight``."""
    _check_layout(
        "deform_conv_backward_filter", input, gradWeight, offset, kH, kW, group, deformable_group
    )
    with torch.enable_grad():
        # The convolution is linear in its weight, so the weight's value does not matter here
        # (Detectron2 does not pass it to this entry point).
        w = gradWeight.new_zeros(gradWeight.shape, requires_grad=True)
        out = _conv(input.detach(), w, offset.detach(), None, None, dH, dW, padH, padW,
                    dilationH, dilationW)
        (grad_w,) = _grads(out, (w,), gradOutput)
    gradWeight.add_(grad_w, alpha=scale)
    return 1


def modulated_deform_conv_forward(
    input: Tensor, weight: Tensor, bias: Tensor, ones: Tensor, offset: Tensor, mask: Tensor,
    output: Tensor, columns: Tensor, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
    pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int, deformable_group: int,
    with_bias: bool,
) -> None:
    """Modulated deformable convolution (DCNv2); writes into ``output``."""
    _check_layout(
        "modulated_deform_conv_forward", input, weight, offset, kernel_h, kernel_w, group,
        deformable_group,
    )
    with torch.no_grad():
        output.copy_(_conv(input, weight, offset, mask, bias if with_bias else None, stride_h,
                           stride_w, pad_h, pad_w, dilation_h, dilation_w))


def modulated_deform_conv_backward(
    input: Tensor, weight: Tensor, bias: Tensor, ones: Tensor, offset: Tensor, mask: Tensor,
    columns: Tensor, grad_input: Tensor, grad_weight: Tensor, grad_bias: Tensor,
    grad_offset: Tensor, grad_mask: Tensor, grad_output: Tensor, kernel_h: int, kernel_w: int,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    group: int, deformable_group: int, with_bias: bool,
) -> None:
    """Writes the gradients with respect to input, weight, bias (if used), offset and mask."""
    _check_layout(
        "modulated_deform_conv_backward", input, weight, offset, kernel_h, kernel_w, group,
        deformable_group,
    )
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (input, weight, offset, mask)]
        b = bias.detach().requires_grad_(True) if with_bias else None
        x, w, off, m = leaves
        out = _conv(x, w, off, m, b, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
        grads = _grads(out, tuple(leaves) + ((b,) if with_bias else ()), grad_output)
    targets = [grad_input, grad_weight, grad_offset, grad_mask] + ([grad_bias] if with_bias else [])
    for target, grad in zip(targets, grads, strict=True):
        target.copy_(grad)

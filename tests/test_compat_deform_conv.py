"""The compat layer's deformable-convolution entry points against a brute-force reference.

The entry points are called with Detectron2's argument conventions (see its
``layers/deform_conv.py``); the reference samples every kernel tap of every output pixel one by
one, in differentiable torch scalar ops, so autograd through it gives reference gradients.
"""

import math

import pytest
import torch

from detectron2_compat import deform_conv as ops


def _sample(image, y, x):
    """Bilinear sample of a (C, H, W) image at (y, x); zero outside, corner by corner (DCN rule)."""
    _, height, width = image.shape
    y_value, x_value = float(y.detach()), float(x.detach())
    if not (-1 < y_value < height and -1 < x_value < width):
        return image.new_zeros(image.shape[0])
    y0, x0 = math.floor(y_value), math.floor(x_value)
    value = image.new_zeros(image.shape[0])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                value = value + wy * wx * image[:, yy, xx]
    return value


def _reference(x, weight, offset, mask, bias, stride, padding, dilation, deformable_groups):
    n, c_in, height, width = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c_in // c_per_group
    out_h = (height + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    channels_per_dg = c_in // deformable_groups
    rows = []
    for b in range(n):
        columns = []  # per output pixel: (C_in * kh * kw) sampled values
        for oy in range(out_h):
            for ox in range(out_w):
                taps = []
                for g in range(deformable_groups):
                    image = x[b, g * channels_per_dg:(g + 1) * channels_per_dg]
                    for i in range(kh):
                        for j in range(kw):
                            tap = g * kh * kw + i * kw + j
                            y = oy * stride - padding + i * dilation + offset[b, 2 * tap, oy, ox]
                            xx = ox * stride - padding + j * dilation + offset[b, 2 * tap + 1, oy,
                                                                                ox]
                            value = _sample(image, y, xx)
                            if mask is not None:
                                value = value * mask[b, tap, oy, ox]
                            taps.append(value)
                # (deformable_groups * kh * kw, channels_per_dg) -> (C_in, kh * kw)
                sampled = torch.stack(taps).view(deformable_groups, kh * kw, channels_per_dg)
                columns.append(sampled.permute(0, 2, 1).reshape(c_in, kh * kw))
        columns = torch.stack(columns)  # (P, C_in, K)
        out = []
        for g in range(groups):
            cols = columns[:, g * c_per_group:(g + 1) * c_per_group].flatten(1)
            w = weight[g * (c_out // groups):(g + 1) * (c_out // groups)].flatten(1)
            out.append(cols @ w.T)
        image_out = torch.cat(out, dim=1).T.reshape(c_out, out_h, out_w)
        if bias is not None:
            image_out = image_out + bias[:, None, None]
        rows.append(image_out)
    return torch.stack(rows)


CASES = [
    # stride, padding, dilation, groups, deformable_groups
    (1, 1, 1, 1, 1),
    (2, 0, 1, 2, 2),
    (1, 2, 2, 1, 2),
]


def _inputs(groups, deformable_groups, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 5, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, 4 // groups, 3, 3, generator=generator, dtype=torch.float64)
    offset_channels = 2 * deformable_groups * 9
    offset = torch.randn(2, offset_channels, 5, 6, generator=generator, dtype=torch.float64) * 1.5
    mask = torch.rand(2, deformable_groups * 9, 5, 6, generator=generator, dtype=torch.float64)
    bias = torch.randn(6, generator=generator, dtype=torch.float64)
    return x, weight, offset, mask, bias


@pytest.mark.parametrize("stride,padding,dilation,groups,deformable_groups", CASES)
def test_deform_conv_forward_and_backward(stride, padding, dilation, groups, deformable_groups):
    x, weight, offset, _, _ = _inputs(groups, deformable_groups, seed=0)
    out_size = (
        (5 + 2 * padding - dilation * 2 - 1) // stride + 1,
        (6 + 2 * padding - dilation * 2 - 1) // stride + 1,
    )
    offset = offset[:, :, :out_size[0], :out_size[1]].contiguous()
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, offset)]
    expected = _reference(*leaves[:2], leaves[2], None, None, stride, padding, dilation,
                          deformable_groups)
    grad_output = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, leaves, grad_output)

    conv_args = (3, 3, stride, stride, padding, padding, dilation, dilation, groups,
                 deformable_groups)
    output = x.new_empty(expected.shape)
    ops.deform_conv_forward(x, weight, offset, output, x.new_empty(0), x.new_empty(0),
                            *conv_args, 64)
    torch.testing.assert_close(output, expected)

    grad_input, grad_offset = torch.zeros_like(x), torch.zeros_like(offset)
    ops.deform_conv_backward_input(x, offset, grad_output, grad_input, grad_offset, weight,
                                   x.new_empty(0), *conv_args, 64)
    grad_weight = torch.zeros_like(weight)
    ops.deform_conv_backward_filter(x, offset, grad_output, grad_weight, x.new_empty(0),
                                    x.new_empty(0), *conv_args, 1.0, 64)
    for ours, reference in zip((grad_input, grad_weight, grad_offset), expected_grads, strict=True):
        torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("stride,padding,dilation,groups,deformable_groups", CASES[:2])
def test_modulated_deform_conv_forward_and_backward(
    stride, padding, dilation, groups, deformable_groups, with_bias
):
    x, weight, offset, mask, bias = _inputs(groups, deformable_groups, seed=1)
    out_size = (
        (5 + 2 * padding - dilation * 2 - 1) // stride + 1,
        (6 + 2 * padding - dilation * 2 - 1) // stride + 1,
    )
    offset = offset[:, :, :out_size[0], :out_size[1]].contiguous()
    mask = mask[:, :, :out_size[0], :out_size[1]].contiguous()
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, offset, mask, bias)]
    expected = _reference(leaves[0], leaves[1], leaves[2], leaves[3],
                          leaves[4] if with_bias else None, stride, padding, dilation,
                          deformable_groups)
    grad_output = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, leaves if with_bias else leaves[:4],
                                         grad_output)

    conv_args = (3, 3, stride, stride, padding, padding, dilation, dilation, groups,
                 deformable_groups, with_bias)
    bias_arg = bias if with_bias else x.new_empty(1)
    output = x.new_empty(expected.shape)
    ops.modulated_deform_conv_forward(x, weight, bias_arg, x.new_empty(0), offset, mask, output,
                                      x.new_empty(0), *conv_args)
    torch.testing.assert_close(output, expected)

    grads = [torch.zeros_like(t) for t in (x, weight, bias_arg, offset, mask)]
    ops.modulated_deform_conv_backward(x, weight, bias_arg, x.new_empty(0), offset, mask,
                                       x.new_empty(0), *grads[:3], grads[3], grads[4],
                                       grad_output, *conv_args)
    ours = [grads[0], grads[1], grads[3], grads[4]] + ([grads[2]] if with_bias else [])
    for value, reference in zip(ours, expected_grads, strict=True):
        torch.testing.assert_close(value, reference)


def test_deform_conv_rejects_inconsistent_groups():
    x, weight, offset, _, _ = _inputs(1, 1, seed=2)
    output = x.new_empty(2, 6, 5, 6)
    with pytest.raises(ValueError, match="deformable_group=2"):
        ops.deform_conv_forward(x, weight, offset, output, x.new_empty(0), x.new_empty(0),
                                3, 3, 1, 1, 1, 1, 1, 1, 1, 2, 64)

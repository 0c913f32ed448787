"""
The two autograd functions behind every converted layer: one for every convolution (1-, 2- and
3-d, transposed or not), one for linear layers, whatever the rule. The rule only supplies B, or,
for a rule with ``error_feedback`` (direct feedback alignment), the input gradient itself.
"""

from typing import Optional

import torch
import torch.nn.functional as F


def _autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    device_type = x.device.type
    if device_type in ("cuda", "cpu", "xpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def _feedback_weight(rule, weight, feedback, input):
    """
    B for one backward pass, made from W and the layer's feedback tensor, as (M, s): B = M * s, s
    applied by the caller to the input gradient, or (B, None). A scalar factor of B is applied to
    whichever of M and the input gradient (shaped like ``input``) is smaller: one elementwise pass
    less for sign-symmetry's sign(W) * s.
    """
    b, scale = rule.feedback_weight_parts(weight, feedback)
    if scale is not None and b.numel() <= input.numel():
        return b.mul_(scale), None
    return b, scale


def _sent_input_gradient(ctx, need_input, input, feedback) -> Optional[torch.Tensor]:
    """The input gradient of an ``error_feedback`` rule (it does not come from the output
    gradient), or None: the input gradient is the output gradient sent through B."""
    if need_input and ctx.rule.error_feedback:
        return ctx.rule.input_gradient(input, feedback)
    return None


class _FeedbackConvFunction(torch.autograd.Function):
    """Every convolution: ``args`` = (stride, padding, dilation, transposed, output_padding,
    groups), as ``aten.convolution`` takes them."""

    @staticmethod
    def forward(ctx, input, weight, bias, feedback, rule, args):
        ctx.save_for_backward(input, weight, feedback)
        ctx.rule, ctx.args, ctx.has_bias = rule, args, bias is not None
        return torch.ops.aten.convolution(input, weight, bias, *args)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, feedback = ctx.saved_tensors
        need_input, need_weight, need_bias, need_feedback = ctx.needs_input_grad[:4]
        sent = _sent_input_gradient(ctx, need_input, input, feedback)
        need_input = need_input and sent is None
        b, scale = (
            _feedback_weight(ctx.rule, weight, feedback, input) if need_input else (weight, None)
        )
        _, _, _, transposed, _, _ = ctx.args
        bias_sizes = [weight.shape[1] * ctx.args[5] if transposed else weight.shape[0]]
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output,
            input,
            b,
            bias_sizes if ctx.has_bias else None,
            *ctx.args,
            [need_input, need_weight or need_feedback, need_bias and ctx.has_bias],
        )
        if scale is not None:
            grad_input = grad_input.mul_(scale)
        grad_input = sent if sent is not None else grad_input
        grad_feedback = ctx.rule.feedback_grad(grad_weight) if need_feedback else None
        grad_weight = grad_weight if need_weight else None
        return grad_input, grad_weight, grad_bias, grad_feedback, None, None


class _FeedbackLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, feedback, rule):
        ctx.save_for_backward(input, weight, feedback)
        ctx.rule, ctx.has_bias = rule, bias is not None
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, feedback = ctx.saved_tensors
        need_input, need_weight, need_bias, need_feedback = ctx.needs_input_grad[:4]
        grad_input = grad_weight = grad_bias = grad_feedback = None
        grad_input = _sent_input_gradient(ctx, need_input, input, feedback)
        if need_input and grad_input is None:
            b, scale = _feedback_weight(ctx.rule, weight, feedback, input)
            grad_input = grad_output.matmul(b)
            if scale is not None:
                grad_input = grad_input.mul_(scale)
        grad_2d = grad_output.reshape(-1, grad_output.shape[-1])
        if need_weight or need_feedback:
            grad_weight = grad_2d.t().mm(input.reshape(-1, input.shape[-1]))
        if need_feedback:
            grad_feedback = ctx.rule.feedback_grad(grad_weight)
        if ctx.has_bias and need_bias:
            grad_bias = grad_2d.sum(0)
        grad_weight = grad_weight if need_weight else None
        return grad_input, grad_weight, grad_bias, grad_feedback, None

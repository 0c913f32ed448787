"""Conv2d and Linear layers whose backward pass uses a learning rule's feedback weight B.

There is exactly one autograd path for convolutions and one for linear layers, whatever the rule:
the rule only supplies B. Per conv, the backward is the single ``aten.convolution_backward`` call
that native autograd makes, with B passed where W would be: it returns the input gradient
computed with B and the true weight gradient (which depends on the input and the output gradient
only). Nothing beyond what native autograd saves is kept for the backward pass, and B is made only
when the backward pass runs.

Layers are converted in place by swapping their class (see :func:`feedback_class`), so that every
reference to them stays valid (detectron2's FPN, for one, keeps its convs in plain lists too) and
parameter names, values and ``isinstance`` checks are unchanged.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .rules import LearningRule, build_rule, layer_seed

__all__ = [
    "FeedbackLayer",
    "FeedbackConv2d",
    "FeedbackLinear",
    "feedback_class",
    "convert_layer",
    "is_converted",
]


def _autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    device_type = x.device.type
    if device_type in ("cuda", "cpu", "xpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class _FeedbackConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, rule, state, stride, padding, dilation, groups):
        ctx.save_for_backward(input, weight, state)
        ctx.rule = rule
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return torch.ops.aten.convolution(
            input, weight, bias, stride, padding, dilation, False, [0, 0], groups
        )

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, state = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        feedback = ctx.rule.feedback(weight, state)
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output,
            input,
            feedback,
            [weight.shape[0]] if ctx.has_bias else None,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [need_input, need_weight, need_bias and ctx.has_bias],
        )
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


class _FeedbackLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, rule, state):
        ctx.save_for_backward(input, weight, state)
        ctx.rule = rule
        ctx.has_bias = bias is not None
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, state = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_output.matmul(ctx.rule.feedback(weight, state))
        grad_2d = grad_output.reshape(-1, grad_output.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_weight = grad_2d.t().mm(input.reshape(-1, input.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(0)
        return grad_input, grad_weight, grad_bias, None, None


class FeedbackLayer:
    """
    Mixin of converted layers. A converted layer has

    * ``learning_rule``: the :class:`~bio_detectron.rules.LearningRule` object;
    * ``rule``: its name;
    * ``feedback``: a buffer holding the rule's fixed state, for rules that keep one;
    * :meth:`feedback_weight`: the B its next backward pass will use.
    """

    learning_rule: LearningRule

    @property
    def rule(self) -> str:
        return self.learning_rule.name

    def set_rule(self, rule, *, seed: int = 0, name: str = "", **options):
        """
        Set the layer's learning rule and make the rule's state.

        Args:
            rule (str or LearningRule): see :func:`~bio_detectron.rules.build_rule`.
            seed (int): the run's seed; with ``name`` it decides the layer's fixed feedback.
            name (str): the layer's module name in its model.
        """
        self.learning_rule = build_rule(rule, **options)
        generator = torch.Generator().manual_seed(layer_seed(seed, name))
        state = self.learning_rule.init_feedback(self.weight, generator)
        if "feedback" in self._buffers:
            del self._buffers["feedback"]
        if state is not None:
            self.register_buffer("feedback", state.to(self.weight.device))

    def _feedback_state(self) -> Optional[torch.Tensor]:
        return self._buffers.get("feedback")

    @torch.no_grad()
    def feedback_weight(self) -> torch.Tensor:
        """
        Returns:
            Tensor: B, the weight the backward pass uses in place of W to propagate gradients.
        """
        return self.learning_rule.feedback(self.weight, self._feedback_state())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint of the unconverted model has no feedback buffer: keep the one made at
        # conversion rather than reporting it missing, so stock checkpoints load strictly.
        key = prefix + "feedback"
        if "feedback" in self._buffers and key not in state_dict:
            state_dict[key] = self._buffers["feedback"]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return super().extra_repr() + f", rule={self.rule}"


class FeedbackConv2dMixin(FeedbackLayer):
    def _conv_forward(self, input, weight, bias):
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            pad = self._reversed_padding_repeated_twice
            symmetric = all(pad[i] == pad[i + 1] for i in range(0, len(pad), 2))
            if self.padding_mode == "zeros" and symmetric:
                padding = (pad[2], pad[0])
            else:
                mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
                input, padding = F.pad(input, pad, mode=mode), (0, 0)
        dtype = _autocast_dtype(input)
        if dtype is not None:
            input, weight = input.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        return _FeedbackConv2dFunction.apply(
            input,
            weight,
            bias,
            self.learning_rule,
            self._feedback_state(),
            list(self.stride),
            list(padding),
            list(self.dilation),
            self.groups,
        )

    def _conv_norm_activation_forward(self, x):
        # nn.Conv2d's forward, and detectron2's Conv2d (which calls F.conv2d itself, then its
        # optional norm and activation).
        x = self._conv_forward(x, self.weight, self.bias)
        if getattr(self, "norm", None) is not None:
            x = self.norm(x)
        if getattr(self, "activation", None) is not None:
            x = self.activation(x)
        return x


class FeedbackLinearMixin(FeedbackLayer):
    def forward(self, input):
        weight, bias = self.weight, self.bias
        dtype = _autocast_dtype(input)
        if dtype is not None:
            input, weight = input.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        return _FeedbackLinearFunction.apply(
            input, weight, bias, self.learning_rule, self._feedback_state()
        )


class FeedbackConv2d(FeedbackConv2dMixin, nn.Conv2d):
    """
    ``nn.Conv2d`` trained with a learning rule. Takes nn.Conv2d's arguments plus ``rule``,
    ``seed``, ``name`` and ``rule_options``; optional ``norm`` and ``activation`` modules are
    applied after the convolution, as in detectron2's ``Conv2d``.
    """

    def __init__(
        self, *args, rule="backprop", seed=0, name="", rule_options=None, norm=None,
        activation=None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.norm, self.activation = norm, activation
        self.set_rule(rule, seed=seed, name=name, **(rule_options or {}))

    forward = FeedbackConv2dMixin._conv_norm_activation_forward


class FeedbackLinear(FeedbackLinearMixin, nn.Linear):
    """``nn.Linear`` trained with a learning rule; see :class:`FeedbackConv2d`."""

    def __init__(self, *args, rule="backprop", seed=0, name="", rule_options=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_rule(rule, seed=seed, name=name, **(rule_options or {}))


_CLASSES = {nn.Conv2d: FeedbackConv2d, nn.Linear: FeedbackLinear}


def _forwards_replaced():
    """Conv forwards known to be 'conv, then optional norm and activation'."""
    known = [nn.Conv2d.forward]
    try:
        from detectron2.layers import Conv2d as D2Conv2d

        known.append(D2Conv2d.forward)
    except ImportError:  # detectron2 is optional at this level
        pass
    return known


def feedback_class(cls: type) -> type:
    """
    Args:
        cls: ``nn.Conv2d``, ``nn.Linear`` or a subclass (e.g. detectron2's ``Conv2d``).

    Returns:
        type: a subclass of ``cls`` whose instances use a learning rule (made once per class).
        A conv subclass with a forward of its own must call ``self._conv_forward`` for the rule
        to act; nn.Conv2d's and detectron2's forwards are replaced by the same sequence
        (conv, then optional ``norm`` and ``activation``).
    """
    if issubclass(cls, FeedbackLayer):
        return cls
    if cls not in _CLASSES:
        if issubclass(cls, nn.Conv2d):
            attrs = {}
            if cls.forward in _forwards_replaced():
                attrs["forward"] = FeedbackConv2dMixin._conv_norm_activation_forward
            bases = (FeedbackConv2dMixin, cls)
        elif issubclass(cls, nn.Linear):
            attrs, bases = {}, (FeedbackLinearMixin, cls)
        else:
            raise TypeError(f"cannot convert {cls.__name__}: only nn.Conv2d and nn.Linear")
        name = f"Feedback{cls.__name__}"
        while name in globals():
            name += "_"
        attrs.update(__module__=__name__, __qualname__=name)
        new_cls = type(name, bases, attrs)
        globals()[name] = new_cls  # lets pickle find it by name in this process
        _CLASSES[cls] = new_cls
    return _CLASSES[cls]


def convert_layer(module: nn.Module, rule, *, seed: int = 0, name: str = "", **options):
    """Convert one Conv2d/Linear in place (its class is swapped) and return it."""
    if not isinstance(module, FeedbackLayer):
        module.__class__ = feedback_class(type(module))
    module.set_rule(rule, seed=seed, name=name, **options)
    return module


def is_converted(module: nn.Module) -> bool:
    return isinstance(module, FeedbackLayer)

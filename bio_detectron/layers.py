"""Convolution and linear layers whose backward pass uses a learning rule's feedback weight B.

There is exactly one autograd path for convolutions (1-, 2- and 3-d, transposed or not) and one for
linear layers, whatever the rule: the rule only supplies B. Per conv, the backward is the single
``aten.convolution_backward`` call that native autograd makes, with B passed where W would be: it
returns the input gradient computed with B and the true weight gradient (which depends on the input
and the output gradient only). Nothing beyond what native autograd saves is kept for the backward
pass, and B is made only when the backward pass runs.

When no gradient is needed (``torch.no_grad``, ``inference_mode``, parameters and input that do not
require grad, ``torch.jit.trace``, ``torch.export``) a converted layer runs its stock forward
(``F.conv2d``, ``F.linear``, ...), so evaluation costs what it costs without the rule, and traced or
exported graphs are the stock ones.

Existing layers are converted in place by swapping their class (the converter's business:
:mod:`bio_detectron.convert`), so that every reference to them stays valid and parameter names,
values and ``isinstance`` checks are unchanged. Converted layers pickle and deep-copy by their
original class, so a saved model loads in a fresh process.
"""

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ._deprecation import moved_names
from .rules import LearningRule, build_rule, layer_seed

__all__ = [
    "LAYER_TYPES",
    "FeedbackLayer",
    "FeedbackConv2d",
    "FeedbackLinear",
    "is_converted",
]

logger = logging.getLogger(__name__)

# The layer types a rule can act on; subclasses included (see unsupported_reason for the limits).
LAYER_TYPES = (_ConvNd, nn.Linear)

# Key of a converted layer's entry in a state dict's per-module metadata: the tag of the rule
# that made the layer's ``feedback`` tensor (LearningRule.tag()).
METADATA_KEY = "bio_rule"


def _autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    device_type = x.device.type
    if device_type in ("cuda", "cpu", "xpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def _feedback_for(rule, weight, state, input):
    """
    B for one backward pass, as (M, s): B = M * s, s applied by the caller to the input gradient,
    or (B, None). A scalar factor of B is applied to whichever of M and the input gradient (shaped
    like ``input``) is smaller: one elementwise pass less for sign-symmetry's sign(W) * s.
    """
    feedback, scale = rule.feedback_weight_parts(weight, state)
    if scale is not None and feedback.numel() <= input.numel():
        return feedback.mul_(scale), None
    return feedback, scale


class _FeedbackConvFunction(torch.autograd.Function):
    """Every convolution: ``args`` = (stride, padding, dilation, transposed, output_padding,
    groups), as ``aten.convolution`` takes them."""

    @staticmethod
    def forward(ctx, input, weight, bias, state, rule, args):
        ctx.save_for_backward(input, weight, state)
        ctx.rule, ctx.args, ctx.has_bias = rule, args, bias is not None
        return torch.ops.aten.convolution(input, weight, bias, *args)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, state = ctx.saved_tensors
        need_input, need_weight, need_bias, need_state = ctx.needs_input_grad[:4]
        feedback, scale = (
            _feedback_for(ctx.rule, weight, state, input) if need_input else (weight, None)
        )
        _, _, _, transposed, _, _ = ctx.args
        bias_sizes = [weight.shape[1] * ctx.args[5] if transposed else weight.shape[0]]
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output,
            input,
            feedback,
            bias_sizes if ctx.has_bias else None,
            *ctx.args,
            [need_input, need_weight or need_state, need_bias and ctx.has_bias],
        )
        if scale is not None:
            grad_input = grad_input.mul_(scale)
        grad_state = ctx.rule.feedback_grad(grad_weight) if need_state else None
        return grad_input, grad_weight if need_weight else None, grad_bias, grad_state, None, None


class _FeedbackLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, state, rule):
        ctx.save_for_backward(input, weight, state)
        ctx.rule, ctx.has_bias = rule, bias is not None
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, state = ctx.saved_tensors
        need_input, need_weight, need_bias, need_state = ctx.needs_input_grad[:4]
        grad_input = grad_weight = grad_bias = grad_state = None
        if need_input:
            feedback, scale = _feedback_for(ctx.rule, weight, state, input)
            grad_input = grad_output.matmul(feedback)
            if scale is not None:
                grad_input = grad_input.mul_(scale)
        grad_2d = grad_output.reshape(-1, grad_output.shape[-1])
        if need_weight or need_state:
            grad_weight = grad_2d.t().mm(input.reshape(-1, input.shape[-1]))
        if need_state:
            grad_state = ctx.rule.feedback_grad(grad_weight)
        if ctx.has_bias and need_bias:
            grad_bias = grad_2d.sum(0)
        return grad_input, grad_weight if need_weight else None, grad_bias, grad_state, None


class FeedbackLayer:
    """
    Mixin of converted layers. A converted layer has

    * ``learning_rule``: the :class:`~bio_detectron.rules.LearningRule` object;
    * ``rule``: its name;
    * ``feedback``: the rule's feedback tensor, for rules that keep one (a buffer, or a parameter
      for rules whose feedback tensor the optimizer trains);
    * :meth:`feedback_weight`: B, the feedback weight its next backward pass will use.

    **When the feedback tensor is made.** ``feedback`` is made by the rule from the layer's weight
    and a generator seeded with (seed, module name) only. It is made again, in place, at the layer's
    first forward pass that needs a gradient, from the weights the layer has then: the weights
    training starts from, after ``MODEL.WEIGHTS`` or any other checkpoint was loaded and after
    DistributedDataParallel gave every process rank 0's weights. So every process makes the same B
    without communication, and B describes the network that trains, not its random init. It is not
    made again after that, nor when a checkpoint that carries ``feedback`` made by the same rule
    (same options) was loaded: that restores it exactly (resume, hand-off). Loading a checkpoint
    without ``feedback`` but with the layer's weight marks it to be made again from those weights;
    a ``feedback`` made by another rule or with other options is replaced the same way, with a
    warning naming the layer. :func:`make_feedback_now` makes it at once instead.
    """

    learning_rule: LearningRule
    _bio_base: type  # the class the layer had before conversion (set on converted classes)

    @property
    def rule(self) -> str:
        return self.learning_rule.name

    def set_rule(self, rule, *, seed: int = 0, name: str = "", **options):
        """
        Set the layer's learning rule and make the rule's feedback tensor.

        Args:
            rule (str or LearningRule): see :func:`~bio_detectron.rules.build_rule`.
            seed (int): the run's seed; with ``name`` it decides the layer's feedback tensor.
            name (str): the layer's module name in its model.
        """
        self.learning_rule = build_rule(rule, **options)
        self.bio_seed, self.bio_name = int(seed), name
        self._buffers.pop("feedback", None)
        self._parameters.pop("feedback", None)
        self._feedback_pending = False
        state = self._make_feedback()
        if state is None:
            return
        if self.learning_rule.feedback_kind == "parameter":
            self.register_parameter("feedback", nn.Parameter(state))
        else:
            self.register_buffer("feedback", state)
        self._feedback_pending = True

    def _feedback(self) -> Optional[torch.Tensor]:
        return self._buffers.get("feedback", self._parameters.get("feedback"))

    def _make_feedback(self) -> Optional[torch.Tensor]:
        """The feedback tensor made from the current weight (deterministic: seed, name, W)."""
        generator = torch.Generator().manual_seed(layer_seed(self.bio_seed, self.bio_name))
        weight = self.weight.detach()
        state = self.learning_rule.init_feedback(weight.cpu().float(), generator)
        if state is None:
            return None
        if tuple(state.shape) != tuple(weight.shape):
            raise ValueError(
                f"{type(self.learning_rule).__name__}.init_feedback made a feedback tensor of "
                f"shape {tuple(state.shape)} for {self.bio_name or 'a layer'} with weight "
                f"{tuple(weight.shape)}; it must be shaped like W"
            )
        return state.to(device=weight.device, dtype=weight.dtype)

    @torch.no_grad()
    def make_feedback_now(self):
        """Make the feedback tensor from the current weight now, in place (see the class doc)."""
        state = self._feedback()
        # (The alignment probe lends a layer the backprop rule, which keeps no state, for a pass.)
        if state is not None and self.learning_rule.feedback_kind is not None:
            state.copy_(self._make_feedback())
            self._feedback_pending = False

    def _feedback_for_backward(self) -> Optional[torch.Tensor]:
        if self._feedback_pending:
            # Made with a seeded generator, which a compiled graph cannot hold: compiled here, the
            # graph would break; bio_detectron.compile_model makes it before compiling.
            self.make_feedback_now()
        state = self._feedback()
        if state is None or self.learning_rule.feedback_kind is None:
            # The alignment probe lends a layer the backprop rule for a pass: it reads no state,
            # and a trained state must get no gradient from that pass.
            return None
        if self.learning_rule.feedback_kind == "parameter" and not self.weight.requires_grad:
            # A trained state gets W's gradient: none while W is frozen.
            return state.detach()
        return state

    @torch.no_grad()
    def feedback_weight(self) -> torch.Tensor:
        """
        Returns:
            Tensor: B, the weight the next backward pass uses in place of W to propagate gradients
            (before the first training step: the B that the current weights would give).
        """
        state = self._make_feedback() if self._feedback_pending else self._feedback()
        return self.learning_rule.feedback_weight(self.weight, state)

    def _uses_rule(self, input: torch.Tensor) -> bool:
        """Whether this forward pass goes through the rule's autograd path."""
        return (
            torch.is_grad_enabled()
            and (input.requires_grad or self.weight.requires_grad)
            and not _tracing()
        )

    def _cast_for_autocast(self, input, weight, bias):
        dtype = _autocast_dtype(input)
        if dtype is not None:
            input, weight = input.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        return input, weight, bias

    # --- checkpoints -------------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # Module.state_dict keeps per-module metadata (the module's version) in
        # destination._metadata, pickled with the state dict; the rule's tag rides along there.
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None and self._feedback() is not None:
            metadata.setdefault(prefix[:-1], {})[METADATA_KEY] = self.learning_rule.tag()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self._feedback() is None:
            return
        key, tag = prefix + "feedback", self.learning_rule.tag()
        if key not in state_dict:
            # A checkpoint of the unconverted model (model zoo, torchvision) or of a rule without
            # state: not missing; the state is made from the weights loaded, if any.
            if key in missing_keys:
                missing_keys.remove(key)
            if prefix + "weight" in state_dict:
                self._feedback_pending = True
            return
        saved = (local_metadata or {}).get(METADATA_KEY)
        if saved == tag:
            self._feedback_pending = False
        elif saved is None:
            self._feedback_pending = False
            logger.warning(
                f"{key}: the checkpoint does not record which rule made this feedback tensor; it "
                f"is taken as the state of {tag}"
            )
        else:
            self._feedback_pending = True
            logger.warning(
                f"{key}: the checkpoint's feedback was made by {saved}, but this layer learns with "
                f"{tag}; it is not used: the layer's feedback is made again from its weights at "
                "the first training step"
            )

    def __reduce_ex__(self, protocol):
        # Pickle (torch.save(model), deepcopy) by the original class, whose feedback class is
        # rebuilt on load: generated classes do not exist in a fresh process until then.
        from .convert import _new_converted  # the converter makes the classes

        reduced = super().__reduce_ex__(protocol)
        return (_new_converted, (self._bio_base,)) + tuple(reduced[2:])

    def extra_repr(self):
        return super().extra_repr() + f", rule={self.rule}"


class FeedbackConvMixin(FeedbackLayer):
    """Convolutions (``_ConvNd`` subclasses): every forward ends in :meth:`_feedback_conv`."""

    def _feedback_conv(self, input, weight, bias, padding, output_padding):
        input, weight, bias = self._cast_for_autocast(input, weight, bias)
        args = (self.stride, padding, self.dilation, self.transposed, output_padding, self.groups)
        return _FeedbackConvFunction.apply(
            input, weight, bias, self._feedback_for_backward(), self.learning_rule, args
        )

    def _conv_forward(self, input, weight, bias):
        # Called by nn.Conv{1,2,3}d.forward, by subclasses' forwards that call it, and by the
        # conv-norm-activation forward below.
        if not self._uses_rule(input):
            return self._bio_base._conv_forward(self, input, weight, bias)
        return self._rule_conv_forward(input, weight, bias)

    def _rule_conv_forward(self, input, weight, bias):
        n = len(self.kernel_size)
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            pad = self._reversed_padding_repeated_twice  # last dim first, (before, after) each
            symmetric = all(pad[i] == pad[i + 1] for i in range(0, 2 * n, 2))
            if self.padding_mode == "zeros" and symmetric:
                padding = tuple(pad[2 * (n - 1 - i)] for i in range(n))
            else:
                mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
                input, padding = F.pad(input, pad, mode=mode), (0,) * n
        return self._feedback_conv(input, weight, bias, padding, (0,) * n)

    def _conv_norm_activation_forward(self, x):
        # detectron2's Conv2d: the convolution, then its optional norm and activation.
        if not self._uses_rule(x):
            return self._bio_base.forward(self, x)
        x = self._rule_conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _transposed_forward(self, input, output_size=None):
        # nn.ConvTranspose{1,2,3}d.forward, through the rule's path.
        if not self._uses_rule(input):
            return self._bio_base.forward(self, input, output_size)
        if self.padding_mode != "zeros":
            raise ValueError(
                f"Only 'zeros' padding mode is supported for {self._bio_base.__name__}"
            )
        n = len(self.kernel_size)
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, n, self.dilation
        )
        return self._feedback_conv(input, self.weight, self.bias, self.padding, output_padding)


class FeedbackLinearMixin(FeedbackLayer):
    def forward(self, input):
        if not self._uses_rule(input):
            return self._bio_base.forward(self, input)
        input, weight, bias = self._cast_for_autocast(input, self.weight, self.bias)
        return _FeedbackLinearFunction.apply(
            input, weight, bias, self._feedback_for_backward(), self.learning_rule
        )


class FeedbackConv2d(FeedbackConvMixin, nn.Conv2d):
    """
    ``nn.Conv2d`` trained with a learning rule. Takes nn.Conv2d's arguments plus ``rule``,
    ``seed``, ``name`` and ``rule_options``; optional ``norm`` and ``activation`` modules are
    applied after the convolution, as in detectron2's ``Conv2d``.
    """

    _bio_base = nn.Conv2d

    def __init__(
        self,
        *args,
        rule="backprop",
        seed=0,
        name="",
        rule_options=None,
        norm=None,
        activation=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.norm, self.activation = norm, activation
        self.set_rule(rule, seed=seed, name=name, **(rule_options or {}))

    def forward(self, x):
        x = self._conv_forward(x, self.weight, self.bias)
        # Also the forward of converted nn.Conv2d layers, which have no norm or activation:
        # looked up without nn.Module.__getattr__, whose miss raises (slow, at every forward).
        norm = self._modules.get("norm")
        activation = self.__dict__.get("activation", self._modules.get("activation"))
        if norm is not None:
            x = norm(x)
        if activation is not None:
            x = activation(x)
        return x


class FeedbackLinear(FeedbackLinearMixin, nn.Linear):
    """``nn.Linear`` trained with a learning rule; see :class:`FeedbackConv2d`."""

    _bio_base = nn.Linear

    def __init__(self, *args, rule="backprop", seed=0, name="", rule_options=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_rule(rule, seed=seed, name=name, **(rule_options or {}))


def is_converted(module: nn.Module) -> bool:
    return isinstance(module, FeedbackLayer)


# Moved to bio_detectron.convert with the rest of the class-swap machinery; the old names keep
# working (pickles written before the move name bio_detectron.layers._new_converted).
__getattr__ = moved_names(
    __name__,
    {
        name: ("bio_detectron.convert", name, ())
        for name in ("feedback_class", "convert_layer", "revert_layer", "unsupported_reason")
    },
)


def _new_converted(base: type):
    """Unpickling a model saved before the class swap moved to bio_detectron.convert."""
    from .convert import _new_converted as new_converted

    return new_converted(base)

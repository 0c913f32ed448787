"""Convolution and linear layers whose backward pass uses a learning rule's feedback weight B.

There is exactly one autograd path for convolutions (1-, 2- and 3-d, transposed or not) and one for
linear layers, whatever the rule: the rule only supplies B. Per conv, the backward is the single
``aten.convolution_backward`` call that native autograd makes, with B passed where W would be: it
returns the input gradient computed with B and the true weight gradient (which depends on the input
and the output gradient only). Nothing beyond what native autograd saves is kept for the backward
pass, and B itself is made only when the backward pass runs.

When no gradient is needed (``torch.no_grad``, ``inference_mode``, parameters and input that do not
require grad, ``torch.jit.trace``, ``torch.export``) a converted layer runs its stock forward
(``F.conv2d``, ``F.linear``, ...), so evaluation costs what it costs without the rule, and traced or
exported graphs are the stock ones.

Existing layers are converted in place by swapping their class for a subclass made once per layer
class (:func:`feedback_class`; subclasses such as detectron2's ``Conv2d`` included), so that every
reference to them stays valid (detectron2's FPN, for one, keeps its convs in plain lists too) and
parameter names, values and ``isinstance`` checks are unchanged; :func:`revert_layer` swaps it
back. Converted layers pickle and deep-copy by their original class, so a saved model loads in a
fresh process. Whole models are converted by :mod:`bio_detectron.core.convert`.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .checkpointing import FeedbackCheckpointMixin
from .functions import _autocast_dtype, _FeedbackConvFunction, _FeedbackLinearFunction, _tracing
from .rules import LearningRule, build_rule, layer_seed

__all__ = [
    "LAYER_TYPES",
    "FeedbackLayer",
    "FeedbackConv2d",
    "FeedbackLinear",
    "convert_layer",
    "feedback_class",
    "is_converted",
    "revert_layer",
    "unsupported_reason",
]

# The layer types a rule can act on; subclasses included (see unsupported_reason for the limits).
LAYER_TYPES = (_ConvNd, nn.Linear)


class FeedbackLayer(FeedbackCheckpointMixin):
    """
    Mixin of converted layers. A converted layer has

    * ``learning_rule``: the :class:`~bio_detectron.core.rules.LearningRule` object;
    * ``rule``: its name;
    * ``feedback``: the rule's feedback tensor, for rules that keep one (a buffer, or a parameter
      for rules whose feedback tensor the optimizer trains);
    * :meth:`feedback_weight`: B, the feedback weight its next backward pass will use.

    **When the feedback tensor is made.** ``feedback`` is made by the rule from the layer's weight
    and a generator seeded with (seed, module name) only, whenever the weights it describes are
    set: at conversion (:meth:`set_rule`), and when a state dict or checkpoint loads the layer's
    weight without a feedback tensor made by the same rule (``MODEL.WEIGHTS``, a model zoo or
    torchvision checkpoint), right after that weight is loaded. A checkpoint that carries
    ``feedback`` made by the same rule (same options) restores it exactly (resume, hand-off); one
    made by another rule or with other options is replaced the same way, with a warning naming
    the layer. The trainers' DistributedDataParallel wrapper (``bio_detectron.engine``'s
    ``create_ddp_model``) makes it again from rank 0's weights once it has broadcast them, except
    where a checkpoint restored it, so every process has the same B without communication (with
    a wrapper of your own: ``make_feedback_now(model, keep_restored=True)`` after wrapping). A
    forward pass never makes it, so ``torch.compile`` traces no generator. After changing weights
    by hand, :func:`make_feedback_now` makes it again.
    """

    learning_rule: LearningRule
    _bio_base: type  # the class the layer had before conversion (set on converted classes)
    _feedback_restored = False  # True while ``feedback`` is a checkpoint's, not made from W

    @property
    def rule(self) -> str:
        return self.learning_rule.name

    def set_rule(self, rule, *, seed: int = 0, name: str = "", **options):
        """
        Set the layer's learning rule and make the rule's feedback tensor.

        Args:
            rule (str or LearningRule): see :func:`~bio_detectron.core.rules.build_rule`.
            seed (int): the run's seed; with ``name`` it decides the layer's feedback tensor.
            name (str): the layer's module name in its model.
        """
        self.learning_rule = build_rule(rule, **options)
        self.bio_seed, self.bio_name = int(seed), name
        self._buffers.pop("feedback", None)
        self._parameters.pop("feedback", None)
        self._feedback_restored = False
        feedback = self._make_feedback()
        if feedback is None:
            return
        if self.learning_rule.feedback_kind == "parameter":
            self.register_parameter("feedback", nn.Parameter(feedback))
        else:
            self.register_buffer("feedback", feedback)

    def _feedback(self) -> Optional[torch.Tensor]:
        return self._buffers.get("feedback", self._parameters.get("feedback"))

    def _make_feedback(self) -> Optional[torch.Tensor]:
        """The feedback tensor made from the current weight (deterministic: seed, name, W)."""
        generator = torch.Generator().manual_seed(layer_seed(self.bio_seed, self.bio_name))
        weight, rule = self.weight.detach(), self.learning_rule.bind(self)
        feedback = rule.init_feedback(weight.cpu().float(), generator)
        if feedback is None:
            return None
        if tuple(feedback.shape) != rule.feedback_shape(weight):
            raise ValueError(
                f"{type(self.learning_rule).__name__}.init_feedback made a feedback tensor of "
                f"shape {tuple(feedback.shape)} for {self.bio_name or 'a layer'} with weight "
                f"{tuple(weight.shape)}; it must be shaped {rule.feedback_shape(weight)}"
            )
        return feedback.to(device=weight.device, dtype=weight.dtype)

    @torch.no_grad()
    def make_feedback_now(self):
        """Make the feedback tensor from the current weight now, in place (see the class doc)."""
        feedback = self._feedback()
        # (The alignment probe lends a layer the backprop rule, which keeps none, for a pass.)
        if feedback is not None and self.learning_rule.feedback_kind is not None:
            feedback.copy_(self._make_feedback())
            self._feedback_restored = False

    def _feedback_for_backward(self) -> Optional[torch.Tensor]:
        feedback = self._feedback()
        if feedback is None or self.learning_rule.feedback_kind is None:
            # The alignment probe lends a layer the backprop rule for a pass: it reads no feedback
            # tensor, and a trained one must get no gradient from that pass.
            return None
        if self.learning_rule.feedback_kind == "parameter" and not self.weight.requires_grad:
            # A trained feedback tensor gets W's gradient: none while W is frozen.
            return feedback.detach()
        return feedback

    @torch.no_grad()
    def feedback_weight(self) -> torch.Tensor:
        """
        Returns:
            Tensor: B, the weight the next backward pass uses in place of W to propagate gradients.
        """
        return self.learning_rule.feedback_weight(self.weight, self._feedback())

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

    def __reduce_ex__(self, protocol):
        # Pickle (torch.save(model), deepcopy) by the original class, whose feedback class is
        # rebuilt on load: generated classes do not exist in a fresh process until then.
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
            input, weight, bias, self._feedback_for_backward(), self.learning_rule.bind(self), args
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
            input, weight, bias, self._feedback_for_backward(), self.learning_rule.bind(self)
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


# ----------------------------------------------------------------------------------------------
# The converted class of a layer class, the swap and its undoing
# ----------------------------------------------------------------------------------------------
def _new_converted(base: type):
    """Unpickling: an empty instance of ``base``'s feedback class (its state follows)."""
    cls = feedback_class(base)
    return cls.__new__(cls)


_CLASSES = {nn.Conv2d: FeedbackConv2d, nn.Linear: FeedbackLinear}

_STOCK_CONV_FORWARDS = (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)
_STOCK_TRANSPOSED_FORWARDS = (
    nn.ConvTranspose1d.forward,
    nn.ConvTranspose2d.forward,
    nn.ConvTranspose3d.forward,
)


def _conv_norm_activation_forwards() -> tuple:
    """Conv forwards known to be 'conv, then optional norm and activation'."""
    try:
        from detectron2.layers import Conv2d as D2Conv2d
    except ImportError:  # detectron2 is optional at this level
        return ()
    return (D2Conv2d.forward,)


def _calls_conv_forward(forward) -> bool:
    code = getattr(forward, "__code__", None)
    return code is not None and "_conv_forward" in code.co_names


def _class_unsupported_reason(cls: type) -> Optional[str]:
    """Why instances of ``cls`` cannot learn with a rule by conversion; None when they can."""
    if issubclass(cls, FeedbackLayer):
        return None
    if not issubclass(cls, LAYER_TYPES):
        return f"{cls.__name__} is neither a convolution nor nn.Linear"
    if issubclass(cls, _ConvTransposeNd):
        if cls.forward in _STOCK_TRANSPOSED_FORWARDS:
            return None
        return f"{cls.__name__} has a forward of its own that the rule cannot act through"
    if issubclass(cls, _ConvNd):
        known = _STOCK_CONV_FORWARDS + _conv_norm_activation_forwards()
        if cls.forward in known or _calls_conv_forward(cls.forward):
            return None
        return (
            f"{cls.__name__}.forward does not call self._conv_forward (it computes the "
            "convolution itself), so the rule cannot act on it"
        )
    if cls.forward is nn.Linear.forward:
        return None
    return f"{cls.__name__} has a forward of its own that the rule cannot act through"


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """
    Args:
        module: a layer (an instance of :data:`LAYER_TYPES`).

    Returns:
        str or None: why converting ``module`` would not make it learn with a rule (its class
        computes its output without the converted path), or None when it can be converted. Weights
        read by *other* modules are checked by :func:`bio_detectron.convert_model`.
    """
    if isinstance(getattr(module, "weight", None), nn.parameter.UninitializedParameter):
        return f"{type(module).__name__} is a lazy module whose weight is not initialised yet"
    return _class_unsupported_reason(type(module))


def feedback_class(cls: type) -> type:
    """
    Args:
        cls: a convolution (``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``), ``nn.Linear``, or
            a subclass (e.g. detectron2's ``Conv2d``).

    Returns:
        type: a subclass of ``cls`` whose instances use a learning rule (made once per class).
        nn's and detectron2's forwards are replaced by the rule's path (a conv, then detectron2's
        optional ``norm`` and ``activation``); a conv subclass with a forward of its own must call
        ``self._conv_forward`` for the rule to act, or conversion refuses it.
    """
    if issubclass(cls, FeedbackLayer):
        return cls
    if cls not in _CLASSES:
        reason = _class_unsupported_reason(cls)
        if reason is not None:
            raise TypeError(f"cannot convert {cls.__module__}.{cls.__qualname__}: {reason}")
        attrs = {}
        if issubclass(cls, _ConvTransposeNd):
            attrs["forward"] = FeedbackConvMixin._transposed_forward
            bases = (FeedbackConvMixin, cls)
        elif issubclass(cls, _ConvNd):
            if cls.forward in _conv_norm_activation_forwards():
                attrs["forward"] = FeedbackConvMixin._conv_norm_activation_forward
            bases = (FeedbackConvMixin, cls)
        else:
            bases = (FeedbackLinearMixin, cls)
        _CLASSES[cls] = make_class(cls, bases, attrs, globals())
    return _CLASSES[cls]


def make_class(cls: type, bases: tuple, attrs: dict, namespace: dict) -> type:
    """
    The converted class of ``cls``: ``Feedback<cls name>`` with ``bases`` and ``attrs``, made in
    ``namespace`` (a module's globals) so that pickle finds it by name in this process.
    """
    name = f"Feedback{cls.__name__}"
    while name in namespace:
        name += "_"
    attrs = {**attrs, "_bio_base": cls, "__module__": namespace["__name__"], "__qualname__": name}
    namespace[name] = type(name, bases, attrs)
    return namespace[name]


def convert_layer(module: nn.Module, rule, *, seed: int = 0, name: str = "", **options):
    """Convert one layer in place (its class is swapped) and return it."""
    if not isinstance(module, FeedbackLayer):
        module.__class__ = feedback_class(type(module))
    module.set_rule(rule, seed=seed, name=name, **options)
    return module


# (_error_source: what direct feedback alignment's layers read the error from, core/dfa.py.)
_LAYER_ATTRIBUTES = (
    "learning_rule",
    "bio_seed",
    "bio_name",
    "_feedback_restored",
    "_error_source",
)


def revert_layer(module: nn.Module) -> nn.Module:
    """Turn a converted layer back into its original class, dropping the rule and its feedback."""
    if isinstance(module, FeedbackLayer):
        module._buffers.pop("feedback", None)
        module._parameters.pop("feedback", None)
        for attr in _LAYER_ATTRIBUTES:
            module.__dict__.pop(attr, None)
        module.__class__ = module._bio_base
    return module

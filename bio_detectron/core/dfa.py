"""
Direct feedback alignment (Nøkland 2016): the error at the network's outputs, sent to every layer
that learns with ``direct_feedback_alignment`` through a fixed random map of its own.

The rule, :class:`DirectFeedbackAlignment`, is one registered class like the others (registered
when the package is imported); what it needs beyond a layer's own tensors lives with it here:

* :class:`ErrorSource`, one per converted model: forward hooks on the model's **output layers**
  (a classifier's last layer; a detector's predictor layers) record their outputs, and one hook on
  the module that returns them all (their closest common enclosing module) passes them through a
  single autograd node, :class:`_CaptureErrors`. Its backward receives e, the gradient of the loss
  at every output, all at once and before the backward pass reaches any layer below the outputs
  (every layer's output flows into that node), so no layer's backward can run before e is known.
* :class:`DirectFeedback`, what a converted layer's autograd function receives in place of the
  rule (``LearningRule.bind``): its :meth:`~DirectFeedback.input_gradient` is the layer's
  input gradient, B_l·ē, where ē is every output's error brought to the layer input's resolution.

A layer's B_l (its ``feedback`` buffer) has shape (C_in, C_e): C_in the layer's input channels
(features), C_e the output layers' output channels together, in the order the output layers are
named. It is a 1×1 map, the same at every location, so it costs C_in·C_e numbers per layer
whatever the resolution (docs/rules.md gives the formulas and the costs).
"""

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .rules import RULE_REGISTRY, ScaledRule, feedback_scale

__all__ = [
    "DirectFeedback",
    "ErrorSource",
    "DirectFeedbackAlignment",
    "install_error_source",
    "remove_error_source",
]

# The attribute of a converted model (and of its layers that learn with an error-feedback rule)
# holding its ErrorSource; not a module, so it is in no state dict.
SOURCE_ATTRIBUTE = "_error_source"


def _channels(module: nn.Module) -> int:
    """Output channels (features) of a convolution or linear layer."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels


def _in_channels(module: nn.Module) -> int:
    """Input channels (features) of a convolution, or of a linear map with a (out, in) weight
    (nn.Linear, an attention module's input projection)."""
    if isinstance(module, _ConvNd):
        return module.in_channels
    return module.weight.shape[1]


class _Record:
    """The errors of one forward pass: (output index, gradient) pairs, set by its backward."""

    def __init__(self):
        self.errors: Optional[List] = None


class _CaptureErrors(torch.autograd.Function):
    """The identity on every output of one forward pass; its backward records their gradients."""

    @staticmethod
    def forward(ctx, record, indices, *outputs):
        ctx.record, ctx.indices = record, indices
        # Copies, not views: a view of an input returned by a custom Function may not be changed
        # in place (a ResNet's last conv output gets an in-place ReLU), and the outputs are small.
        return tuple(t.clone() for t in outputs)

    @staticmethod
    def backward(ctx, *grads):
        ctx.record.errors = [(i, g.detach()) for i, g in zip(ctx.indices, grads) if g is not None]
        return (None, None) + grads


class ErrorSource:
    """
    Where the layers of one model that learn with ``direct_feedback_alignment`` read the error.

    Args:
        model: the whole model.
        outputs: module names of its output layers (convolutions or nn.Linear), whose outputs'
            gradients are the error e.
    """

    def __init__(self, model: nn.Module, outputs: Sequence[str]):
        modules = dict(model.named_modules())
        missing = [n for n in outputs if n not in modules]
        if not outputs or missing:
            raise ValueError(
                f"outputs={list(outputs)!r}: the output layers of direct feedback alignment must "
                f"be module names of {type(model).__name__}; not found: {missing}"
            )
        not_layers = [n for n in outputs if not isinstance(modules[n], (_ConvNd, nn.Linear))]
        if not_layers:
            raise ValueError(
                f"outputs={list(outputs)!r}: {not_layers} are not convolutions or nn.Linear; the "
                "output layers of direct feedback alignment are layers, whose output channels "
                "make the error"
            )
        self.outputs = list(outputs)
        self.spans, start = [], 0
        for name in self.outputs:
            c = _channels(modules[name])
            self.spans.append((start, start + c))
            start += c
        self.num_errors = start
        # A linear layer's output has its channels last, after any positions (tokens, queries).
        self.channels_last = [isinstance(modules[n], nn.Linear) for n in self.outputs]
        self.collector = _common_prefix(self.outputs)
        self.current = _Record()
        self._pending: List = []
        self._handles = [
            modules[name].register_forward_hook(_RecordOutput(self, i))
            for i, name in enumerate(self.outputs)
        ]
        self._handles.append(modules[self.collector].register_forward_hook(self._capture))

    def _capture(self, module, args, output):
        pending, self._pending = self._pending, []
        if not pending:
            return None
        record, self.current = self.current, _Record()
        found = {}
        _walk(output, lambda t: found.setdefault(id(t), t))
        lost = [self.outputs[i] for i, t in pending if id(t) not in found]
        if lost:
            raise RuntimeError(
                f"direct feedback alignment reads the error at the outputs of {lost}, but "
                f"{self.collector or 'the model'!r} does not return them as they are; name output "
                "layers whose outputs their common enclosing module returns"
            )
        indices = tuple(i for i, _ in pending)
        captured = _CaptureErrors.apply(record, indices, *(t for _, t in pending))
        replace = {id(t): c for (_, t), c in zip(pending, captured)}
        return _walk(output, lambda t: replace.get(id(t), t))

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def bound(self, rule, layer: nn.Module) -> "DirectFeedback":
        return DirectFeedback(rule, self, layer)


class _RecordOutput:
    """The forward hook of one output layer: keeps its output for the collector's hook. (An
    object, not a closure, so that a deep copy of the model records into its own source.)"""

    def __init__(self, source: ErrorSource, index: int):
        self.source, self.index = source, index

    def __call__(self, module, args, output):
        if torch.is_grad_enabled() and output.requires_grad:
            self.source._pending.append((self.index, output))


def _walk(output, fn):
    """``output`` with ``fn`` applied to each of its tensors (nested lists, tuples, dicts)."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, (list, tuple)):
        return type(output)(_walk(o, fn) for o in output)
    if isinstance(output, dict):
        return type(output)((k, _walk(v, fn)) for k, v in output.items())
    return output


def _common_prefix(names: Sequence[str]) -> str:
    """The closest module enclosing all of ``names`` (one of them, when there is one)."""
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if any(p != level[0] for p in level):
            break
        common.append(level[0])
    return ".".join(common)


class DirectFeedback:
    """
    A rule with an error source, bound to one layer for one forward pass (the error of that pass):
    what the layer's autograd function receives in place of the rule. It makes the layer's
    feedback tensor and gives its input gradient (:meth:`input_gradient`); the autograd function
    computes no input gradient of its own (``error_feedback``).
    """

    error_feedback = True

    def __init__(self, rule, source: ErrorSource, layer: nn.Module):
        self.rule, self.source, self.record = rule, source, source.current
        self.in_channels = _in_channels(layer)
        self.conv = isinstance(layer, _ConvNd)
        self.name = getattr(layer, "bio_name", "") or type(layer).__name__

    def feedback_shape(self, weight) -> tuple:
        return (self.in_channels, self.source.num_errors)

    def init_feedback(self, weight, generator):
        return self.rule.init_error_feedback(weight, self.feedback_shape(weight), generator)

    def input_gradient(self, input: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: the layer's input, (N, C_in, *spatial) for a convolution, (N, ..., C_in) for
                a linear layer.
            feedback: B_l, (C_in, C_e).

        Returns:
            Tensor: B_l·ē shaped like ``input``: each output's error e_o, (N, C_o, *spatial_o),
            (N, C_o) or, from a linear output layer, (N, *positions, C_o), projected by its
            columns of B_l, brought to the input's resolution (see :func:`_to_map` and
            :func:`_to_features`) with its sum over positions kept (:func:`_mass_ratio`), and
            summed over the outputs and their calls.
        """
        errors = self.record.errors
        if errors is None:
            raise RuntimeError(
                f"layer {self.name!r} learns with direct feedback alignment, but no error reached "
                f"the outputs {self.source.outputs} in this backward pass: the loss must depend "
                "on them"
            )
        total = None
        for index, error in errors:
            start, stop = self.source.spans[index]
            b = feedback[:, start:stop].to(error.dtype)
            if error.shape[0] != input.shape[0]:
                raise RuntimeError(
                    f"direct feedback alignment: the error of {self.source.outputs[index]!r} has "
                    f"{error.shape[0]} rows (shape {tuple(error.shape)}), layer {self.name!r}'s "
                    f"input {input.shape[0]} (shape {tuple(input.shape)}); both must have the "
                    "batch first"
                )
            if self.source.channels_last[index] and error.dim() > 2:
                error = error.movedim(-1, 1)  # (N, C_o, *positions)
                if self.conv:  # tokens or queries have no place in a convolution's map:
                    # their sum, a vector, which the ratio below divides among the locations
                    error = error.flatten(2).sum(2)
            size = input.shape[2:]
            # The error's sum over positions is kept (see _mass_ratio).
            positions = input.shape[2:] if self.conv else input.shape[1:-1]
            ratio = _mass_ratio(error, math.prod(positions))
            if self.conv and error.dim() - 2 == len(size) and error[0, 0].numel() > size.numel():
                # Pooling and the 1x1 map commute: pool first, project fewer locations.
                error = _POOLS[len(size)](error, tuple(size))
            projected = torch.einsum("ic,nc...->ni...", b, error)  # (N, C_in, *spatial)
            part = (
                _to_map(projected, size) if self.conv else _to_features(projected, input, self.name)
            )
            if ratio != 1:
                part = part.mul_(ratio)
            total = part if total is None else total.add_(part)
        return total.to(input.dtype)


_POOLS = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _mass_ratio(error: torch.Tensor, input_positions: int) -> float:
    """
    P_e / P_x: the error's positions (N, C, *P_e; 1 for a vector) over the layer input's, P_x.
    Brought to the input's positions (pooled, replicated or averaged), the error is
    multiplied by this, so that its sum over positions is kept: a coarse map or a vector error
    spread over a finer map is divided among the positions it covers, as backprop divides a
    gradient through average pooling, strides and a global pool; a finer map is summed over the
    blocks it pools. Without it, an early layer's weight gradient (a sum over its many positions)
    would be P_x / P_e times the error's, the largest at the finest layers.
    """
    error_positions = math.prod(error.shape[2:])
    return error_positions / input_positions


def _to_map(projected: torch.Tensor, size) -> torch.Tensor:
    """(N, C, *s) or (N, C) -> (N, C, *size): pooled to ``size``, or replicated over it."""
    n, c = projected.shape[:2]
    if projected.dim() == 2:
        shape = (n, c) + (1,) * len(size)
        return projected.reshape(shape).expand(n, c, *size).contiguous()
    if tuple(projected.shape[2:]) == tuple(size):
        return projected
    if projected.dim() - 2 != len(size):
        raise RuntimeError(
            f"direct feedback alignment: an error map of {projected.dim() - 2} spatial dims "
            f"cannot be brought to a layer input of {len(size)}"
        )
    return _POOLS[len(size)](projected, tuple(size))


def _to_features(projected: torch.Tensor, input: torch.Tensor, name: str) -> torch.Tensor:
    """(N, C, *s) or (N, C) -> the shape of a linear layer's input (N, ..., C), keeping locality
    where positions correspond: per position where the input has the error's positions s
    (tokens, queries); an error map brought to the positions of an input that is a map of as many
    dims, 2 or more, as for a convolution (:func:`_to_map`; a transformer's (N, H, W, C) tokens
    under a detector's maps); else the mean over them (or the vector) at every position
    (sequences of other lengths, such as queries and image tokens, have no positions in common)."""
    n, c = projected.shape[:2]
    middle = input.shape[1:-1]
    if input.shape[-1] != c:
        raise RuntimeError(f"layer {name!r}: input {tuple(input.shape)} is not (..., {c})")
    if projected.dim() > 2 and (
        tuple(projected.shape[2:]) == tuple(middle) or projected.dim() - 2 == len(middle) >= 2
    ):
        return _to_map(projected, middle).movedim(1, -1).contiguous()
    if projected.dim() > 2:
        projected = projected.flatten(2).mean(2)  # other positions: averaged over them
    shape = (n,) + (1,) * len(middle) + (c,)
    return projected.reshape(shape).expand(input.shape).contiguous()


def install_error_source(
    model: nn.Module, layers: Dict[str, nn.Module], outputs: Sequence[str]
) -> ErrorSource:
    """
    Give ``model`` an error source (replacing one it had) and its ``layers`` a reference to it:
    called by the conversion, before those layers make their feedback tensor.

    Args:
        model: the whole model.
        layers: module name -> layer, the layers that learn with an error-feedback rule.
        outputs: module names of the output layers.
    """
    remove_error_source(model)
    source = ErrorSource(model, list(outputs))
    model.__dict__[SOURCE_ATTRIBUTE] = source
    for layer in layers.values():
        layer.__dict__[SOURCE_ATTRIBUTE] = source
    return source


def remove_error_source(model: nn.Module):
    """Remove ``model``'s error source and its hooks, if it has one."""
    source = model.__dict__.pop(SOURCE_ATTRIBUTE, None)
    if source is not None:
        source.remove()


def _bind(rule, layer: nn.Module) -> DirectFeedback:
    """``rule.bind(layer)`` of an error-feedback rule: the layer's :class:`DirectFeedback`."""
    source = layer.__dict__.get(SOURCE_ATTRIBUTE)
    owner = layer.__dict__.get("_bio_owner")
    if source is None and owner is not None:
        # An attention module's input projection, made after the source was installed on the
        # attention module that owns it.
        source = owner.__dict__.get(SOURCE_ATTRIBUTE)
    if source is None:
        raise RuntimeError(
            f"{type(layer).__name__} {getattr(layer, 'bio_name', '')!r} learns with {rule.name}, "
            "which needs the error at its model's outputs: convert the whole model "
            "(convert_model, MODEL.BIO), which installs the error source"
        )
    return source.bound(rule, layer)


@RULE_REGISTRY.register()
class DirectFeedbackAlignment(ScaledRule):
    """
    A layer's input gradient is B_l·ē, whatever reaches its output: ē the error at the model's
    output layers brought to the layer input's resolution, B_l ~ N(0, s^2) a fixed random 1×1 map
    of shape (C_in, C_e), "kaiming" s = 1/sqrt(C_e) (Nøkland 2016, arXiv 1609.01596; the error
    source the conversion installs: :class:`ErrorSource`).
    """

    name = "direct_feedback_alignment"
    feedback_kind = "buffer"
    error_feedback = True

    def bind(self, layer):
        return _bind(self, layer)

    def init_error_feedback(self, weight, shape, generator):
        r = torch.randn(shape, generator=generator, dtype=torch.float32)
        kaiming = self.scale == "kaiming"
        return r.mul_(1.0 / math.sqrt(shape[1]) if kaiming else feedback_scale(self.scale, weight))

    def feedback_weight(self, weight, feedback):
        return feedback.to(weight.dtype)

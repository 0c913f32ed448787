"""
``nn.MultiheadAttention`` learning with a rule: the backward pass of its input projections (q, k
and v, packed or separate) and of its output projection uses B in place of W.

**What uses B, what stays exact.** An attention module holds four linear maps with weights:
the q, k and v projections (packed in ``in_proj_weight``, or ``q_proj_weight``,
``k_proj_weight`` and ``v_proj_weight`` when ``kdim``/``vdim`` differ from ``embed_dim``) and
``out_proj``. Their input gradients are computed with B, their weight and bias gradients are the
true ones, as for any converted ``nn.Linear``. The products of activations in between (Q K^T, the
softmax, the attention weights times V) carry no weight: a rule has no W to replace there, so
they keep exact backprop, as BatchNorm and activations do elsewhere. ``bias_k``/``bias_v`` are
parameters added to activations, exact too.

**How.** Converting the module swaps its class (as for other layers) and adds one child
:class:`AttentionProjection` per input-projection weight (``in_proj``, or ``q_proj``, ``k_proj``,
``v_proj``), which keeps the rule, its feedback tensor (``<attention>.in_proj.feedback``, shaped
like ``in_proj_weight``) and the layer seed of its own name; the weight stays the module's stock
parameter, so state-dict keys, parameter names and stock checkpoints are unchanged.
``out_proj`` is the converted ``nn.Linear`` it is. The forward is the stock module's own, run
under a :class:`~torch.overrides.TorchFunctionMode` that hands each of its ``F.linear`` calls on a
projection weight to that projection's module: the one linear autograd path
(``core/functions.py``) with the projection's rule, feedback tensor and forward hooks.

Why a mode around the stock forward and not a forward of our own (which would be a copy of
``F.multi_head_attention_forward`` written out again, to be kept equal to it by hand): the output
is the stock module's by construction (masks, ``is_causal``, ``need_weights``, ``add_bias_kv``,
``add_zero_attn``, dropout and its random numbers, unbatched inputs, the checks and their
errors), and Dynamo traces the mode without graph breaks. Two things of torch's are relied on,
both checked by ``tests/test_attention.py``:

* ``F.multi_head_attention_forward`` hands itself whole to an active mode (its
  ``has_torch_function`` check), so that the mode would not see the calls inside it: the mode
  runs it as a function with the same code whose ``has_torch_function`` says no
  (:func:`_without_dispatch`). Conversion refuses the module if torch's function stops
  dispatching through that name.
* It makes its ``F.linear`` calls in a fixed order: the in-projection first (all of
  ``in_proj_weight`` at once for self-attention; its q rows, then its k and v rows when the key
  and value are one tensor but not the query; its q, k and v rows apart otherwise; q, k, v for
  separate weights), then ``out_proj``. A call is recognised by that order and checked by its
  weight's shape; an unexpected call is an error.

When a call uses some rows of ``in_proj_weight``, B is the rule's B of those rows (for
sign-symmetry with the ``mean_abs`` scale: the mean over those rows). Direct feedback alignment's
B is (C_in, C_e), not shaped like W: each call's input gets B ē with the whole B, and the
projections on that rule are called on the batch-first view of their sequence-first input (its
error has the batch first; ``out_proj``'s rows l·N + n viewed as (L, N, E) first).
"""

import types
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .functions import _FeedbackLinearFunction, _tracing
from .layers import FeedbackLayer, make_class

__all__ = [
    "ATTENTION_TYPES",
    "AttentionProjection",
    "FeedbackAttentionMixin",
    "attention_class",
    "attention_unsupported_reason",
    "convert_attention",
    "is_converted_attention",
    "projection_names",
    "revert_attention",
]

# Attention modules whose projections a rule can act on; subclasses with the stock forward too.
ATTENTION_TYPES = (nn.MultiheadAttention,)


def projection_names(attention: nn.MultiheadAttention):
    """The names of ``attention``'s input projections: ("in_proj",) or ("q_proj", "k_proj",
    "v_proj"), each the name of its weight without "_weight"."""
    return ("in_proj",) if attention._qkv_same_embed_dim else ("q_proj", "k_proj", "v_proj")


class AttentionProjection(FeedbackLayer, nn.Module):
    """
    One input projection of a converted ``nn.MultiheadAttention``: its rule and feedback tensor
    (see :class:`~bio_detectron.core.layers.FeedbackLayer`). ``weight`` is the attention module's
    parameter (``in_proj_weight``, ``q_proj_weight``, ...), not a parameter of this module, so
    that the state dict keeps the stock keys; called by the attention module's forward with the
    weight rows and bias of one ``F.linear`` call.
    """

    def __init__(self, attention: nn.Module, name: str):
        nn.Module.__init__(self)
        # A plain attribute, not a child module: the attention module owns this one.
        self.__dict__["_bio_owner"] = attention
        self.projection = name

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self._bio_owner, f"{self.projection}_weight")

    def forward(self, input, weight, bias, rows: Optional[slice] = None):
        """
        Args:
            input (Tensor): (*, in_features).
            weight, bias: the rows of ``self.weight`` (and the bias) the call uses.
            rows: which rows of ``self.weight`` ``weight`` is; None for all.
        """
        if not self._uses_rule(input):
            return F.linear(input, weight, bias)
        input, weight, bias = self._cast_for_autocast(input, weight, bias)
        feedback, rule = self._feedback_for_backward(), self.learning_rule.bind(self)
        if feedback is not None and rows is not None and not rule.error_feedback:
            # (Direct feedback alignment's B is (C_in, C_e), not shaped like W: used whole.)
            feedback = feedback[rows]
        return _FeedbackLinearFunction.apply(input, weight, bias, feedback, rule)

    def _loads_weight(self, state_dict, prefix: str) -> bool:
        # The weight is the attention module's, loaded just before (a module's children load
        # after it, each from the keys under its own prefix): the attention module says.
        return self.__dict__.pop("_bio_weight_loaded", False)

    def __reduce_ex__(self, protocol):
        # A class of this module, not a generated one: pickled as any module.
        return nn.Module.__reduce_ex__(self, protocol)

    def extra_repr(self):
        return f"{self.projection}_weight, rule={self.rule}"


def _dispatches_by_name(function) -> bool:
    """Whether ``function`` decides to hand itself to a mode by calling ``has_torch_function``."""
    return "has_torch_function" in function.__code__.co_names


def _without_dispatch(function):
    """``function`` (a function of ``torch.nn.functional``) as it is, except that it does not
    hand itself to the active torch function mode: its body runs, the mode sees its calls."""
    names = {**function.__globals__, "has_torch_function": lambda *args: False}
    copy = types.FunctionType(function.__code__, names, function.__name__, function.__defaults__)
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy


# The stock attention function, run under _ProjectionCalls (tests/test_attention.py fails if
# it stops making its F.linear calls in the order that class expects).
_multi_head_attention_forward = _without_dispatch(F.multi_head_attention_forward)


class _ProjectionCalls(TorchFunctionMode):
    """Routes the ``F.linear`` calls of one stock attention forward to the projections' modules,
    recognised by their order (see the module doc); every other function runs as it is."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention
        self.embed_dim = attention.embed_dim
        self.done = 0  # rows of in_proj_weight projected so far, or separate projections called
        self.batch = 0  # N, read from the query at the first call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            # It hands itself to the mode whole; its body runs with the mode on, to see its calls.
            with self:
                return _multi_head_attention_forward(*args, **kwargs)
        if func is not F.linear:
            return func(*args, **kwargs)
        input, weight = args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        attention, e = self.attention, self.embed_dim
        if self.done == 0:
            self.batch = input.shape[1]  # the query, (L, N, E)
        if attention._qkv_same_embed_dim and self.done < 3 * e:
            start, stop = self.done, self.done + weight.shape[0]
            self._check(weight, stop <= 3 * e and weight.shape[0] % e == 0, "in_proj_weight rows")
            self.done = stop
            rows = None if (start, stop) == (0, 3 * e) else slice(start, stop)
            return _batch_first(attention._modules["in_proj"], input, weight, bias, rows)
        if not attention._qkv_same_embed_dim and self.done < 3:
            name = ("q_proj", "k_proj", "v_proj")[self.done]
            self._check(weight, weight.shape == getattr(attention, f"{name}_weight").shape, name)
            self.done += 1
            return _batch_first(attention._modules[name], input, weight, bias)
        out_proj = attention.out_proj
        self._check(weight, weight.shape == out_proj.weight.shape, "out_proj.weight")
        self.done = -1  # nothing after out_proj
        if not _sends_error(out_proj):
            return out_proj(input)
        # Rows l*N + n of the attention output: (L, N, E) as a view, then batch first.
        tokens = input.view(-1, self.batch, input.shape[-1])
        return _batch_first(out_proj, tokens).reshape(input.shape[0], -1)

    def _check(self, weight, fits: bool, expected: str):
        if not fits or self.done < 0:
            raise RuntimeError(
                f"{type(self.attention).__name__}'s stock forward made an F.linear call with a "
                f"weight of shape {tuple(weight.shape)} where {expected} was expected (or after "
                "out_proj): this version of torch computes attention in an order the conversion "
                "does not know"
            )


def _sends_error(module: nn.Module) -> bool:
    """Whether ``module`` learns with a rule that sends the model's output error to its input
    (direct feedback alignment), which reads the batch at dim 0 of the input."""
    rule = module.__dict__.get("learning_rule")
    return rule is not None and rule.error_feedback


def _batch_first(module: nn.Module, input: torch.Tensor, *args) -> torch.Tensor:
    """``module(input, *args)`` on a sequence-first (L, N, C) ``input``: called on its batch-first
    view where the module's rule sends the output error (the output transposed back, contiguous
    as the stock function's later ``view`` needs), as it is otherwise."""
    if not _sends_error(module):
        return module(input, *args)
    return module(input.transpose(0, 1), *args).transpose(0, 1).contiguous()


class FeedbackAttentionMixin:
    """
    The converted class of an attention module (made by :func:`attention_class`): the stock
    forward, its ``F.linear`` calls on projection weights routed to the projections' rules.
    """

    _bio_base: type

    def forward(self, query, key, value, *args, **kwargs):
        if not torch.is_grad_enabled() or _tracing():
            # No gradient: the stock forward as it is (and its fast path where it takes it).
            return self._bio_base.forward(self, query, key, value, *args, **kwargs)
        with _ProjectionCalls(self):
            return self._bio_base.forward(self, query, key, value, *args, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        super()._load_from_state_dict(state_dict, prefix, *args)
        for name in projection_names(self):
            projection = self._modules.get(name)
            if projection is not None:
                projection.__dict__["_bio_weight_loaded"] = f"{prefix}{name}_weight" in state_dict

    def __reduce_ex__(self, protocol):
        # Pickled by the original class, as converted layers are (see layers.py).
        reduced = super().__reduce_ex__(protocol)
        return (_new_converted_attention, (self._bio_base,)) + tuple(reduced[2:])


def _new_converted_attention(base: type):
    """Unpickling: an empty instance of ``base``'s converted class (its state follows)."""
    cls = attention_class(base)
    return cls.__new__(cls)


_CLASSES = {}


def _class_unsupported_reason(cls: type) -> Optional[str]:
    if issubclass(cls, FeedbackAttentionMixin):
        return None
    if cls.forward is not nn.MultiheadAttention.forward:
        return f"{cls.__name__} has a forward of its own that the rule cannot act through"
    if not _dispatches_by_name(F.multi_head_attention_forward):
        return (
            f"torch {torch.__version__}'s F.multi_head_attention_forward no longer calls "
            "has_torch_function, which the conversion of attention relies on"
        )
    return None


def attention_unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why the rule cannot act on ``module``'s projections (None when it can)."""
    return _class_unsupported_reason(type(module))


def attention_class(cls: type) -> type:
    """The converted class of an attention class (made once per class)."""
    if issubclass(cls, FeedbackAttentionMixin):
        return cls
    if cls not in _CLASSES:
        reason = _class_unsupported_reason(cls)
        if reason is not None:
            raise TypeError(f"cannot convert {cls.__module__}.{cls.__qualname__}: {reason}")
        _CLASSES[cls] = make_class(cls, (FeedbackAttentionMixin, cls), {}, globals())
    return _CLASSES[cls]


def is_converted_attention(module: nn.Module) -> bool:
    return isinstance(module, FeedbackAttentionMixin)


def convert_attention(attention: nn.Module, rule, *, seed: int = 0, name: str = ""):
    """
    Convert one attention module's input projections in place (its class is swapped, a child
    :class:`AttentionProjection` per projection weight made or given the new rule) and return
    it. Each projection's feedback tensor is made from the layer seed of its own name,
    ``<name>.in_proj`` (or ``.q_proj``, ...). ``out_proj`` is converted as the ``nn.Linear`` it
    is, by the caller.
    """
    attention.__class__ = attention_class(type(attention))
    for projection in projection_names(attention):
        module = attention._modules.get(projection)
        if module is None:
            module = AttentionProjection(attention, projection)
            attention.add_module(projection, module)
        module.set_rule(rule, seed=seed, name=f"{name}.{projection}" if name else projection)
    return attention


def revert_attention(attention: nn.Module) -> nn.Module:
    """Drop the projections' rules and feedback tensors: the stock module again (``out_proj``
    is reverted as the layer it is)."""
    if isinstance(attention, FeedbackAttentionMixin):
        for projection in ("in_proj", "q_proj", "k_proj", "v_proj"):
            attention._modules.pop(projection, None)
        attention.__dict__.pop("_error_source", None)  # (direct feedback alignment's, dfa.py)
        attention.__class__ = attention._bio_base
    return attention

"""
Apply learning rules to the convolution and linear layers of any model, in place, and undo it.

A layer is converted by swapping its class for a subclass that routes its forward through the
rule's autograd path (:func:`feedback_class`: made once per layer class, subclasses such as
detectron2's ``Conv2d`` included), so that every reference to it stays valid (detectron2's FPN,
for one, keeps its convs in plain lists too) and parameter names, values and ``isinstance`` checks
are unchanged. :func:`revert_layer` swaps it back.
"""

import re
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .layers import (
    LAYER_TYPES,
    FeedbackConv2d,
    FeedbackConvMixin,
    FeedbackLayer,
    FeedbackLinear,
    FeedbackLinearMixin,
)
from .rules import build_rule

__all__ = [
    "UNSUPPORTED",
    "UNCONVERTIBLE_TYPES",
    "convert_model",
    "convert_layer",
    "convert_layers",
    "feedback_class",
    "revert_layer",
    "unsupported_reason",
    "find_unsupported",
    "layers_of",
    "make_feedback_now",
    "revert_model",
    "rules_of",
]

Patterns = Optional[Union[str, Iterable[str]]]


# ----------------------------------------------------------------------------------------------
# One layer: its converted class, the swap and its undoing
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
        attrs = {"_bio_base": cls}
        if issubclass(cls, _ConvTransposeNd):
            attrs["forward"] = FeedbackConvMixin._transposed_forward
            bases = (FeedbackConvMixin, cls)
        elif issubclass(cls, _ConvNd):
            if cls.forward in _conv_norm_activation_forwards():
                attrs["forward"] = FeedbackConvMixin._conv_norm_activation_forward
            bases = (FeedbackConvMixin, cls)
        else:
            bases = (FeedbackLinearMixin, cls)
        name = f"Feedback{cls.__name__}"
        while name in globals():
            name += "_"
        attrs.update(__module__=__name__, __qualname__=name)
        new_cls = type(name, bases, attrs)
        globals()[name] = new_cls  # lets pickle find the class itself by name in this process
        _CLASSES[cls] = new_cls
    return _CLASSES[cls]


def convert_layer(module: nn.Module, rule, *, seed: int = 0, name: str = "", **options):
    """Convert one layer in place (its class is swapped) and return it."""
    if not isinstance(module, FeedbackLayer):
        module.__class__ = feedback_class(type(module))
    module.set_rule(rule, seed=seed, name=name, **options)
    return module


_LAYER_ATTRIBUTES = ("learning_rule", "bio_seed", "bio_name", "_feedback_pending")


def revert_layer(module: nn.Module) -> nn.Module:
    """Turn a converted layer back into its original class, dropping the rule and its state."""
    if isinstance(module, FeedbackLayer):
        module._buffers.pop("feedback", None)
        module._parameters.pop("feedback", None)
        for attr in _LAYER_ATTRIBUTES:
            module.__dict__.pop(attr, None)
        module.__class__ = module._bio_base
    return module


# ----------------------------------------------------------------------------------------------
# A whole model
# ----------------------------------------------------------------------------------------------

# What to do with a layer a rule cannot act on (see find_unsupported):
#   "error": raise a ValueError naming every such layer and why, before converting anything;
#   "skip":  leave them on plain autograd and warn, naming each (rules_of says "none").
UNSUPPORTED = ("error", "skip")

# Modules that compute linear maps with weights of their own, outside any nn.Linear forward: the
# rules cannot act on them, and rules_of lists them as "none".
UNCONVERTIBLE_TYPES = (nn.MultiheadAttention, nn.RNNBase, nn.Bilinear)

# Modules whose forward reads the weights of some of their child layers directly, so that those
# children's own forward (and with it the rule) is never used: type -> child names.
WEIGHT_READERS = {nn.MultiheadAttention: ("out_proj",)}


def _compile(patterns: Patterns, arg: str) -> List["re.Pattern"]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except (re.error, TypeError) as e:
            raise ValueError(f"{arg}={p!r} is not a valid regular expression: {e}") from e
    return compiled


def layers_of(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """
    Returns:
        list[(str, nn.Module)]: every convolution (1-3 d, transposed or not) and nn.Linear of
        ``model``, subclasses included, named as in ``model.named_modules()``.
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def find_unsupported(model: nn.Module, names: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """
    The layers of ``model`` that a rule would not act on if converted, and why: a class whose
    forward bypasses the converted path (e.g. a conv subclass computing ``F.conv2d`` itself), a
    weight read by another module's forward (``nn.MultiheadAttention.out_proj``), or a weight
    shared with another module.

    Args:
        names: only these layers (module names); default all of :func:`layers_of`.

    Returns:
        dict[str, str]: module name -> reason.
    """
    modules = dict(model.named_modules())
    wanted = set(names) if names is not None else {n for n, _ in layers_of(model)}
    owners: Dict[int, List[str]] = {}
    for mod_name, m in model.named_modules(remove_duplicate=False):
        for p_name, p in m._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    order = {name: i for i, name in enumerate(modules)}
    problems = {}
    for name in sorted(wanted, key=order.__getitem__):
        m = modules[name]
        reason = unsupported_reason(m)
        parent_name, _, child = name.rpartition(".")
        parent = modules.get(parent_name) if name else None
        for reader, children in WEIGHT_READERS.items():
            if reason is None and isinstance(parent, reader) and child in children:
                reason = (
                    f"{type(parent).__name__} {parent_name!r} reads its weight directly, "
                    "without calling its forward"
                )
        weight = getattr(m, "weight", None)
        if reason is None and isinstance(weight, nn.Parameter):
            own = f"{name}.weight" if name else "weight"
            others = [o for o in owners.get(id(weight), []) if o != own]
            if others:
                reason = f"its weight is shared with {others[0]}, which uses it outside its forward"
        if reason is not None:
            problems[name] = reason
    return problems


def convert_layers(
    model: nn.Module,
    rule_of: Callable[[str], object],
    *,
    seed: int = 0,
    prefix: str = "",
    unsupported: str = "error",
) -> nn.Module:
    """
    The one conversion routine behind :func:`convert_model` and the config and LazyConfig paths
    (``bio_detectron.modeling.convert_parts``).

    Args:
        model: a model, or a piece of one being built.
        rule_of: full module name (``prefix`` + name) -> the layer's rule (name or object), or
            None to leave the layer as it is.
        seed: decides the rules' states, with each layer's full module name.
        prefix: the piece's module name in the whole model, e.g. "backbone.".
        unsupported: one of :data:`UNSUPPORTED`.
    """
    if unsupported not in UNSUPPORTED:
        raise ValueError(f"unsupported={unsupported!r} is not allowed; use one of {UNSUPPORTED}")
    chosen = []
    for name, m in layers_of(model):
        rule = rule_of(prefix + name)
        if rule is not None:
            chosen.append((name, m, build_rule(rule)))
    problems = find_unsupported(model, [n for n, _, _ in chosen])
    if problems:
        listing = "; ".join(f"{prefix + n}: {r}" for n, r in problems.items())
        if unsupported == "error":
            raise ValueError(
                f"{len(problems)} layer(s) of {type(model).__name__} cannot learn with a rule: "
                f"{listing}. Nothing was converted. Exclude them, or let them train with plain "
                "autograd (convert_model(..., unsupported='skip'), MODEL.BIO.UNSUPPORTED 'skip')."
            )
        warnings.warn(
            f"{len(problems)} layer(s) of {type(model).__name__} keep plain autograd, as asked "
            f"(unsupported='skip'): {listing}",
            stacklevel=3,
        )
    for name, m, rule in chosen:
        if name not in problems:
            convert_layer(m, rule, seed=seed, name=prefix + name)
    return model


def convert_model(
    model: nn.Module,
    rule,
    *,
    seed: int = 0,
    include: Patterns = None,
    exclude: Patterns = None,
    unsupported: str = "error",
    **rule_options,
) -> nn.Module:
    """
    Make every convolution (``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``) and ``nn.Linear``
    of ``model`` learn with ``rule``, subclasses included (e.g. detectron2's ``Conv2d``). Layers
    are converted in place: parameter names and values, and every reference to the layers, stay
    as they were, so existing checkpoints keep loading. A layer converted before gets the new rule.

    Args:
        model: any module; it may itself be a layer.
        rule (str or LearningRule): a name from :func:`available_rules` or a rule object.
        seed (int): decides the rules' states (a fixed random B), per layer name (``layer_seed``).
        include (str or list[str]): if given, only layers whose module name (as in
            ``model.named_modules()``) matches one of these regexes (``re.search``) are converted.
        exclude (str or list[str]): layers whose module name matches one of these are left alone.
        unsupported (str): "error" (default) refuses a model with a layer the rule could not act
            on (see :func:`find_unsupported`), naming each; "skip" leaves such layers on plain
            autograd with a warning naming them.
        rule_options: options of the rule, e.g. ``scale="mean_abs"``.

    Returns:
        nn.Module: ``model``.
    """
    rule = build_rule(rule, **rule_options)
    includes, excludes = _compile(include, "include"), _compile(exclude, "exclude")
    names = [n for n, _ in layers_of(model)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no convolution or nn.Linear layer to convert")
    for arg, patterns in (("include", includes), ("exclude", excludes)):
        for p in patterns:
            if not any(p.search(n) for n in names):
                raise ValueError(
                    f"{arg}={p.pattern!r} matches no convolution/Linear layer of "
                    f"{type(model).__name__}; its layers are e.g. {names[:5]}"
                )

    def rule_of(name):
        if includes and not any(p.search(name) for p in includes):
            return None
        if any(p.search(name) for p in excludes):
            return None
        return rule

    return convert_layers(model, rule_of, seed=seed, unsupported=unsupported)


def rules_of(model: nn.Module) -> Dict[str, str]:
    """
    Returns:
        dict[str, str]: module name -> rule name, for every convolution and nn.Linear of ``model``
        and every module of :data:`UNCONVERTIBLE_TYPES`; "none" where no rule acts (a layer not
        converted, or one whose weight is used outside its forward), so it trains with plain
        autograd.
    """
    layers = layers_of(model)
    problems = find_unsupported(model, [n for n, _ in layers])
    rules = {
        name: m.rule if isinstance(m, FeedbackLayer) and name not in problems else "none"
        for name, m in layers
    }
    for name, m in model.named_modules():
        if isinstance(m, UNCONVERTIBLE_TYPES):
            rules[name] = "none"
    return rules


def make_feedback_now(model: nn.Module, pending_only: bool = False) -> nn.Module:
    """
    Make every converted layer's feedback tensor from its current weights now, instead of at its
    first training forward pass (see :class:`~bio_detectron.layers.FeedbackLayer`). Useful only
    where weights change between that pass and the moment B should describe; the trainers need
    no call.

    Args:
        pending_only: only the tensors still due, i.e. what the next training forward would make:
            not those a checkpoint restored or a training step made.
    """
    for _, m in model.named_modules():
        if isinstance(m, FeedbackLayer) and (m._feedback_pending or not pending_only):
            m.make_feedback_now()
    return model


def revert_model(model: nn.Module) -> nn.Module:
    """
    Turn every converted layer of ``model`` back into its original class, in place, dropping its
    rule and ``feedback`` state: the model, its state dict and its outputs are then the stock
    model's.

    Returns:
        nn.Module: ``model``.
    """
    for _, m in list(model.named_modules()):
        revert_layer(m)
    return model

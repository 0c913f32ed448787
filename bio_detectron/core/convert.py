"""
Apply learning rules to the convolution and linear layers of any model, in place, and undo it:
the one conversion of a whole model (:func:`convert_model`, over :func:`convert_layers`), the
report of which rule each layer learns with (:func:`rules_of`) and :func:`revert_model`. One
layer's class swap is :mod:`bio_detectron.core.layers`'.
"""

import re
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

from torch import nn

from .layers import LAYER_TYPES, FeedbackLayer, convert_layer, revert_layer, unsupported_reason
from .rules import build_rule

__all__ = [
    "UNSUPPORTED",
    "UNCONVERTIBLE_TYPES",
    "convert_model",
    "convert_layers",
    "find_unsupported",
    "layers_of",
    "make_feedback_now",
    "revert_model",
    "rules_of",
]

Patterns = Optional[Union[str, Iterable[str]]]


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


def make_feedback_now(model: nn.Module, keep_restored: bool = False) -> nn.Module:
    """
    Make every converted layer's feedback tensor from its current weights now (see
    :class:`~bio_detectron.core.layers.FeedbackLayer`): conversion and loading a checkpoint make
    it already; call this after changing weights by hand, so that B describes them.

    Args:
        keep_restored: keep the feedback tensors that a checkpoint restored (made by the same
            rule), remaking only those made from weights.
    """
    for _, m in model.named_modules():
        if isinstance(m, FeedbackLayer) and not (keep_restored and m._feedback_restored):
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

"""
Apply learning rules to the convolution, linear and attention layers of any model, in place, and
undo it:
the one conversion of a whole model (:func:`convert_model`, over :func:`convert_layers`), the
report of which rule each layer learns with (:func:`rules_of`) and :func:`revert_model`. One
layer's class swap is :mod:`bio_detectron.core.layers`'.
"""

import re
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

from torch import nn

from .attention import (
    ATTENTION_TYPES,
    AttentionProjection,
    attention_unsupported_reason,
    convert_attention,
    is_converted_attention,
    projection_names,
    revert_attention,
)
from .dfa import install_error_source, remove_error_source
from .layers import LAYER_TYPES, FeedbackLayer, convert_layer, revert_layer, unsupported_reason
from .rules import build_rule

__all__ = [
    "UNSUPPORTED",
    "UNCONVERTIBLE_TYPES",
    "ArgumentError",
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
UNCONVERTIBLE_TYPES = (nn.RNNBase, nn.Bilinear)

# Modules whose forward reads the weights of some of their child layers directly: type -> child
# names. The rule acts on such a child only when its parent is converted too (a converted
# attention module routes its out_proj's calls through out_proj's rule).
WEIGHT_READERS = {nn.MultiheadAttention: ("out_proj",)}


class ArgumentError(ValueError):
    """
    A conversion refused for the value of one of its arguments: ``argument`` ("include",
    "exclude" or "unsupported"), ``value`` the value at fault, ``index`` its place in a list of
    patterns (None for the argument as a whole). :meth:`naming` says the same for a caller that
    knows the argument by another name (a config key), so the core words no one else's keys.
    """

    def __init__(self, argument: str, value, detail: str, index: Optional[int] = None):
        self.argument, self.value, self.detail, self.index = argument, value, detail, index
        super().__init__(f"{argument}={value!r} {detail}")

    def naming(self, name: str) -> str:
        """The message with ``name`` (and the index of the value at fault) for the argument."""
        index = "" if self.index is None else f"[{self.index}]"
        return f"{name}{index}={self.value!r} {self.detail}"


def _patterns(argument: str, given: Patterns) -> List["re.Pattern"]:
    patterns = [given] if isinstance(given, str) else list(given or [])
    compiled = []
    for i, p in enumerate(patterns):
        try:
            compiled.append(re.compile(p))
        except (re.error, TypeError) as e:
            raise ArgumentError(argument, p, f"is not a valid regular expression: {e}", i) from e
    return compiled


def layers_of(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """
    Returns:
        list[(str, nn.Module)]: every convolution (1-3 d, transposed or not), nn.Linear and
        nn.MultiheadAttention of ``model`` (subclasses included), named as in
        ``model.named_modules()``. An attention module stands for its input projections; its
        ``out_proj`` is a layer of its own.
    """
    types = LAYER_TYPES + ATTENTION_TYPES
    return [(name, m) for name, m in model.named_modules() if isinstance(m, types)]


def find_unsupported(model: nn.Module, names: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """
    The layers of ``model`` that a rule would not act on if converted, and why: a class whose
    forward bypasses the converted path (e.g. a conv subclass computing ``F.conv2d`` itself), a
    weight read by another module's forward that is not converted with it
    (``nn.MultiheadAttention.out_proj`` without its attention module), or a weight shared with
    another module.

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
        if isinstance(m, ATTENTION_TYPES):
            reason = attention_unsupported_reason(m)
        else:
            reason = unsupported_reason(m)
        parent_name, _, child = name.rpartition(".")
        parent = modules.get(parent_name) if name else None
        for reader, children in WEIGHT_READERS.items():
            if reason is None and isinstance(parent, reader) and child in children:
                routed = is_converted_attention(parent) or (
                    parent_name in wanted and attention_unsupported_reason(parent) is None
                )
                if not routed:
                    reason = (
                        f"{type(parent).__name__} {parent_name!r} reads its weight directly, "
                        "without calling its forward, and is not converted"
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
    include: Patterns = None,
    exclude: Patterns = None,
    unsupported: str = "error",
    outputs: Optional[Iterable[str]] = None,
) -> nn.Module:
    """
    The one conversion of a whole model, behind :func:`convert_model` (one rule) and the
    integration's conversion by parts (``MODEL.BIO``, :func:`bio_detectron.bio_plausible`): one
    walk over the layers decides each layer's rule, checks that every ``include``/``exclude``
    pattern matches a layer and finds the layers no rule could act on, before anything changes.

    Args:
        model: a built model; module names are its ``named_modules()`` names, which also seed
            each layer's state (``layer_seed``), so a layer has the same B whatever converts it.
        rule_of: module name -> the layer's rule (name or object), or None to leave it alone.
        seed: decides the rules' states, with each layer's module name.
        include: if given, regexes (``re.search``); only the layers matching one are converted.
        exclude: regexes of layers that are left alone.
        unsupported: one of :data:`UNSUPPORTED`.
        outputs: module names of the output layers whose output gradients are the error that
            ``direct_feedback_alignment`` sends to its layers (:mod:`bio_detectron.core.dfa`);
            default: the model's last layer. Unused by the other rules.

    Raises:
        ArgumentError: a pattern that matches no layer, or (``unsupported`` "error") layers no
            rule could act on; nothing is converted then.
    """
    if unsupported not in UNSUPPORTED:
        raise ArgumentError("unsupported", unsupported, f"is not allowed; use one of {UNSUPPORTED}")
    includes, excludes = _patterns("include", include), _patterns("exclude", exclude)
    layers = layers_of(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no convolution or nn.Linear layer to convert")
    names = [n for n, _ in layers]
    for argument, patterns in (("include", includes), ("exclude", excludes)):
        for i, p in enumerate(patterns):
            if not any(p.search(n) for n in names):
                raise ArgumentError(
                    argument,
                    p.pattern,
                    f"matches no convolution/Linear layer of {type(model).__name__}; its layers "
                    f"are e.g. {names[:5]}",
                    i,
                )
    chosen = []
    for name, m in layers:
        if includes and not any(p.search(name) for p in includes):
            continue
        if any(p.search(name) for p in excludes):
            continue
        rule = rule_of(name)
        if rule is not None:
            chosen.append((name, m, build_rule(rule)))
    problems = find_unsupported(model, [n for n, _, _ in chosen])
    if problems:
        listing = "; ".join(f"{n}: {r}" for n, r in problems.items())
        if unsupported == "error":
            raise ArgumentError(
                "unsupported",
                unsupported,
                f"refuses {len(problems)} layer(s) of {type(model).__name__} that cannot learn "
                f"with a rule: {listing}. Nothing was converted. Exclude them, or let them train "
                "with plain autograd ('skip').",
            )
        warnings.warn(
            f"{len(problems)} layer(s) of {type(model).__name__} keep plain autograd, as asked "
            f"(unsupported='skip'): {listing}",
            stacklevel=3,
        )
    direct = {n: m for n, m, rule in chosen if rule.error_feedback and n not in problems}
    if direct:  # before the layers make their B, whose shape depends on the outputs
        install_error_source(model, direct, list(outputs or [names[-1]]))
    for name, m, rule in chosen:
        if name in problems:
            continue
        if isinstance(m, ATTENTION_TYPES):
            convert_attention(m, rule, seed=seed, name=name)
        else:
            convert_layer(m, rule, seed=seed, name=name)
    # (model.modules(): attention projections are layers that layers_of does not list.)
    if not any(
        isinstance(m, FeedbackLayer) and m.learning_rule.error_feedback for m in model.modules()
    ):
        remove_error_source(model)  # converted to other rules: no error to capture any more
    return model


def convert_model(
    model: nn.Module,
    rule,
    *,
    seed: int = 0,
    include: Patterns = None,
    exclude: Patterns = None,
    unsupported: str = "error",
    outputs: Optional[Iterable[str]] = None,
    **rule_options,
) -> nn.Module:
    """
    Make every convolution (``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``), ``nn.Linear``
    and ``nn.MultiheadAttention`` (its q, k, v and output projections; see
    :mod:`bio_detectron.core.attention`) of ``model`` learn with ``rule``, subclasses included
    (e.g. detectron2's ``Conv2d``). Layers
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
        outputs (list[str]): see :func:`convert_layers`.
        rule_options: options of the rule, e.g. ``scale="mean_abs"``.

    Returns:
        nn.Module: ``model``.
    """
    rule = build_rule(rule, **rule_options)
    return convert_layers(
        model,
        lambda name: rule,
        seed=seed,
        include=include,
        exclude=exclude,
        unsupported=unsupported,
        outputs=outputs,
    )


def rules_of(model: nn.Module) -> Dict[str, str]:
    """
    Returns:
        dict[str, str]: module name -> rule name, for every convolution and nn.Linear of
        ``model``, every input projection of its attention modules (``<attention>.in_proj``, or
        ``.q_proj``, ``.k_proj``, ``.v_proj``) and every module of :data:`UNCONVERTIBLE_TYPES`;
        "none" where no rule acts (a layer not converted, or one whose weight is used outside its
        forward), so it trains with plain autograd.
    """
    layers = layers_of(model)
    # (Attention modules left out: their out_proj learns with its rule only once they are
    # converted, not when they would be.)
    problems = find_unsupported(model, [n for n, m in layers if not isinstance(m, ATTENTION_TYPES)])
    rules = {}
    for name, m in layers:
        if isinstance(m, ATTENTION_TYPES):
            for projection in projection_names(m):
                module = m._modules.get(projection) if is_converted_attention(m) else None
                rules[f"{name}.{projection}" if name else projection] = (
                    module.rule if module is not None else "none"
                )
        else:
            converted = isinstance(m, FeedbackLayer) and name not in problems
            rules[name] = m.rule if converted else "none"
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
    remove_error_source(model)
    for _, m in list(model.named_modules()):
        if isinstance(m, ATTENTION_TYPES):
            revert_attention(m)
        elif not isinstance(m, AttentionProjection):  # (those go with their attention module)
            revert_layer(m)
    return model

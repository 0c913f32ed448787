"""Apply a learning rule to the Conv2d/Linear layers of any model, in place."""
import re
from typing import Dict, Iterable, List, Optional, Union

from torch import nn

from .layers import convert_layer, is_converted
from .rules import build_rule

__all__ = ["convert_model", "rules_of"]

Patterns = Optional[Union[str, Iterable[str]]]


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


def convert_model(
    model: nn.Module,
    rule,
    *,
    seed: int = 0,
    include: Patterns = None,
    exclude: Patterns = None,
    **rule_options,
) -> nn.Module:
    """
    Make every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` (subclasses included, e.g.
    detectron2's ``Conv2d``) learn with ``rule``. Layers are converted in place: parameter names
    and values, and every reference to the layers, stay as they were, so existing checkpoints keep
    loading. A layer converted before gets the new rule.

    Args:
        model: any module; it may itself be a Conv2d or Linear.
        rule (str or LearningRule): a name from :func:`available_rules` or a rule object.
        seed (int): decides the fixed feedback weights, per layer name (see ``layer_seed``).
        include (str or list[str]): if given, only layers whose module name (as in
            ``model.named_modules()``) matches one of these regexes (``re.search``) are converted.
        exclude (str or list[str]): layers whose module name matches one of these are left alone.
        rule_options: options of the rule, e.g. ``scale="mean_abs"``.

    Returns:
        nn.Module: ``model``.
    """
    rule = build_rule(rule, **rule_options)
    includes, excludes = _compile(include, "include"), _compile(exclude, "exclude")
    layers = [
        (name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer to convert")
    for arg, patterns in (("include", includes), ("exclude", excludes)):
        for p in patterns:
            if not any(p.search(name) for name, _ in layers):
                raise ValueError(
                    f"{arg}={p.pattern!r} matches no Conv2d/Linear layer of "
                    f"{type(model).__name__}; its layers are e.g. {[n for n, _ in layers[:5]]}"
                )
    for name, module in layers:
        if includes and not any(p.search(name) for p in includes):
            continue
        if any(p.search(name) for p in excludes):
            continue
        convert_layer(module, rule, seed=seed, name=name)
    return model


def rules_of(model: nn.Module) -> Dict[str, str]:
    """
    Returns:
        dict[str, str]: module name -> rule name, for every Conv2d/Linear of ``model``
        ("none" for a layer that was not converted, and so trains with plain autograd).
    """
    return {
        name: (m.rule if is_converted(m) else "none")
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }

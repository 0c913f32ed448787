"""Which rule each part of a model learns with, read from ``cfg.MODEL.BIO``."""
import re
from collections import OrderedDict
from typing import Dict, Sequence

from torch import nn

from ..layers import convert_layer
from ..rules import SCALES, available_rules, build_rule

__all__ = [
    "PARTS",
    "part_of",
    "rules_from_cfg",
    "bio_args_from_cfg",
    "convert_parts",
    "convert_from_cfg",
    "check_exclude",
]

# Parts in the order they are tried; a layer belongs to the first whose pattern matches its full
# module name. Everything else is "head".
_PART_PATTERNS = OrderedDict(
    predictor=re.compile(
        r"(^|\.)(cls_score|bbox_pred|objectness_logits|anchor_deltas|mask_fcn_logits|"
        r"predictor|classifier)$"
    ),
    backbone=re.compile(r"^backbone\.(bottom_up\.|(stem|res\d+)\.)"),
    fpn=re.compile(r"^backbone\."),
)
PARTS = ("backbone", "fpn", "head", "predictor")


def part_of(name: str) -> str:
    """
    Args:
        name: a layer's full module name in a detectron2 model, e.g. "backbone.bottom_up.res2.0.conv1".

    Returns:
        str: one of :data:`PARTS`.
    """
    for part, pattern in _PART_PATTERNS.items():
        if pattern.search(name):
            return part
    return "head"


def _parse_scale(value):
    if value in SCALES:
        return value
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = -1.0
    if not scale > 0:
        raise ValueError(
            f"MODEL.BIO.SCALE={value!r} is not allowed; use one of {SCALES} or a positive number"
        )
    return scale


def rules_from_cfg(cfg) -> Dict[str, object]:
    """
    Validate ``cfg.MODEL.BIO`` and build the rule of each part.

    Returns:
        dict[str, LearningRule]: part name -> rule object.
    """
    bio = cfg.MODEL.BIO
    allowed = available_rules()
    scale = _parse_scale(bio.SCALE)
    rules = {}
    for part in PARTS:
        key, name = f"MODEL.BIO.PARTS.{part.upper()}", bio.PARTS.get(part.upper(), "")
        if not name:
            key, name = "MODEL.BIO.RULE", bio.RULE
        if name not in allowed:
            raise ValueError(f"{key}={name!r} is not a learning rule; allowed: {allowed}")
        # Scale is an option of every rule but backprop.
        rules[part] = build_rule(name) if name == "backprop" else build_rule(name, scale=scale)
    for i, pattern in enumerate(bio.EXCLUDE):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"MODEL.BIO.EXCLUDE[{i}]={pattern!r} is not a valid regex: {e}")
    return rules


def bio_args_from_cfg(cfg) -> dict:
    """
    Returns:
        dict: the keyword arguments of :func:`convert_parts` that ``cfg.MODEL.BIO`` sets
        (``rules``, ``seed``, ``exclude``), validated.
    """
    return {
        "rules": rules_from_cfg(cfg),
        "seed": cfg.MODEL.BIO.SEED,
        "exclude": list(cfg.MODEL.BIO.EXCLUDE),
    }


def convert_parts(
    module: nn.Module,
    rules: Dict[str, object],
    *,
    seed: int = 0,
    exclude: Sequence[str] = (),
    prefix: str = "",
) -> nn.Module:
    """
    Convert every Conv2d/Linear of ``module`` with the rule of its part, in place.

    Args:
        module: a whole model, or a piece of one (a backbone, a head) being built.
        rules: part name (see :data:`PARTS`) -> rule name or object.
        seed: decides the fixed feedback weights, with each layer's full module name.
        exclude: regexes on full module names of layers that keep plain autograd.
        prefix: the piece's module name in the whole model, e.g. "backbone." or "head.", so that
            parts, seeds and ``exclude`` see the names the whole model will have.
    """
    excludes = [re.compile(p) for p in exclude]
    for name, m in module.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        full = prefix + name
        if any(p.search(full) for p in excludes):
            continue
        convert_layer(m, rules[part_of(full)], seed=seed, name=full)
    return module


def convert_from_cfg(module: nn.Module, cfg, prefix: str = "") -> nn.Module:
    """:func:`convert_parts` with the arguments ``cfg.MODEL.BIO`` sets."""
    return convert_parts(module, prefix=prefix, **bio_args_from_cfg(cfg))


def check_exclude(model: nn.Module, cfg):
    """Raise if a MODEL.BIO.EXCLUDE regex matches no Conv2d/Linear of the whole model."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for i, pattern in enumerate(cfg.MODEL.BIO.EXCLUDE):
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(
                f"MODEL.BIO.EXCLUDE[{i}]={pattern!r} matches no Conv2d/Linear of "
                f"{type(model).__name__}; its layers are e.g. {names[:4]}"
            )

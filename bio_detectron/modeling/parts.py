"""Which rule each part of a detector learns with: validated once, for ``MODEL.BIO`` (yacs) and for
:func:`bio_detectron.bio_plausible` (LazyConfig) alike, and applied by one routine."""

import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

from detectron2.modeling.backbone import Backbone
from torch import nn

from ..core.convert import UNSUPPORTED, convert_layers, layers_of
from ..core.rules import available_rules, build_rule, parse_scale

__all__ = [
    "PARTS",
    "part_of",
    "parts_of",
    "bio_args",
    "rules_from_cfg",
    "bio_args_from_cfg",
    "convert_parts",
    "convert_from_cfg",
    "check_exclude",
]

PARTS = ("backbone", "fpn", "head", "predictor")

# The final prediction layers of detectron2's heads (box, mask, keypoint, RPN, RetinaNet, FCOS,
# semantic segmentation) and of classifiers, by their module name's last component.
_PREDICTOR = re.compile(
    r"(^|\.)(cls_score|bbox_pred|objectness_logits|anchor_deltas|mask_fcn_logits|predictor|"
    r"score_lowres|ctrness|classifier)$"
)
# The bottom-up network by name, for a backbone seen without its modules (a piece converted
# while it is built): FPN's bottom_up, SimpleFeaturePyramid's net, or a plain ResNet.
_BOTTOM_UP_BY_NAME = re.compile(r"^backbone\.(bottom_up\.|net\.|(stem|res\d+)\.)")


def _bottom_up_prefixes(backbone: nn.Module, name: str) -> Sequence[str]:
    """
    The module-name prefixes of ``backbone``'s bottom-up network: its children that are
    detectron2 ``Backbone`` s themselves (FPN's ``bottom_up``, SimpleFeaturePyramid's ``net``);
    the whole backbone when it has none (a plain ResNet, RegNet, ViT, or a classifier's body).
    """
    inner = [
        f"{name}.{child}." for child, m in backbone.named_children() if isinstance(m, Backbone)
    ]
    return inner or [f"{name}."]


def part_of(name: str, bottom_up: Optional[Sequence[str]] = None) -> str:
    """
    Args:
        name: a layer's full module name in a detectron2 model, e.g.
            "backbone.bottom_up.res2.0.conv1".
        bottom_up: the name prefixes of the backbone's bottom-up network (see :func:`parts_of`);
            None to decide by name alone.

    Returns:
        str: one of :data:`PARTS`. The final prediction layers (``cls_score``, ``bbox_pred``, RPN
        logits and deltas, mask/keypoint ``predictor``/``score_lowres``, FCOS ``ctrness``,
        ``classifier``) are "predictor"; in ``backbone.*``, the bottom-up network is "backbone" and
        the rest (FPN, simple feature pyramid, P6/P7) is "fpn"; everything else is "head".
    """
    if _PREDICTOR.search(name):
        return "predictor"
    if not name.startswith("backbone."):
        return "head"
    if bottom_up is None:
        return "backbone" if _BOTTOM_UP_BY_NAME.search(name) else "fpn"
    return "backbone" if any(name.startswith(p) for p in bottom_up) else "fpn"


def parts_of(module: nn.Module, prefix: str = "") -> Dict[str, str]:
    """
    Args:
        module: a whole model (``prefix`` ""), its backbone (``prefix`` "backbone.") or another
            piece of one.

    Returns:
        dict[str, str]: full module name -> part, for every layer of ``module``. The bottom-up
        network is found from the modules themselves where the backbone is at hand, so that any
        backbone (ResNet, RegNet, ViT, Swin, ...) inside an FPN or a simple feature pyramid is
        "backbone" and the pyramid "fpn".
    """
    backbone = None
    if prefix == "backbone.":
        backbone = module
    elif prefix == "" and isinstance(getattr(module, "backbone", None), nn.Module):
        backbone = module.backbone
    bottom_up = _bottom_up_prefixes(backbone, "backbone") if backbone is not None else None
    return {prefix + n: part_of(prefix + n, bottom_up) for n, _ in layers_of(module)}


def bio_args(
    rule,
    parts: Optional[Mapping[str, str]] = None,
    *,
    scale="kaiming",
    seed: int = 0,
    exclude: Sequence[str] = (),
    unsupported: str = "error",
    keys: Optional[Mapping[str, str]] = None,
) -> dict:
    """
    Validate a model's rule settings and build the rule of each part: the one place where
    ``MODEL.BIO`` and :func:`bio_detectron.bio_plausible`'s arguments are checked.

    Args:
        rule: the rule of every part not in ``parts``.
        parts: part (see :data:`PARTS`, any case) -> rule name; "" or missing inherits ``rule``.
        scale, seed, exclude, unsupported: see :func:`bio_detectron.convert_model`.
        keys: how errors name each argument ("rule", "parts.<part>", "scale", "exclude",
            "unsupported"), e.g. the config keys; default the argument names.

    Returns:
        dict: the keyword arguments of :func:`convert_parts`: ``rules`` (part -> LearningRule),
        ``seed``, ``exclude``, ``unsupported``.
    """
    keys = dict(keys or {})

    def key(k):
        return keys.get(k, k)

    parts = dict(parts or {})
    unknown = sorted(p for p in parts if str(p).lower() not in PARTS)
    if unknown:
        raise ValueError(f"{key('parts')} has unknown part(s) {unknown}; the parts are {PARTS}")
    parts = {str(p).lower(): r for p, r in parts.items()}
    allowed = available_rules()
    scale = parse_scale(scale, key("scale"))
    rules = {}
    for part in PARTS:
        k, name = key(f"parts.{part}"), parts.get(part) or ""
        if not name:
            k, name = key("rule"), rule
        if name not in allowed:
            raise ValueError(f"{k}={name!r} is not a learning rule; allowed: {allowed}")
        rules[part] = build_rule(name) if name == "backprop" else build_rule(name, scale=scale)
    if isinstance(exclude, str):
        exclude = [exclude]
    for i, pattern in enumerate(exclude):
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"{key('exclude')}[{i}]={pattern!r} is not a valid regex: {e}")
    if unsupported not in UNSUPPORTED:
        raise ValueError(
            f"{key('unsupported')}={unsupported!r} is not allowed; use one of {UNSUPPORTED}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{key('seed')}={seed!r} must be an integer")
    return {"rules": rules, "seed": seed, "exclude": list(exclude), "unsupported": unsupported}


_CFG_KEYS = OrderedDict(
    rule="MODEL.BIO.RULE",
    scale="MODEL.BIO.SCALE",
    seed="MODEL.BIO.SEED",
    exclude="MODEL.BIO.EXCLUDE",
    unsupported="MODEL.BIO.UNSUPPORTED",
    parts="MODEL.BIO.PARTS",
    **{f"parts.{p}": f"MODEL.BIO.PARTS.{p.upper()}" for p in PARTS},
)


def bio_args_from_cfg(cfg) -> dict:
    """
    Returns:
        dict: the keyword arguments of :func:`convert_parts` that ``cfg.MODEL.BIO`` sets,
        validated by :func:`bio_args` (errors name the config keys).
    """
    bio = cfg.MODEL.BIO
    return bio_args(
        bio.RULE,
        {p: bio.PARTS.get(p.upper(), "") for p in PARTS},
        scale=bio.SCALE,
        seed=bio.SEED,
        exclude=list(bio.EXCLUDE),
        unsupported=bio.UNSUPPORTED,
        keys=_CFG_KEYS,
    )


def rules_from_cfg(cfg) -> Dict[str, object]:
    """
    Returns:
        dict[str, LearningRule]: part name -> the rule ``cfg.MODEL.BIO`` gives it, validated.
    """
    return bio_args_from_cfg(cfg)["rules"]


def convert_parts(
    module: nn.Module,
    rules: Dict[str, object],
    *,
    seed: int = 0,
    exclude: Sequence[str] = (),
    unsupported: str = "error",
    prefix: str = "",
) -> nn.Module:
    """
    Convert every layer of ``module`` with the rule of its part (:func:`parts_of`), in place.

    Args:
        module: a whole model, or a piece of one (a backbone, a head) being built.
        rules: part name (see :data:`PARTS`) -> rule name or object.
        seed: decides the rules' states, with each layer's full module name.
        exclude: regexes on full module names of layers that keep plain autograd.
        unsupported: see :func:`bio_detectron.convert_model`.
        prefix: the piece's module name in the whole model, e.g. "backbone." or "head.", so that
            parts, seeds and ``exclude`` see the names the whole model will have.
    """
    excludes = [re.compile(p) for p in exclude]
    parts = parts_of(module, prefix)

    def rule_of(full_name):
        if any(p.search(full_name) for p in excludes):
            return None
        return rules[parts[full_name]]

    return convert_layers(module, rule_of, seed=seed, prefix=prefix, unsupported=unsupported)


def convert_from_cfg(module: nn.Module, cfg, prefix: str = "") -> nn.Module:
    """:func:`convert_parts` with the arguments ``cfg.MODEL.BIO`` sets."""
    return convert_parts(module, prefix=prefix, **bio_args_from_cfg(cfg))


def check_exclude(model: nn.Module, exclude: Sequence[str], key: str = "MODEL.BIO.EXCLUDE"):
    """Raise if an ``exclude`` regex matches no layer of the whole model."""
    names = [n for n, _ in layers_of(model)]
    for i, pattern in enumerate(exclude):
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(
                f"{key}[{i}]={pattern!r} matches no convolution/Linear layer of "
                f"{type(model).__name__}; its layers are e.g. {names[:4]}"
            )

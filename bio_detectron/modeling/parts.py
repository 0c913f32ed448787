"""
Which rule each part of a model learns with, and the one conversion of a built model by parts:
for ``MODEL.BIO`` (yacs: BioRetinaNet, BioPlausible, the classifiers) and for
:func:`bio_detectron.bio_plausible` (LazyConfig) alike. Arguments are checked once, where they are
read (:func:`bio_args`, with :mod:`bio_detectron.validate`); the core converts, in one pass over
the layers (:func:`bio_detectron.core.convert.convert_layers`).
"""

import re
from typing import Callable, Dict, Mapping, Optional, Sequence

from detectron2.modeling.backbone import Backbone
from torch import nn

from .. import validate
from ..core.convert import ArgumentError, convert_layers, layers_of
from ..core.rules import build_rule

__all__ = [
    "PARTS",
    "part_of",
    "parts_of",
    "bio_args",
    "rules_from_cfg",
    "bio_args_from_cfg",
    "convert_parts",
    "convert_from_cfg",
]

PARTS = ("backbone", "fpn", "head", "predictor")

# The final prediction layers of detectron2's heads (box, mask, keypoint, RPN, RetinaNet, FCOS,
# semantic segmentation) and of classifiers, by their module name's last component.
_PREDICTOR = re.compile(
    r"(^|\.)(cls_score|bbox_pred|objectness_logits|anchor_deltas|mask_fcn_logits|predictor|"
    r"score_lowres|ctrness|classifier)$"
)


def _bottom_up_prefixes(model: nn.Module) -> Sequence[str]:
    """
    The module-name prefixes of the bottom-up network of ``model.backbone``: its children that
    are detectron2 ``Backbone`` s themselves (FPN's ``bottom_up``, SimpleFeaturePyramid's
    ``net``); the whole backbone when it has none (a plain ResNet, RegNet, ViT, or a classifier's
    body); none when the model has no ``backbone``.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return ()
    inner = [
        f"backbone.{child}." for child, m in backbone.named_children() if isinstance(m, Backbone)
    ]
    return inner or ["backbone."]


def part_of(name: str, bottom_up: Sequence[str]) -> str:
    """
    Args:
        name: a layer's module name in a whole detectron2 model, e.g.
            "backbone.bottom_up.res2.0.conv1".
        bottom_up: the name prefixes of the backbone's bottom-up network, found from the model's
            modules (see :func:`parts_of`).

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
    return "backbone" if any(name.startswith(p) for p in bottom_up) else "fpn"


def _part_finder(model: nn.Module) -> Callable[[str], str]:
    bottom_up = _bottom_up_prefixes(model)
    return lambda name: part_of(name, bottom_up)


def parts_of(model: nn.Module) -> Dict[str, str]:
    """
    Args:
        model: a whole model (a detector, a classifier, or any module).

    Returns:
        dict[str, str]: module name -> part, for every layer of ``model``. The bottom-up network is
        found from the modules themselves, so that any backbone (ResNet, RegNet, ViT, Swin, ...)
        inside an FPN or a simple feature pyramid is "backbone" and the pyramid "fpn".
    """
    part = _part_finder(model)
    return {name: part(name) for name, _ in layers_of(model)}


# The names of bio_args's arguments in MODEL.BIO (the keys its errors name for a yacs config).
_CFG_KEYS = {
    "rule": "MODEL.BIO.RULE",
    "scale": "MODEL.BIO.SCALE",
    "seed": "MODEL.BIO.SEED",
    "exclude": "MODEL.BIO.EXCLUDE",
    "unsupported": "MODEL.BIO.UNSUPPORTED",
    "parts": "MODEL.BIO.PARTS",
    **{f"parts.{p}": f"MODEL.BIO.PARTS.{p.upper()}" for p in PARTS},
}


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
    Read a model's rule settings, checking each (:mod:`bio_detectron.validate`), and build the
    rule of each part: where ``MODEL.BIO`` and :func:`bio_detectron.bio_plausible`'s arguments
    are read.

    Args:
        rule: the rule of every part not in ``parts``.
        parts: part (see :data:`PARTS`, any case) -> rule name; "" or missing inherits ``rule``.
        scale, seed, exclude, unsupported: see :func:`bio_detectron.convert_model`. The patterns
            of ``exclude`` and ``unsupported`` are checked by the conversion, which sees the model.
        keys: how errors name each argument ("rule", "parts", "parts.<part>", "scale", "seed",
            "exclude", "unsupported"), e.g. the config keys; default the argument names.

    Returns:
        dict: the keyword arguments of :func:`convert_parts`.
    """
    keys = dict(keys or {})

    def key(k):
        return keys.get(k, k)

    parts = validate.part_names(dict(parts or {}), PARTS, key("parts"))
    scale = validate.scale(scale, key("scale"))
    rules = {}
    for part in PARTS:
        k, name = key(f"parts.{part}"), parts.get(part) or ""
        if not name:
            k, name = key("rule"), rule
        validate.learning_rule(name, k)
        rules[part] = build_rule(name) if name == "backprop" else build_rule(name, scale=scale)
    return {
        "rules": rules,
        "seed": validate.integer(seed, key("seed")),
        "exclude": [exclude] if isinstance(exclude, str) else list(exclude),
        "unsupported": unsupported,
        "keys": keys,
    }


def bio_args_from_cfg(cfg) -> dict:
    """
    Returns:
        dict: the keyword arguments of :func:`convert_parts` that ``cfg.MODEL.BIO`` sets,
        read by :func:`bio_args` (errors name the config keys).
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
    model: nn.Module,
    rules: Mapping[str, object],
    *,
    seed: int = 0,
    exclude: Sequence[str] = (),
    unsupported: str = "error",
    keys: Optional[Mapping[str, str]] = None,
) -> nn.Module:
    """
    The one conversion of a built model by parts: every layer with the rule of its part
    (:func:`parts_of`), in place, in one pass over the layers that also checks ``exclude`` and
    ``unsupported`` (:func:`~bio_detectron.core.convert.convert_layers`). Module names are the
    whole model's, so each layer's B (seeded by ``seed`` and its module name) is the same whatever
    entered the model (a yacs builder, a LazyConfig, plain Python).

    Args:
        model: the whole built model.
        rules: part name (see :data:`PARTS`) -> rule name or object.
        seed: decides the rules' states, with each layer's module name.
        exclude: regexes on module names of layers that keep plain autograd; each must match one.
        unsupported: see :func:`bio_detectron.convert_model`.
        keys: how errors name "exclude" and "unsupported" (e.g. the config keys).

    Returns:
        nn.Module: ``model``.
    """
    part = _part_finder(model)
    # Direct feedback alignment's error is the output gradient of the predictor layers (a
    # classifier's last layer; RetinaNet's cls_score and bbox_pred), whatever their rule.
    outputs = [name for name, _ in layers_of(model) if part(name) == "predictor"]
    try:
        return convert_layers(
            model,
            lambda name: rules[part(name)],
            seed=seed,
            exclude=exclude,
            unsupported=unsupported,
            outputs=outputs or None,
        )
    except ArgumentError as e:
        raise validate.core_error(e, keys or {}) from e


def convert_from_cfg(model: nn.Module, cfg) -> nn.Module:
    """:func:`convert_parts` of the whole built ``model`` with the arguments ``cfg.MODEL.BIO``
    sets: what every yacs meta-architecture of bio_detectron ends with."""
    return convert_parts(model, **bio_args_from_cfg(cfg))

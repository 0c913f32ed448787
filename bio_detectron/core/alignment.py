"""How well a learning rule's updates line up with backprop's, per converted layer.

Metrics of one converted layer with weight W and feedback weight B (``m.feedback_weight()``):

* ``weight_angle``: angle in degrees between W and B, flattened (0 for backprop, about 90 for a
  fresh random B);
* ``sign_concordance``: fraction of entries where sign(B) == sign(W) (1 for the sign rules);
* ``norm_ratio``: ||B|| / ||W||;
* ``grad_angle``: angle in degrees between the gradient of W that the rule produces and the true
  backprop gradient of the same loss, on the same batch, with the same weights (0 for backprop,
  and for a model's last layer whatever the rule: its output gradient is exact). It needs the
  probe (:mod:`bio_detectron.core.probe`);
* ``grad_norm_ratio``: ||the rule's gradient of W|| / ||backprop's||, from the same probe (1 for
  backprop). Under SGD it is how fast the layer learns next to backprop at the same learning
  rate: a rule whose feedback weakens layer by layer leaves the layers far from the loss with
  small updates, whatever their angle.

Only PyTorch is needed. :class:`bio_detectron.engine.AlignmentHook` logs these metrics during
training as ``alignment/<layer>/<metric>`` scalars; ``tools/plot_alignment.py`` draws them.
"""

import math
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from .layers import is_converted
from .probe import SUMMARY_NAMES, ForwardState, _probe, converted_layers

__all__ = [
    "LAYER_METRICS",
    "SUMMARIES",
    "alignment_metrics",
    "alignment_scalars",
    "angle_between",
    "gradient_angles",
    "norm_ratio",
    "parse_scalar_name",
    "sign_concordance",
    "weight_angle",
    "weight_metrics",
]

# Metrics logged per layer, in this order. "order" is the layer's position among the converted
# layers in the forward pass (the order the probe's forward first calls them: input to output),
# logged once per run, because metrics.json sorts keys alphabetically and plots need the depth.
LAYER_METRICS = (
    "grad_angle",
    "grad_norm_ratio",
    "weight_angle",
    "sign_concordance",
    "norm_ratio",
    "order",
)
# Model-wide summaries, logged as alignment/<summary>/<metric>:
#   mean: the mean over layers (NaNs left out) of each metric;
#   all:  the angle between all converted layers' tensors concatenated (weights, gradients), which
#         weighs layers by their size.
SUMMARIES = SUMMARY_NAMES
PREFIX = "alignment"


def _angle_of_pairs(pairs: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The angle in degrees between a = cat(a_i) and b = cat(b_i), without concatenating."""
    pairs = [(a.detach().double().flatten(), b.detach().double().flatten()) for a, b in pairs]
    if not pairs:
        return math.nan
    norm_a = math.sqrt(sum(float(a.dot(a)) for a, _ in pairs))
    norm_b = math.sqrt(sum(float(b.dot(b)) for _, b in pairs))
    if not (norm_a > 0 and norm_b > 0 and math.isfinite(norm_a) and math.isfinite(norm_b)):
        return math.nan
    # 2 * atan2(|u - v|, |u + v|) for unit u, v (Kahan): exact 0 for equal directions and accurate
    # near 0 and 180 degrees, where acos of the cosine loses half the digits.
    diff = math.sqrt(sum(float((a / norm_a - b / norm_b).square().sum()) for a, b in pairs))
    summ = math.sqrt(sum(float((a / norm_a + b / norm_b).square().sum()) for a, b in pairs))
    return math.degrees(2.0 * math.atan2(diff, summ))


def angle_between(a: torch.Tensor, b: torch.Tensor) -> float:
    """
    Args:
        a, b (Tensor): tensors with the same number of entries (any shapes).

    Returns:
        float: the angle between them as flat vectors, in degrees in [0, 180]; NaN when either is
        zero or not finite.
    """
    if a.numel() != b.numel():
        raise ValueError(f"cannot compare tensors of {a.numel()} and {b.numel()} entries")
    return _angle_of_pairs([(a, b)])


def _check_converted(module: nn.Module):
    if not is_converted(module):
        raise TypeError(
            f"{type(module).__name__} is not a converted layer; convert it with "
            "bio_detectron.convert_model first"
        )


# B is W itself under backprop and a parameter under Kolen-Pollack: read without autograd.
def _sign_concordance(w: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.sign(w.detach()) == torch.sign(b.detach())).double().mean())


def _norm_ratio(w: torch.Tensor, b: torch.Tensor) -> float:
    norm_w, norm_b = float(w.detach().double().norm()), float(b.detach().double().norm())
    return norm_b / norm_w if norm_w > 0 else math.nan


def weight_angle(module: nn.Module) -> float:
    """The angle in degrees between a converted layer's W and its feedback weight B."""
    _check_converted(module)
    return angle_between(module.weight, module.feedback_weight())


def sign_concordance(module: nn.Module) -> float:
    """The fraction of entries where sign(B) == sign(W), for a converted layer."""
    _check_converted(module)
    return _sign_concordance(module.weight.detach(), module.feedback_weight())


def norm_ratio(module: nn.Module) -> float:
    """||B|| / ||W|| for a converted layer; NaN when W is zero."""
    _check_converted(module)
    return _norm_ratio(module.weight.detach(), module.feedback_weight())


def weight_metrics(model: nn.Module) -> Dict[str, Dict[str, float]]:
    """
    Returns:
        dict[str, dict[str, float]]: layer name -> {"weight_angle", "sign_concordance",
        "norm_ratio", "order"} for every converted layer of ``model``; "order" is the layer's
        position in ``named_modules()`` (:func:`alignment_metrics` with inputs replaces it by the
        position in the forward pass).
    """
    metrics = {}
    for i, (name, m) in enumerate(converted_layers(model)):
        w, b = m.weight.detach(), m.feedback_weight()  # B made once per layer
        if b.shape != w.shape:  # direct feedback alignment's B maps the output error: no W to match
            nan = dict.fromkeys(("weight_angle", "sign_concordance", "norm_ratio"), math.nan)
            metrics[name] = {**nan, "order": float(i)}
            continue
        metrics[name] = {
            "weight_angle": angle_between(w, b),
            "sign_concordance": _sign_concordance(w, b),
            "norm_ratio": _norm_ratio(w, b),
            "order": float(i),
        }
    return metrics


def gradient_angles(model: nn.Module, args: tuple, kwargs: Optional[dict] = None, **options):
    """
    Runs :func:`~bio_detectron.core.probe.probe_gradients` (same arguments, ``loss_fn`` and
    ``start`` among ``options``) and returns layer name -> ``grad_angle`` in degrees, plus "all":
    the angle between all layers' gradients concatenated. A layer gets NaN when either gradient is
    None (the loss does not reach it) or zero (e.g. behind dead ReLUs); frozen layers are left out.

    Returns:
        dict[str, float]
    """
    return _gradient_angles(model, args, kwargs, **options)[0]


def _gradient_angles(model, args, kwargs=None, **options):
    """(layer -> grad_angle plus "all", layer -> grad_norm_ratio, the layers' call order)."""
    grads, call_order = _probe(model, args, kwargs, **options)
    angles, ratios = {}, {}
    for name, (own, exact) in grads.items():
        angles[name] = math.nan if own is None or exact is None else angle_between(own, exact)
        ratios[name] = math.nan if own is None or exact is None else _norm_ratio(exact, own)
    pairs = [(g, e) for g, e in grads.values() if g is not None and e is not None]
    angles["all"] = _angle_of_pairs(pairs) if pairs else math.nan
    return angles, ratios, call_order


def _nanmean(values: Iterable[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def alignment_metrics(
    model: nn.Module,
    args: Optional[tuple] = None,
    kwargs: Optional[dict] = None,
    *,
    loss_fn: Optional[Callable] = None,
    start: Optional[ForwardState] = None,
) -> Dict[str, Dict[str, float]]:
    """
    All metrics of all converted layers, and the summaries.

    Args:
        model, args, kwargs, loss_fn, start: as in :func:`probe_gradients`. Without ``args``
            there is no probe, and no ``grad_angle``.

    Returns:
        dict[str, dict[str, float]]: layer name -> metric -> value (see :data:`LAYER_METRICS`;
        "order" is the position in the forward pass with a probe, in ``named_modules()``
        without), plus "mean" (per metric, the mean over layers, NaNs left out) and "all"
        (``weight_angle`` and ``grad_angle`` of all layers concatenated).
    """
    metrics = weight_metrics(model)
    weights = [(m.weight, m.feedback_weight()) for _, m in converted_layers(model)]
    summary_all = {
        "weight_angle": _angle_of_pairs([(w, b) for w, b in weights if b.shape == w.shape])
    }
    if args is not None:
        angles, ratios, call_order = _gradient_angles(
            model, args, kwargs, loss_fn=loss_fn, start=start
        )
        summary_all["grad_angle"] = angles.pop("all")
        for name, angle in angles.items():
            metrics[name]["grad_angle"] = angle
            metrics[name]["grad_norm_ratio"] = ratios[name]
        for i, name in enumerate(call_order):
            metrics[name]["order"] = float(i)
    names = [k for k in LAYER_METRICS if k != "order"]
    metrics["mean"] = {k: _nanmean(m[k] for m in metrics.values() if k in m) for k in names}
    metrics["all"] = summary_all
    return metrics


def alignment_scalars(
    metrics: Dict[str, Dict[str, float]], *, order: bool = True
) -> Dict[str, float]:
    """
    Args:
        metrics: as returned by :func:`alignment_metrics`.
        order (bool): whether to include each layer's "order".

    Returns:
        dict[str, float]: ``alignment/<name>/<metric>`` -> value, NaNs left out (they are not
        valid JSON).
    """
    scalars = {}
    for name, values in metrics.items():
        for metric, value in values.items():
            if (metric == "order" and not order) or not math.isfinite(value):
                continue
            scalars[f"{PREFIX}/{name}/{metric}"] = float(value)
    return scalars


def parse_scalar_name(key: str) -> Optional[Tuple[str, str]]:
    """
    Returns:
        (str, str) or None: (layer or summary name, metric) for an ``alignment/<name>/<metric>``
        scalar name, None for any other name.
    """
    head, sep, rest = key.partition("/")
    name, sep2, metric = rest.rpartition("/")
    if head != PREFIX or not sep or not sep2 or not name or metric not in LAYER_METRICS:
        return None
    return name, metric

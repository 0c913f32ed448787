"""
The optimizers of both trainers: detectron2's SGD, or the seed paper's batch-manhattan SGD.

Batch manhattan (Liao, Leibo & Poggio 2016) replaces each parameter's mini-batch gradient by its
sign; the seed paper's code (Xiao et al. 2018, ``optim/bm_sgd.py`` and ``optim/bm_nsc_sgd.py`` of
willwx/sign-symmetry) trained sign-symmetry with it. Its update, per parameter W:

    g = sign(grad) + wd * W;   v = momentum * v + g   (v = g at the first step);   W -= lr * v

and its no-sign-change variant sets a weight whose update would flip its sign (or make it 0) to
+-1e-10, keeping the sign it had. The seed code applies both to every parameter but the last
layer's, which has switches and a learning rate of its own, and leaves biases out of no-sign-change.
"""

import logging
from typing import Dict, List, Optional

import torch
from detectron2.solver import build_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from torch import nn

from . import validate
from .core.layers import FeedbackLayer
from .core.optim import BatchManhattanSGD
from .modeling.parts import parts_of

__all__ = [
    "OPTIMIZERS",
    "bio_param_groups",
    "build_bio_optimizer",
    "check_trained_feedback",
    "last_layer_parameters",
    "schedule_weight_decay",
    "weight_decay_for_schedule",
]

logger = logging.getLogger(__name__)

# The values of SOLVER.BIO.OPTIMIZER.
OPTIMIZERS = ("SGD", "BatchManhattanSGD")


def last_layer_parameters(model: nn.Module) -> Dict[nn.Parameter, str]:
    """
    Returns:
        dict[Parameter, str]: the parameters of the model's last layer(s), the layers of part
        "predictor" (:func:`bio_detectron.modeling.parts.part_of`: RetinaNet's ``cls_score`` and
        ``bbox_pred``, a classifier's ``classifier``), with their names.
    """
    modules = dict(model.named_modules())
    params = {}
    for name, part in parts_of(model).items():
        if part == "predictor":
            for p_name, p in modules[name].named_parameters(recurse=False):
                params.setdefault(p, f"{name}.{p_name}")
    return params


def schedule_weight_decay(cfg):
    """
    Resolve ``SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER``: with R > 0, ``SOLVER.WEIGHT_DECAY``,
    ``WEIGHT_DECAY_NORM`` and ``WEIGHT_DECAY_BIAS`` (where set) are the decays of runs of up to R
    iterations, and a longer run of ``SOLVER.MAX_ITER`` iterations gets them times R / MAX_ITER,
    so that lr x decay x iterations stays what it is at R iterations. Shorter runs keep them (a
    stronger decay was not found to help a shorter run: docs/results.md, "Weight decay and the
    budget").

    Returns:
        CfgNode: ``cfg`` itself when R is 0; else a copy (frozen if ``cfg`` was) with the decays
        for MAX_ITER and R set to 0, so that resolving it again changes nothing.
    """
    s = cfg.SOLVER
    key = "SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER"
    reference = validate.nonnegative_int(s.BIO.WEIGHT_DECAY_REFERENCE_ITER, key)
    if reference == 0:
        return cfg
    if not (isinstance(s.MAX_ITER, int) and s.MAX_ITER > 0):
        raise ValueError(
            f"{key}={reference} scales the weight decay by {reference} / SOLVER.MAX_ITER, but "
            f"SOLVER.MAX_ITER={s.MAX_ITER!r}: set it to the run's length (an integer > 0), or "
            f"{key} to 0"
        )
    factor = weight_decay_for_schedule(1.0, reference, s.MAX_ITER)
    frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    decays = {}
    for name in ("WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "WEIGHT_DECAY_BIAS"):
        value = cfg.SOLVER.get(name)
        if value is not None:  # WEIGHT_DECAY_BIAS None: WEIGHT_DECAY's, scaled with it
            validate.nonnegative_number(value, f"SOLVER.{name}", "no weight decay")
            cfg.SOLVER[name] = value * factor
            decays[name] = f"{value:g} -> {cfg.SOLVER[name]:g}"
    cfg.SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER = 0  # resolved: a later MAX_ITER leaves it
    if frozen:
        cfg.freeze()
    if factor != 1.0:
        logger.info(
            "Weight decay for %d iterations (%s=%d): %s",
            s.MAX_ITER, key, reference, ", ".join(f"SOLVER.{k} {v}" for k, v in decays.items()),
        )  # fmt: skip
    return cfg


def weight_decay_for_schedule(weight_decay: float, reference_iter: int, max_iter: int) -> float:
    """
    ``weight_decay`` of runs of up to ``reference_iter`` iterations, for a run of ``max_iter``:
    times ``reference_iter / max_iter`` when the run is longer, unchanged otherwise (the rule of
    ``SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER``, :func:`schedule_weight_decay`). In a LazyConfig,
    the optimizer's decay can follow ``train.max_iter`` the same way::

        optimizer.weight_decay = L(weight_decay_for_schedule)(
            weight_decay=0.05, reference_iter=800, max_iter="${train.max_iter}"
        )
    """
    validate.nonnegative_number(weight_decay, "weight_decay", "no weight decay")
    for name, value, what in (("reference_iter", reference_iter, ""),
                              ("max_iter", max_iter, " (the run's length)")):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be an integer >= 1{what}")
    return weight_decay * min(1.0, reference_iter / max_iter)


def build_bio_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """
    The optimizer of ``SOLVER.BIO`` (see :func:`bio_detectron.add_bio_config`).

    With the defaults (``OPTIMIZER "SGD"``, no sign change and no last-layer option) it is
    detectron2's ``build_optimizer(cfg, model)``, unchanged. Otherwise a
    :class:`BatchManhattanSGD` with detectron2's parameter groups (``SOLVER.BASE_LR``,
    ``WEIGHT_DECAY``, ``WEIGHT_DECAY_NORM``, ``BIAS_LR_FACTOR``, ``WEIGHT_DECAY_BIAS``,
    ``MOMENTUM``, ``NESTEROV``), each split into the seed code's groups: the last layer (batch
    manhattan by ``LAST_LAYER_BATCH_MANHATTAN``, no sign change by ``LAST_LAYER_NO_SIGN_CHANGE``,
    learning rate ``LAST_LAYER_LR`` times the group's factor) and the rest (batch manhattan when
    ``OPTIMIZER`` is "BatchManhattanSGD", no sign change by ``NO_SIGN_CHANGE``); biases never get
    no sign change. Gradient clipping (``SOLVER.CLIP_GRADIENTS``) applies as in detectron2.

    The weight decays are those of :func:`schedule_weight_decay` (scaled to ``SOLVER.MAX_ITER``
    when ``SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER`` > 0), times
    ``SOLVER.BIO.BATCH_MANHATTAN_WEIGHT_DECAY_FACTOR`` where a parameter steps by batch manhattan.

    Args:
        model: the model before it is wrapped in DistributedDataParallel.
    """
    cfg = schedule_weight_decay(cfg)
    s = cfg.SOLVER.BIO
    validate.one_of(s.OPTIMIZER, OPTIMIZERS, "SOLVER.BIO.OPTIMIZER")
    validate.nonnegative_number(s.LAST_LAYER_LR, "SOLVER.BIO.LAST_LAYER_LR", "SOLVER.BASE_LR")
    custom = (
        s.OPTIMIZER != "SGD"
        or s.NO_SIGN_CHANGE
        or s.LAST_LAYER_BATCH_MANHATTAN
        or s.LAST_LAYER_NO_SIGN_CHANGE
        or s.LAST_LAYER_LR > 0
        or s.BATCH_MANHATTAN_WEIGHT_DECAY_FACTOR != 1
    )
    if not custom:
        optimizer = build_optimizer(cfg, model)
        check_trained_feedback(optimizer, model)
        return optimizer

    groups = bio_param_groups(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        batch_manhattan=s.OPTIMIZER == "BatchManhattanSGD",
        no_sign_change=s.NO_SIGN_CHANGE,
        last_layer_batch_manhattan=s.LAST_LAYER_BATCH_MANHATTAN,
        last_layer_no_sign_change=s.LAST_LAYER_NO_SIGN_CHANGE,
        last_layer_lr=s.LAST_LAYER_LR,
        batch_manhattan_weight_decay_factor=s.BATCH_MANHATTAN_WEIGHT_DECAY_FACTOR,
        keys="SOLVER.BIO.",
    )
    optimizer = BatchManhattanSGD(
        groups,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
    _log_groups(optimizer, model)
    check_trained_feedback(optimizer, model)
    return maybe_add_gradient_clipping(cfg, optimizer)


def bio_param_groups(
    model: nn.Module,
    base_lr: float,
    *,
    weight_decay: Optional[float] = None,
    weight_decay_norm: Optional[float] = None,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
    batch_manhattan: bool = True,
    no_sign_change: bool = False,
    last_layer_batch_manhattan: bool = False,
    last_layer_no_sign_change: bool = False,
    last_layer_lr: float = 0.0,
    batch_manhattan_weight_decay_factor: float = 1.0,
    keys: str = "",
) -> List[dict]:
    """
    The parameter groups of a :class:`BatchManhattanSGD`: detectron2's
    (``get_default_optimizer_params``), each split into the last layer's (the "predictor" part,
    :func:`last_layer_parameters`) and the rest's, with their own switches and learning rate. It
    is what :func:`build_bio_optimizer` uses for ``SOLVER.BIO``, and the ``params`` of a
    LazyConfig's optimizer::

        optimizer = L(BatchManhattanSGD)(
            params=L(bio_param_groups)(
                base_lr="${..lr}", weight_decay="${..weight_decay}", last_layer_lr=0.01
            ),
            lr=0.0001, momentum=0.9, weight_decay=1e-4,
        )  # the trainer sets optimizer.params.model

    Args:
        model: the model before it is wrapped in DistributedDataParallel.
        base_lr: the optimizer's learning rate (a group's lr is relative to it).
        weight_decay: the decay of every group that sets none of its own (norms and biases may:
            ``weight_decay_norm``, ``weight_decay_bias``); None: the optimizer's. Needed when
            ``batch_manhattan_weight_decay_factor`` is not 1.
        weight_decay_norm, bias_lr_factor, weight_decay_bias: as detectron2's.
        batch_manhattan, no_sign_change: the switches of every parameter but the last layer's.
        last_layer_batch_manhattan, last_layer_no_sign_change: the last layer's switches.
        last_layer_lr: the last layer's learning rate (times its group's factor); 0: ``base_lr``.
        batch_manhattan_weight_decay_factor: multiplies the weight decay of every group that steps
            by batch manhattan. Its step is lr * (sign(grad) + decay * W), so with the small lr
            batch manhattan needs, the decay shrinks W by lr * decay per step, far less than the
            same decay does under SGD's larger lr; SGD's lr / batch manhattan's lr restores SGD's
            shrink per step.
        keys: the prefix of the options' names in errors ("SOLVER.BIO." for the yacs keys).

    Returns:
        list[dict]: the groups, each with "params", "lr", "batch_manhattan", "no_sign_change" and
        detectron2's other hyperparameters. Biases never get no sign change.
    """
    factor_key = "BATCH_MANHATTAN_WEIGHT_DECAY_FACTOR"
    factor_key = keys + factor_key if keys else factor_key.lower()
    factor = validate.nonnegative_number(
        batch_manhattan_weight_decay_factor, factor_key, "no weight decay where batch manhattan"
    )
    if factor != 1:
        if not (batch_manhattan or last_layer_batch_manhattan):
            switches = (
                "SOLVER.BIO.OPTIMIZER is not BatchManhattanSGD and "
                "SOLVER.BIO.LAST_LAYER_BATCH_MANHATTAN is off"
                if keys
                else "batch_manhattan and last_layer_batch_manhattan are off"
            )
            raise ValueError(
                f"{factor_key}={factor:g} is set, but no parameter steps by batch manhattan "
                f"({switches})"
            )
        if weight_decay is None:
            raise ValueError(f"{factor_key}={factor:g} needs weight_decay, the decay it multiplies")
    last = last_layer_parameters(model)
    set_keys = [
        key
        for key, value in (
            ("last_layer_batch_manhattan", last_layer_batch_manhattan),
            ("last_layer_no_sign_change", last_layer_no_sign_change),
            ("last_layer_lr", last_layer_lr > 0),
        )
        if value
    ]
    if set_keys and not last:
        key = keys + set_keys[0].upper() if keys else set_keys[0]
        raise ValueError(
            f"{key} is set, but {type(model).__name__} has no last layer (no "
            "layer of part 'predictor', e.g. cls_score, bbox_pred or classifier)"
        )
    names = {p: n for n, p in model.named_parameters()}
    groups: List[dict] = []
    for group in get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        bias_lr_factor=bias_lr_factor,
        weight_decay_bias=weight_decay_bias,
    ):
        split: Dict[tuple, List[nn.Parameter]] = {}
        for p in group["params"]:
            is_last, name = p in last, names[p]
            nsc = last_layer_no_sign_change if is_last else no_sign_change
            nsc = nsc and not name.endswith("bias")
            if nsc and name.endswith(".feedback"):
                key = "NO_SIGN_CHANGE" if keys else "no_sign_change"
                key = keys + ("LAST_LAYER_" if keys else "last_layer_") * is_last + key
                raise ValueError(
                    f"{name} is a feedback weight trained like its layer's weight (kolen_pollack); "
                    f"no sign change would clamp W and B apart. Turn off {key} or use another "
                    "rule."
                )
            split.setdefault((is_last, nsc), []).append(p)
        for (is_last, nsc), params in split.items():
            hyper = {k: v for k, v in group.items() if k != "params"}
            if is_last and last_layer_lr > 0:
                hyper["lr"] = last_layer_lr * hyper.get("lr", base_lr) / base_lr
            hyper["batch_manhattan"] = bool(
                last_layer_batch_manhattan if is_last else batch_manhattan
            )
            hyper["no_sign_change"] = bool(nsc)
            if hyper["batch_manhattan"] and factor != 1:
                hyper["weight_decay"] = hyper["weight_decay"] * factor
            groups.append({"params": params, **hyper})
    return groups


def _log_groups(optimizer, model):
    names = {p: n for n, p in model.named_parameters()}
    last = last_layer_parameters(model)
    for g in optimizer.param_groups:
        which = "last layer" if g["params"][0] in last else "other layers"
        logger.info(
            f"{which}: {len(g['params'])} parameters (e.g. {names[g['params'][0]]}), lr "
            f"{g['lr']:g}, weight decay {g['weight_decay']:g}"
            + (", batch manhattan" if g["batch_manhattan"] else "")
            + (", no sign change" if g["no_sign_change"] else "")
        )


def check_trained_feedback(optimizer: torch.optim.Optimizer, model: nn.Module):
    """
    Raise unless every trained feedback weight (``feedback_kind "parameter"``, e.g. kolen_pollack's
    B) is in a parameter group whose hyperparameters are those of its layer's weight: B must get
    W's update and weight decay.
    """
    group_of = {}
    for i, g in enumerate(optimizer.param_groups):
        for p in g["params"]:
            group_of[p] = i

    def hyper(i):
        g = optimizer.param_groups[i]
        return {k: v for k, v in g.items() if k not in ("params", "param_names")}

    for name, m in model.named_modules():
        if not isinstance(m, FeedbackLayer) or m.learning_rule.feedback_kind != "parameter":
            continue
        w, b = m.weight, m.feedback
        if not w.requires_grad or w not in group_of:
            continue
        if b not in group_of:
            raise ValueError(
                f"{name}.feedback ({m.rule}) is not in the optimizer, but {name}.weight is: B "
                "must be trained with W"
            )
        if hyper(group_of[w]) != hyper(group_of[b]):
            raise ValueError(
                f"{name}.feedback ({m.rule}) must be optimized like {name}.weight, but its "
                f"parameter group has {hyper(group_of[b])} and the weight's {hyper(group_of[w])}"
            )

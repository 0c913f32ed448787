"""How well a learning rule's updates line up with backprop's, per converted layer, during training.

Metrics of one converted layer with weight W and feedback weight B (``m.feedback_weight()``):

* ``weight_angle``: angle in degrees between W and B, flattened (0 for backprop, about 90 for a
  fresh random B);
* ``sign_concordance``: fraction of entries where sign(B) == sign(W) (1 for the sign rules);
* ``norm_ratio``: ||B|| / ||W||;
* ``grad_angle``: angle in degrees between the gradient of W that the rule produces and the true
  backprop gradient of the same loss, on the same batch, with the same weights (0 for backprop,
  and for a model's last layer whatever the rule: its output gradient is exact).

``grad_angle`` needs a *probe* (:func:`probe_gradients`): two forward and backward passes of the
unwrapped model, one with the layers' own rules and one with every converted layer set to
backprop, using ``torch.autograd.grad`` so that no ``.grad`` is touched. The probe leaves training
exactly as it would have been without it: buffers (BatchNorm statistics), plain module attributes
(RetinaNet's loss-normalizer EMA), random number generators and learning rules are restored.

:class:`AlignmentHook` logs all of them as ``alignment/<layer>/<metric>`` scalars into the
EventStorage, every ``MODEL.BIO.ALIGNMENT.PERIOD`` iterations; ``tools/plot_alignment.py`` draws
them.
"""

import contextlib
import logging
import math
import random
import types
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.engine.hooks import PeriodicWriter
from detectron2.engine.train_loop import HookBase, TrainerBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage, get_event_storage
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import is_converted
from ..rules import build_rule

__all__ = [
    "ForwardState",
    "LAYER_METRICS",
    "SUMMARIES",
    "AlignmentHook",
    "alignment_metrics",
    "alignment_scalars",
    "angle_between",
    "build_alignment_hook",
    "converted_layers",
    "gradient_angles",
    "norm_ratio",
    "parse_scalar_name",
    "probe_gradients",
    "sign_concordance",
    "total_loss",
    "weight_angle",
    "weight_metrics",
]

logger = logging.getLogger(__name__)

# Metrics logged per layer, in this order. "order" is the layer's position among the converted
# layers in the forward pass (the order the probe's forward first calls them: input to output),
# logged once per run, because metrics.json sorts keys alphabetically and plots need the depth.
LAYER_METRICS = ("grad_angle", "weight_angle", "sign_concordance", "norm_ratio", "order")
# Model-wide summaries, logged as alignment/<summary>/<metric>:
#   mean: the mean over layers (NaNs left out) of each metric;
#   all:  the angle between all converted layers' tensors concatenated (weights, gradients), which
#         weighs layers by their size.
SUMMARIES = ("mean", "all")
PREFIX = "alignment"


# ----------------------------------------------------------------------------------------------
# Metrics of tensors and layers
# ----------------------------------------------------------------------------------------------
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


def _sign_concordance(w: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.sign(w) == torch.sign(b)).double().mean())


def _norm_ratio(w: torch.Tensor, b: torch.Tensor) -> float:
    norm_w, norm_b = float(w.double().norm()), float(b.double().norm())
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


def converted_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """
    Returns:
        list[(str, nn.Module)]: the converted layers of ``model`` in ``named_modules()`` order,
        named as there; "model" when ``model`` itself is a converted layer, and a trailing "_" for
        a top-level layer named like a summary (:data:`SUMMARIES`).
    """
    layers = []
    for name, m in model.named_modules():
        if is_converted(m):
            name = name or "model"
            layers.append((name + "_" if name in SUMMARIES else name, m))
    return layers


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
        metrics[name] = {
            "weight_angle": angle_between(w, b),
            "sign_concordance": _sign_concordance(w, b),
            "norm_ratio": _norm_ratio(w, b),
            "order": float(i),
        }
    return metrics


# ----------------------------------------------------------------------------------------------
# The probe: the rule's gradients and backprop's, on the same batch
# ----------------------------------------------------------------------------------------------
def total_loss(output) -> torch.Tensor:
    """
    The loss a detectron2 training loop would minimise: the sum of a loss dict's values, or a
    single loss tensor.
    """
    if isinstance(output, dict):
        if not output:
            raise ValueError("the model returned an empty loss dict")
        return sum(output.values())
    if isinstance(output, torch.Tensor):
        if output.numel() != 1:
            raise ValueError(
                f"the model returned a tensor of shape {tuple(output.shape)}, not a scalar loss; "
                "pass loss_fn to turn its output into one"
            )
        return output.reshape(())
    raise TypeError(
        f"the model returned a {type(output).__name__}, not a loss dict or a loss tensor; "
        "pass loss_fn to turn its output into a scalar loss"
    )


def _get_rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": np.random.get_state(),
    }
    # Only when CUDA is in use: querying it would otherwise initialise it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class ForwardState:
    """
    A snapshot of what a training forward pass reads or changes in a model besides its weights
    and inputs: the random number generators (torch, CUDA when in use, ``random``, numpy), every
    buffer's value (BatchNorm running statistics, num_batches_tracked) and which buffers exist,
    and the modules' plain attributes (rebound ones, such as RetinaNet's ``loss_normalizer`` EMA;
    objects mutated in place other than buffers are not covered). :meth:`restore` puts them back.
    """

    def __init__(self, model: nn.Module):
        self._rng = _get_rng_state()
        self._modules = list(model.modules())
        self._attrs = [dict(m.__dict__) for m in self._modules]
        self._buffers = [dict(m._buffers) for m in self._modules]
        self._values = [
            {k: b.detach().clone() for k, b in bufs.items() if b is not None}
            for bufs in self._buffers
        ]

    @torch.no_grad()
    def restore(self):
        for m, attrs, bufs, values in zip(self._modules, self._attrs, self._buffers, self._values):
            for k in [k for k in m.__dict__ if k not in attrs]:
                del m.__dict__[k]
            m.__dict__.update(attrs)
            m._buffers.clear()
            m._buffers.update(bufs)
            for k, v in values.items():
                bufs[k].copy_(v)
        _set_rng_state(self._rng)


def _sync_batch_norm_classes() -> tuple:
    classes = [nn.SyncBatchNorm]
    try:
        from detectron2.layers import NaiveSyncBatchNorm

        classes.append(NaiveSyncBatchNorm)
    except ImportError:
        pass
    return tuple(classes)


@contextlib.contextmanager
def _local_batch_norm(model: nn.Module):
    """
    Within the block, synchronised BatchNorm layers normalise with the local batch's statistics:
    their forward would all-reduce across processes, which a probe run by one process alone must
    not do. The two passes of a probe are then compared under the same normalisation.
    """
    patched = [m for m in model.modules() if isinstance(m, _sync_batch_norm_classes())]
    for m in patched:
        m.forward = types.MethodType(_BatchNorm.forward, m)
    try:
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


@contextlib.contextmanager
def _rules_set_to_backprop(layers: Sequence[nn.Module]):
    """Within the block, every given layer learns with backprop; its feedback buffer is kept."""
    saved = [m.learning_rule for m in layers]
    backprop = build_rule("backprop")
    for m in layers:
        m.learning_rule = backprop
    try:
        yield
    finally:
        for m, rule in zip(layers, saved):
            m.learning_rule = rule


@contextlib.contextmanager
def _own_event_storage():
    """Scalars the model logs during the probe (e.g. ROI-head statistics) go to a storage of
    their own, not into the training's history."""
    try:
        start_iter = get_event_storage().iter
    except AssertionError:  # no storage: the probe is used outside a trainer
        start_iter = 0
    with EventStorage(start_iter):
        yield


def _check_inputs(args, kwargs):
    if not isinstance(args, tuple):
        raise TypeError(
            f"args must be the tuple of the model's positional inputs, e.g. (batched_inputs,); "
            f"got a {type(args).__name__}"
        )
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict or None; got a {type(kwargs).__name__}")
    return kwargs or {}


def probe_gradients(
    model: nn.Module,
    args: tuple,
    kwargs: Optional[dict] = None,
    *,
    loss_fn: Optional[Callable] = None,
    start: Optional[ForwardState] = None,
) -> Dict[str, Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]:
    """
    The gradient of each converted layer's weight under its own rule and under exact backprop,
    for the same loss, batch and weights. Nothing else changes: no ``.grad`` is written, and the
    model's buffers and attributes, the learning rules and the random number generators (torch,
    CUDA, ``random``, numpy) are as before when this returns. The model keeps its mode; call it on
    the unwrapped model (not a DistributedDataParallel wrapper), so that nothing is synchronised.
    Synchronised BatchNorm normalises with local statistics here, and hooks registered on
    ``model`` itself do not run (``model.forward`` is called; its submodules' hooks do run).

    Args:
        model (nn.Module): a model with converted layers.
        args (tuple): the model's positional inputs, e.g. ``(batched_inputs,)``.
        kwargs (dict): its keyword inputs.
        loss_fn (callable): output of the model -> scalar loss; default :func:`total_loss`.
        start (ForwardState): the state both passes start from. The hook takes it just before
            the training forward, so that the rule's pass repeats that forward exactly (dropout
            masks, sampling, loss normalisers) and gives the step's own gradients. Default: the
            current state.

    Returns:
        dict[str, (Tensor or None, Tensor or None)]: layer name -> (the rule's gradient, backprop's
        gradient), each shaped like the weight; None where the loss does not depend on the weight.
        Layers whose weight does not require grad (frozen) are left out. Layers are in the order
        the forward pass first calls them (input to output), the ones it does not call last.
    """
    return _probe(model, args, kwargs, loss_fn=loss_fn, start=start)[0]


@contextlib.contextmanager
def _recording_call_order(layers: Sequence[Tuple[str, nn.Module]], order: List[str]):
    def record(name):
        def hook(module, args):
            if name not in seen:
                seen.add(name)
                order.append(name)

        return hook

    seen = set()
    handles = [m.register_forward_pre_hook(record(name)) for name, m in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        order.extend(name for name, _ in layers if name not in seen)


def _probe(model, args, kwargs=None, *, loss_fn=None, start=None):
    """:func:`probe_gradients`, and the names of all converted layers in forward-call order."""
    kwargs = _check_inputs(args, kwargs)
    loss_fn = loss_fn or total_loss
    every = converted_layers(model)
    layers = [(n, m) for n, m in every if m.weight.requires_grad]
    if not layers:
        return {}, [n for n, _ in every]
    weights = [m.weight for _, m in layers]

    def gradients():
        # model.forward, not model(): hooks on the model itself belong to the training loop
        # (a trainer's loss check may communicate across processes) and must not see the probe.
        loss = loss_fn(model.forward(*args, **kwargs))
        if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
            raise ValueError("the probe's loss does not depend on any trainable converted weight")
        return torch.autograd.grad(loss, weights, allow_unused=True)

    now = ForwardState(model)
    start = start or now
    try:
        with _own_event_storage(), torch.enable_grad():
            start.restore()
            call_order = []
            with _local_batch_norm(model), _recording_call_order(every, call_order):
                own = gradients()
            start.restore()
            with _local_batch_norm(model), _rules_set_to_backprop([m for _, m in layers]):
                exact = gradients()
    finally:
        now.restore()
    grads = {name: (g, e) for (name, _), g, e in zip(layers, own, exact)}
    return {name: grads[name] for name in call_order if name in grads}, call_order


def gradient_angles(
    model: nn.Module,
    args: tuple,
    kwargs: Optional[dict] = None,
    *,
    loss_fn: Optional[Callable] = None,
    start: Optional[ForwardState] = None,
) -> Dict[str, float]:
    """
    Runs :func:`probe_gradients` and returns layer name -> ``grad_angle`` in degrees, plus "all":
    the angle between all layers' gradients concatenated. A layer gets NaN when either gradient is
    None (the loss does not reach it) or zero (e.g. behind dead ReLUs); frozen layers are left out.
    """
    return _gradient_angles(model, args, kwargs, loss_fn=loss_fn, start=start)[0]


def _gradient_angles(model, args, kwargs=None, *, loss_fn=None, start=None):
    grads, call_order = _probe(model, args, kwargs, loss_fn=loss_fn, start=start)
    angles = {}
    for name, (own, exact) in grads.items():
        angles[name] = math.nan if own is None or exact is None else angle_between(own, exact)
    pairs = [(g, e) for g, e in grads.values() if g is not None and e is not None]
    angles["all"] = _angle_of_pairs(pairs) if pairs else math.nan
    return angles, call_order


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
    summary_all = {
        "weight_angle": _angle_of_pairs(
            [(m.weight, m.feedback_weight()) for _, m in converted_layers(model)]
        )
    }
    if args is not None:
        angles, call_order = _gradient_angles(model, args, kwargs, loss_fn=loss_fn, start=start)
        summary_all["grad_angle"] = angles.pop("all")
        for name, angle in angles.items():
            metrics[name]["grad_angle"] = angle
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


# ----------------------------------------------------------------------------------------------
# The training hook
# ----------------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


class _AfterBackwardRelay(HookBase):
    """
    Passes ``after_backward`` on to a hook of an enclosing trainer. DefaultTrainer keeps its hooks
    but delegates ``run_step`` to an inner SimpleTrainer/AMPTrainer, whose ``after_backward`` only
    calls the inner trainer's own hooks.
    """

    def __init__(self, hook: "AlignmentHook"):
        self.hook = hook

    def after_backward(self):
        self.hook.after_backward()


class AlignmentHook(HookBase):
    """
    Logs the alignment metrics of every converted layer (see this module's docstring) as
    ``alignment/<layer>/<metric>`` scalars, and the summaries as ``alignment/mean/<metric>`` and
    ``alignment/all/{grad_angle,weight_angle}``, at iterations where ``(iter + 1) % period == 0``:
    the ones detectron2's writers write at when ``period`` is a multiple of their period (20 in
    DefaultTrainer). Writers keep only the latest value of a scalar, so values of iterations in
    between would not reach metrics.json or TensorBoard.

    How: before a logging iteration, a forward pre-hook is put on the unwrapped model; the
    training forward hands it the batch (and the random state before it), and it removes itself.
    In ``after_backward``, before the optimizer step, :func:`probe_gradients` compares the rule's
    gradients with backprop's on that batch with the same weights and the same dropout masks. The
    training trajectory is exactly the same as without the hook. Other iterations cost nothing.
    The probe runs in full precision, also under AMP.

    Distributed training: only the main process probes and logs; the others do nothing. The probe
    calls the unwrapped model, makes no collective call (synchronised BatchNorm normalises locally
    during the probe) and restores everything it changes, so the processes stay in step.

    Works with SimpleTrainer, AMPTrainer and DefaultTrainer (registered with the trainer whose
    ``train()`` runs; for a DefaultTrainer it relays the inner trainer's ``after_backward``).
    """

    def __init__(
        self,
        period: int,
        model: Optional[nn.Module] = None,
        *,
        loss_fn: Optional[Callable] = None,
    ):
        """
        Args:
            period (int): log every ``period`` iterations; 0 turns the hook off (it then does
                nothing at all).
            model (nn.Module): the model trained, wrapped in DistributedDataParallel or not;
                default: the trainer's ``model`` at the start of training.
            loss_fn (callable): output of the model -> scalar loss; default :func:`total_loss`
                (the sum of a loss dict), as detectron2's trainers compute it.
        """
        if isinstance(period, bool) or not isinstance(period, int) or period < 0:
            raise ValueError(f"period={period!r}: must be an integer >= 0 (0 turns logging off)")
        self.period = period
        self._model = _unwrap(model) if model is not None else None
        self._loss_fn = loss_fn
        self._handle = None  # the forward pre-hook, only while waiting for a logging forward
        self._captured = None  # (args, kwargs, ForwardState) of that forward
        self._pending = False  # a logging iteration whose metrics are not written yet
        self._order_logged = False
        self._warned = False

    @property
    def active(self) -> bool:
        return self.period > 0 and comm.is_main_process()

    def before_train(self):
        if not self.active:
            return
        if self._model is None:
            self._model = _unwrap(self.trainer.model)
        if not converted_layers(self._model):
            logger.warning("AlignmentHook: the model has no converted layer; nothing to log.")
        for writer in getattr(self.trainer, "_hooks", []):
            writer_period = getattr(writer, "_period", None)
            if isinstance(writer, PeriodicWriter) and self.period % writer_period:
                logger.warning(
                    f"AlignmentHook: period {self.period} is not a multiple of the writers' period "
                    f"{writer_period}; only the values of iterations the writers write at reach "
                    "metrics.json and TensorBoard"
                )
        inner = getattr(self.trainer, "_trainer", None)
        if isinstance(inner, TrainerBase) and not any(
            isinstance(h, _AfterBackwardRelay) and h.hook is self for h in inner._hooks
        ):
            inner.register_hooks([_AfterBackwardRelay(self)])

    def before_step(self):
        if not self.active or (self.trainer.iter + 1) % self.period != 0:
            return
        self._pending = True
        self._remove_pre_hook()
        self._handle = self._model.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module, args, kwargs):
        # Only the training forward; an evaluation inside the step (no grad, eval mode) is not it.
        if not (module.training and torch.is_grad_enabled()):
            return None
        self._captured = (args, kwargs, ForwardState(module))
        self._remove_pre_hook()
        return None

    def _remove_pre_hook(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def after_backward(self):
        if not self._pending:
            return
        self._pending = False
        self._remove_pre_hook()
        captured, self._captured = self._captured, None
        args, kwargs, start = captured if captured is not None else (None, None, None)
        if captured is None:
            self._warn_once("the model's training forward was not seen; no grad_angle logged")
        metrics = alignment_metrics(self._model, args, kwargs, loss_fn=self._loss_fn, start=start)
        self._put(metrics, forward_order=captured is not None)

    def after_step(self):
        if not self._pending:
            return
        # after_backward was not called: a trainer that neither calls it nor is a DefaultTrainer.
        # The weights have been stepped by now, so only the weight metrics are logged.
        self._pending = False
        self._remove_pre_hook()
        self._captured = None
        self._warn_once(
            "after_backward was not called by the trainer; only weight metrics are logged, after "
            "the optimizer step"
        )
        self._put(alignment_metrics(self._model), forward_order=False)

    def after_train(self):
        self._remove_pre_hook()
        self._captured = None
        self._pending = False

    def _put(self, metrics, forward_order):
        # The layers' order once, from the first probe (forward order); named_modules() order
        # until there is one.
        scalars = alignment_scalars(metrics, order=not self._order_logged)
        self._order_logged = self._order_logged or forward_order
        self.trainer.storage.put_scalars(smoothing_hint=False, **scalars)

    def _warn_once(self, message):
        if not self._warned:
            logger.warning("AlignmentHook: " + message)
            self._warned = True


def build_alignment_hook(cfg, model: Optional[nn.Module] = None) -> Optional[AlignmentHook]:
    """
    Args:
        cfg: a config with ``MODEL.BIO.ALIGNMENT.PERIOD`` (see :func:`add_bio_config`).
        model: see :class:`AlignmentHook`.

    Returns:
        AlignmentHook or None: None when the period is 0, so that nothing is registered
        (``register_hooks`` skips None).
    """
    period = cfg.MODEL.BIO.ALIGNMENT.PERIOD
    if isinstance(period, bool) or not isinstance(period, int) or period < 0:
        raise ValueError(
            f"MODEL.BIO.ALIGNMENT.PERIOD={period!r}: must be an integer >= 0 (0 turns it off)"
        )
    return AlignmentHook(period, model) if period > 0 else None

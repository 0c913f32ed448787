"""
The probe: a converted layer's weight gradient under its own rule and under exact backprop, for
the same loss, batch and weights, without changing anything of the training run.

:func:`probe_gradients` runs two forward and backward passes of the unwrapped model, one with the
layers' own rules and one with every converted layer set to backprop, using ``torch.autograd.grad``
so that no ``.grad`` is touched. It leaves training exactly as it would have been without it:
buffers (BatchNorm statistics), plain module attributes (RetinaNet's loss-normalizer EMA), random
number generators and learning rules are restored (:class:`ForwardState`).
:mod:`bio_detectron.core.alignment` turns its gradients into angles. Only PyTorch is needed; with
detectron2 installed, scalars a model logs during the probe go to an event storage of their own.
"""

import contextlib
import random
import types
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

try:
    import numpy as np
except ImportError:  # the core needs PyTorch only; without NumPy no forward pass draws from it
    np = None

from .layers import is_converted
from .rules import build_rule

__all__ = [
    "SUMMARY_NAMES",
    "ForwardState",
    "converted_layers",
    "probe_gradients",
    "total_loss",
]

# Names the alignment metrics give their model-wide summaries
# (bio_detectron.core.alignment.SUMMARIES): a top-level layer of one of these names is listed
# with a trailing "_".
SUMMARY_NAMES = ("mean", "all")


def converted_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """
    Returns:
        list[(str, nn.Module)]: the converted layers of ``model`` in ``named_modules()`` order,
        named as there; "model" when ``model`` itself is a converted layer, and a trailing "_" for
        a top-level layer named like a summary (:data:`SUMMARY_NAMES`).
    """
    layers = []
    for name, m in model.named_modules():
        if is_converted(m):
            name = name or "model"
            layers.append((name + "_" if name in SUMMARY_NAMES else name, m))
    return layers


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
    state = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if np is not None:
        state["numpy"] = np.random.get_state()
    # Only when CUDA is in use: querying it would otherwise initialise it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class ForwardState:
    """
    A snapshot of what a training forward pass reads or changes in a model besides its weights
    and inputs: the random number generators (torch, CUDA when in use, ``random``, NumPy when
    installed), every buffer's value (BatchNorm running statistics, num_batches_tracked) and which
    buffers exist, and the modules' plain attributes (rebound ones, such as RetinaNet's
    ``loss_normalizer`` EMA; objects mutated in place other than buffers are not covered).
    :meth:`restore` puts them back.
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
    their own, not into the training's history (detectron2's; nothing to do without it)."""
    try:
        from detectron2.utils.events import EventStorage, get_event_storage
    except ImportError:
        yield
        return
    try:
        start_iter = get_event_storage().iter
    except AssertionError:  # no storage: the probe is used outside a trainer
        start_iter = 0
    with EventStorage(start_iter):
        yield


def _eager():
    """
    Within the block, compiled modules run eagerly (``torch.compiler.set_stance``): the probe lends
    layers another rule and hooks for a pass, which a compiled graph would be recompiled for.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


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
        with _own_event_storage(), torch.enable_grad(), _eager():
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

"""The training hook of the ``weight_mirror`` rule: mirror steps between training iterations."""

import logging
import math
import numbers
from typing import Mapping, Optional

import torch
from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm
from torch import nn

from ..core.mirror import MIRROR_DEFAULTS, InputShapes, mirror_layers, mirror_step
from ..validate import nonnegative_int
from .ddp import unwrap_model

__all__ = [
    "MIRROR_CFG_KEYS",
    "WeightMirrorHook",
    "build_mirror_hook",
    "build_weight_mirror_hook",
    "check_mirror_options",
    "mirror_options",
    "weight_mirror_hook",
]

logger = logging.getLogger(__name__)

DEFAULTS = MIRROR_DEFAULTS  # the name this module gave them before


def check_mirror_options(
    period, std, lr, decay, noise_batch, samples_per_input, initial_steps, keys=None
) -> dict:
    """
    Validate the weight mirror's options; errors name them by ``keys`` (option -> name, e.g. the
    config keys), default the argument names.

    Returns:
        dict: the options, numbers as float/int.
    """
    keys = keys or {}

    def key(k):
        return keys.get(k, k)

    def integer(k, v):
        return nonnegative_int(v, key(k))

    def real(k, v, allowed, what):
        number = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        if not (number and allowed(v)):
            raise ValueError(f"{key(k)}={v!r}: must be a number {what}")
        return float(v)

    def positive(v):
        return v > 0

    return dict(
        period=integer("period", period),
        std=real("std", std, positive, "> 0"),
        lr=real("lr", lr, positive, "> 0"),
        decay=real("decay", decay, lambda v: 0 <= v <= 1, "in [0, 1]"),
        noise_batch=integer("noise_batch", noise_batch),
        samples_per_input=real("samples_per_input", samples_per_input, positive, "> 0"),
        initial_steps=integer("initial_steps", initial_steps),
    )


class WeightMirrorHook(HookBase):
    """
    Runs a mirror step (:func:`bio_detectron.core.mirror.mirror_step`) for every layer of the model
    whose rule is ``weight_mirror``, after the optimizer step of every ``period``-th iteration
    (``(iter + 1) % period == 0``), so that the next backward pass uses the new B; and
    ``initial_steps`` mirror steps after the optimizer step of iteration 0 (not when resuming
    later), so that B is aligned with W early on, as Akrout et al.'s released code mirrors before
    training. The noise has the shape of the layer's input in that iteration's training forward,
    recorded by forward pre-hooks (:class:`~bio_detectron.core.mirror.InputShapes`, in place for the
    whole run, so that a compiled model is traced with them once).

    The training trajectory of everything but the B of these layers is the one without the hook:
    the noise comes from generators of the hook's own, seeded by (``seed``, layer name,
    iteration), no module's forward is called (the step uses the layer's weight directly), and
    nothing but B is written. A resumed run draws the same noise as an uninterrupted one.

    Distributed training: the main process computes the steps and broadcasts the new B to the
    others, so that B is the same tensor on every process.

    Register it before detectron2's ``PeriodicCheckpointer`` (both act in ``after_step``), so that
    a checkpoint of iteration i holds B after that iteration's mirror step.
    """

    def __init__(
        self,
        period: int = MIRROR_DEFAULTS["period"],
        model: Optional[nn.Module] = None,
        *,
        std: float = MIRROR_DEFAULTS["std"],
        lr: float = MIRROR_DEFAULTS["lr"],
        decay: float = MIRROR_DEFAULTS["decay"],
        noise_batch: int = MIRROR_DEFAULTS["noise_batch"],
        samples_per_input: float = MIRROR_DEFAULTS["samples_per_input"],
        initial_steps: int = MIRROR_DEFAULTS["initial_steps"],
        seed: int = 0,
    ):
        """
        Args:
            period (int): a mirror step every ``period`` iterations; 0 turns the hook off.
            model (nn.Module): the model trained, wrapped in DistributedDataParallel or not;
                default: the trainer's ``model`` at the start of training.
            std (float): sigma, the standard deviation of the noise.
            lr (float): the mirror's learning rate eta_B.
            decay (float): the mirror's decay lambda_B, in [0, 1]; B follows
                ``lr * std**2 / decay`` times W.
            noise_batch (int): noise samples per layer and step; 0: per layer, enough for
                ``samples_per_input`` (see :func:`bio_detectron.core.mirror.noise_batch_for`).
            samples_per_input (float): with ``noise_batch`` 0, the noise products per weight and
                step, in units of the layer's fan-in; one step's estimate of W is off by about
                ``1 / sqrt(samples_per_input)`` x |W|.
            initial_steps (int): mirror steps after iteration 0.
            seed (int): seed of the noise, with each layer's name and the iteration.
        """
        opts = check_mirror_options(
            period, std, lr, decay, noise_batch, samples_per_input, initial_steps
        )
        self.period, self.noise_batch = opts["period"], opts["noise_batch"]
        self.samples_per_input = opts["samples_per_input"]
        self.initial_steps = opts["initial_steps"]
        self.std, self.lr, self.decay = opts["std"], opts["lr"], opts["decay"]
        self.seed = int(seed)
        self._model = unwrap_model(model) if model is not None else None
        self._layers = None
        self._shapes = None
        self._warned = set()

    def _steps_due(self) -> int:
        """How many mirror steps follow this iteration's optimizer step."""
        it = self.trainer.iter
        due = int(self.period > 0 and (it + 1) % self.period == 0)
        return due + (self.initial_steps if it == 0 else 0)

    def before_train(self):
        if self.period == 0 and self.initial_steps == 0:
            return
        if self._model is None:
            self._model = unwrap_model(self.trainer.model)
        self._layers = mirror_layers(self._model)
        if not self._layers:
            logger.warning("WeightMirrorHook: the model has no weight_mirror layer; nothing to do.")
        self._shapes = InputShapes(self._layers)
        if self._layers:
            self._shapes.start()

    def before_step(self):
        if self._layers:
            self._shapes.new_step()

    def after_step(self):
        steps = self._steps_due() if self._layers else 0
        for k in range(steps):
            self.mirror(f"{self.trainer.iter}.{k}")

    def after_train(self):
        if self._shapes is not None:
            self._shapes.stop()

    @torch.no_grad()
    def mirror(self, step):
        """One mirror step of every weight_mirror layer, with the noise of ``step`` (an id)."""
        if comm.is_main_process():
            for name, layer in self._layers:
                shape = self._shapes.shapes.get(name)
                if shape is None:
                    self._warn_once(name)
                    continue
                mirror_step(
                    layer,
                    shape,
                    std=self.std,
                    lr=self.lr,
                    decay=self.decay,
                    noise_batch=self.noise_batch,
                    samples_per_input=self.samples_per_input,
                    seed=self.seed,
                    step=step,
                    name=name,
                )
        if comm.get_world_size() > 1:
            self._broadcast()

    def _broadcast(self):
        states = [layer.feedback for _, layer in self._layers]
        flat = torch.cat([s.reshape(-1) for s in states])
        torch.distributed.broadcast(flat, src=0)
        for state, new in zip(states, flat.split([s.numel() for s in states])):
            state.copy_(new.view_as(state))

    def _warn_once(self, name):
        if name not in self._warned:
            self._warned.add(name)
            logger.warning(
                f"WeightMirrorHook: {name} was not called in a training forward pass yet; its B "
                "is not mirrored until it is"
            )


def weight_mirror_hook(model: Optional[nn.Module] = None, **options) -> Optional[WeightMirrorHook]:
    """
    A :class:`WeightMirrorHook` for ``model`` with ``options`` (its keyword arguments), or None
    when ``model`` is given and has no weight_mirror layer (nothing to register).
    """
    if model is not None and not mirror_layers(unwrap_model(model)):
        return None
    return WeightMirrorHook(model=model, **options)


# Option -> its config key (the one table of both: the options are read from these keys).
MIRROR_CFG_KEYS = {
    "period": "MODEL.BIO.MIRROR.PERIOD",
    "std": "MODEL.BIO.MIRROR.NOISE_STD",
    "lr": "MODEL.BIO.MIRROR.LR",
    "decay": "MODEL.BIO.MIRROR.DECAY",
    "noise_batch": "MODEL.BIO.MIRROR.NOISE_BATCH",
    "samples_per_input": "MODEL.BIO.MIRROR.SAMPLES_PER_INPUT",
    "initial_steps": "MODEL.BIO.MIRROR.INITIAL_STEPS",
}


def build_mirror_hook(
    model: nn.Module,
    options: Mapping,
    *,
    seed: int = 0,
    keys: Optional[Mapping] = None,
    where: str = "the weight mirror's options",
) -> Optional[WeightMirrorHook]:
    """
    The one builder behind ``MODEL.BIO.MIRROR`` (yacs) and ``train.bio_mirror`` (LazyConfig).

    Args:
        model: the model trained (DDP-wrapped or not).
        options: some of :data:`~bio_detectron.core.mirror.MIRROR_DEFAULTS`' keys; the others take
            their default.
        seed: the run's seed (``MODEL.BIO.SEED``), for the noise.
        keys: option -> the name errors and warnings use, e.g. its config key.
        where: what ``options`` is called in an error about an unknown option.

    Returns:
        WeightMirrorHook or None: None when the model has no weight_mirror layer, or when
        ``period`` and ``initial_steps`` are 0 (then with a warning: B stays random, as in
        feedback alignment).
    """
    keys = dict(keys or {})
    unknown = sorted(set(options) - set(MIRROR_DEFAULTS))
    if unknown:
        raise ValueError(
            f"{where} has unknown option(s) {unknown}; the options are {sorted(MIRROR_DEFAULTS)}"
        )
    opts = check_mirror_options(**{**MIRROR_DEFAULTS, **options}, keys=keys)
    layers = mirror_layers(unwrap_model(model))
    if not layers:
        return None
    if opts["period"] == 0 and opts["initial_steps"] == 0:
        logger.warning(
            f"{keys.get('period', 'period')} and {keys.get('initial_steps', 'initial_steps')} are "
            f"0: the {len(layers)} weight_mirror layers (e.g. {layers[0][0]}) keep their random B "
            "and learn as with feedback alignment"
        )
        return None
    return WeightMirrorHook(model=model, seed=seed, **opts)


def mirror_options(cfg) -> dict:
    """The weight mirror's options in ``cfg.MODEL.BIO.MIRROR``, by :data:`MIRROR_CFG_KEYS`."""
    # Each option from the key MIRROR_CFG_KEYS names for it, e.g. std <- MODEL.BIO.MIRROR.NOISE_STD.
    m = cfg.MODEL.BIO.MIRROR
    return {option: m[key.rpartition(".")[2]] for option, key in MIRROR_CFG_KEYS.items()}


def build_weight_mirror_hook(cfg, model: nn.Module) -> Optional[WeightMirrorHook]:
    """
    :func:`build_mirror_hook` with ``MODEL.BIO.MIRROR.*`` (see :func:`bio_detectron.add_bio_config`)
    and ``MODEL.BIO.SEED``.
    """
    return build_mirror_hook(
        model, mirror_options(cfg), seed=cfg.MODEL.BIO.SEED, keys=MIRROR_CFG_KEYS
    )

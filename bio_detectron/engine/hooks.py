"""
The hooks bio_detectron adds to a training loop, assembled by one function for all three trainers
(:func:`add_bio_hooks`): the stop on a non-finite loss, the weight mirror of ``weight_mirror``
layers and the alignment metrics.
"""

import math
import weakref
from typing import List, Mapping, Optional

import torch
from detectron2.engine import hooks as d2_hooks
from detectron2.engine.train_loop import HookBase

from ..validate import nonnegative_int
from .alignment_hook import AlignmentHook
from .ddp import all_ranks_true, unwrap_model
from .mirror_hook import MIRROR_CFG_KEYS, build_mirror_hook, mirror_options

__all__ = [
    "CompileHook",
    "FiniteLossCheck",
    "YACS_ADVICE",
    "add_bio_hooks",
    "add_bio_hooks_from_cfg",
    "yacs_hook_options",
]

# What to try after a divergence, in the keys of a yacs config (MODEL.BIO).
YACS_ADVICE = (
    "Lower SOLVER.BASE_LR, try MODEL.BIO.SCALE 'mean_abs', or for detectors normalise FPN and head "
    "(MODEL.FPN.NORM, MODEL.RETINANET.NORM 'GN')."
)


class FiniteLossCheck(HookBase):
    """
    Stops training before the backward pass and the optimizer step when a loss becomes
    non-finite, so weights stay finite and no checkpoint written so far is touched. All processes
    agree on the verdict, so none of them waits forever in the next gradient all-reduce.

    Registered as a trainer hook, it puts itself on the trainer's ``model`` as a forward hook
    before training; it is also that forward hook (``model.register_forward_hook(check)``) for a
    loop of one's own.
    """

    def __init__(self, trainer=None, advice: str = YACS_ADVICE):
        """
        Args:
            trainer: has ``iter`` and ``checkpointer``; given when the check is used as a plain
                forward hook, set by ``register_hooks`` otherwise.
            advice: the end of the message: what to change, in the keys of the trainer's config.
        """
        if trainer is not None:
            self.trainer = weakref.proxy(trainer)
        self.advice = advice
        self._handle = None

    def before_train(self):
        self._handle = self.trainer.model.register_forward_hook(self)

    def after_train(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __call__(self, module, inputs, loss_dict):
        if not module.training:  # evaluation hooks call the trainer's model too
            return
        losses = loss_dict if isinstance(loss_dict, dict) else {"total_loss": loss_dict}
        total = sum(v.detach().float().sum() for v in losses.values())
        if all_ranks_true(bool(torch.isfinite(total)), total.device):
            return
        bad = {k: float(v.detach().float().sum()) for k, v in losses.items()}
        bad = {k: v for k, v in bad.items() if not math.isfinite(v)}
        checkpointer = getattr(self.trainer, "checkpointer", None)
        checkpoint = (checkpointer and checkpointer.get_checkpoint_file()) or "none written yet"
        raise FloatingPointError(
            f"Loss became non-finite at iteration {self.trainer.iter} "
            f"({bad or 'on another process'}); training stopped before the optimizer step. "
            f"The last checkpoint ({checkpoint}) is intact. {self.advice}"
        )


class CompileHook(HookBase):
    """
    ``torch.compile`` of the trainer's model (:func:`bio_detectron.compile_model`) before the first
    training step, after the model is wrapped for DDP. Its errors, and a compiled module that the
    first step never called (it ran eagerly), are errors naming ``key``, the switch that asked for
    compiling.
    """

    def __init__(self, model=None, *, mode="default", backend="inductor", key="compile"):
        self._model = model
        self.mode, self.backend, self.key = mode, backend, key
        self._checked = False

    def _unwrapped(self):
        return unwrap_model(self._model if self._model is not None else self.trainer.model)

    def before_train(self):
        from ..core.compile import compile_model

        try:
            compile_model(self._unwrapped(), mode=self.mode, backend=self.backend)
        except (ValueError, RuntimeError) as e:
            raise type(e)(f"{self.key}: {e}") from e
        self._checked = False

    def after_step(self):
        if self._checked:
            return
        from ..core.compile import uncalled_compiled

        self._checked = True
        model = self._unwrapped()
        uncalled = uncalled_compiled(model)
        if uncalled:
            raise RuntimeError(
                f"{self.key}: {type(model).__name__}'s forward did not call the compiled "
                f"module(s) {uncalled} in the first training step (it called their children "
                "directly), so that they ran eagerly. Name the modules it calls in a "
                "bio_compile_targets attribute of the model (see bio_detectron.compile_model)."
            )


def compile_options(value, key: str) -> Optional[dict]:
    """
    A compile switch as the trainers take it: False/None/{"enabled": False} (off), True (on, the
    default mode), a mode name, or a dict with "enabled", "mode" and "backend"; returns the
    options of :class:`CompileHook`, or None when off. Errors name ``key``.
    """
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    elif isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{key}={value!r}: use True/False, a torch.compile mode, or a dict of enabled, mode, "
            "backend"
        )
    unknown = sorted(set(value) - {"enabled", "mode", "backend"})
    if unknown:
        raise ValueError(f"{key} has unknown option(s) {unknown}; allowed: enabled, mode, backend")
    if not value.get("enabled", True):
        return None
    from ..core.compile import COMPILE_MODES

    mode = value.get("mode", "default")
    if mode not in COMPILE_MODES:
        raise ValueError(f"{key}: mode {mode!r} is not one of torch.compile's {COMPILE_MODES}")
    return {"mode": mode, "backend": value.get("backend", "inductor"), "key": key}


def add_bio_hooks(
    hooks: List[Optional[HookBase]],
    model,
    *,
    alignment_period: int,
    mirror_options: Mapping,
    seed: int = 0,
    writer_period: Optional[int] = None,
    advice: str = YACS_ADVICE,
    keys: Optional[Mapping[str, str]] = None,
    compiled: Optional[dict] = None,
) -> List[Optional[HookBase]]:
    """
    The one place where the detection, classification and lazy trainers get bio_detectron's
    hooks: ``hooks`` (a trainer's list, in detectron2's order) with

    * :class:`FiniteLossCheck` first, then :class:`CompileHook` when ``compiled`` is given;
    * the weight mirror (:class:`~.mirror_hook.WeightMirrorHook`, when the model has
      ``weight_mirror`` layers) right before the ``PeriodicCheckpointer`` (after the LR scheduler
      when there is none), so that a checkpoint holds B after its iteration's mirror step;
    * the alignment metrics (:class:`~.alignment_hook.AlignmentHook`, when ``alignment_period``
      > 0) right before the ``PeriodicWriter`` (last when there is none), so that the writer
      writes them in the same iteration.

    Args:
        hooks: the trainer's hooks; None entries are kept (``register_hooks`` skips them).
        model: the model trained (DDP-wrapped or not).
        alignment_period: ``MODEL.BIO.ALIGNMENT.PERIOD`` or ``train.bio_alignment_period``.
        mirror_options: the weight mirror's options (see ``mirror.MIRROR_DEFAULTS``).
        seed: the run's rule seed, for the mirror's noise.
        writer_period: the period of the trainer's writers (for the alignment hook's check).
        advice: the end of a non-finite-loss message, in the keys of the trainer's config.
        keys: how errors name the options: "alignment_period", "mirror" (the mirror's options as
            a whole) and the mirror's option names -> config keys.
        compiled: :class:`CompileHook`'s options (see :func:`compile_options`), or None.

    Returns:
        list: a new list.
    """

    keys = dict(keys or {})
    period = nonnegative_int(alignment_period, keys.get("alignment_period", "alignment_period"))
    where = keys.get("mirror", "the weight mirror's options")
    mirror = build_mirror_hook(model, mirror_options, seed=seed, keys=keys, where=where)
    alignment = AlignmentHook(period, model, writer_period=writer_period) if period else None

    out = [FiniteLossCheck(advice=advice)]
    out += [CompileHook(model, **compiled)] if compiled else []
    out += list(hooks)
    if mirror is not None:
        kinds = [type(h) for h in out]
        if d2_hooks.PeriodicCheckpointer in kinds:
            at = kinds.index(d2_hooks.PeriodicCheckpointer)
        elif d2_hooks.LRScheduler in kinds:
            at = kinds.index(d2_hooks.LRScheduler) + 1
        else:
            at = len(out)
        out.insert(at, mirror)
    if alignment is not None:
        writers = [i for i, h in enumerate(out) if isinstance(h, d2_hooks.PeriodicWriter)]
        out.insert(writers[0] if writers else len(out), alignment)
    return out


def yacs_hook_options(cfg) -> dict:
    """
    :func:`add_bio_hooks`'s options from the keys of a yacs config: ``MODEL.BIO.ALIGNMENT.PERIOD``,
    ``MODEL.BIO.MIRROR.*``, ``MODEL.BIO.SEED`` and ``MODEL.BIO.COMPILE.*`` (the detection and
    classification trainers).
    """
    c = cfg.MODEL.BIO.COMPILE
    switch = {"enabled": c.ENABLED, "mode": c.MODE, "backend": c.BACKEND}
    return dict(
        alignment_period=cfg.MODEL.BIO.ALIGNMENT.PERIOD,
        mirror_options=mirror_options(cfg),
        seed=cfg.MODEL.BIO.SEED,
        keys={"alignment_period": "MODEL.BIO.ALIGNMENT.PERIOD", **MIRROR_CFG_KEYS},
        compiled=compile_options(switch, "MODEL.BIO.COMPILE"),
    )


def add_bio_hooks_from_cfg(hooks, model, cfg, writer_period: Optional[int] = None):
    """
    :func:`add_bio_hooks` with the keys of a yacs config (:func:`yacs_hook_options`), e.g. for
    detectron2's own DefaultTrainer: ``trainer.register_hooks(add_bio_hooks_from_cfg([],
    trainer.model, cfg, writer_period=20))``.
    """
    return add_bio_hooks(hooks, model, writer_period=writer_period, **yacs_hook_options(cfg))

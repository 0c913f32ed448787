"""The training hook that logs the alignment metrics (:mod:`bio_detectron.core.alignment`)."""

import logging
from typing import Callable, Optional

import torch
from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm
from torch import nn

from ..core.alignment import alignment_metrics, alignment_scalars
from ..core.probe import ForwardState, converted_layers
from ..validate import nonnegative_int
from .ddp import unwrap_model

__all__ = ["AlignmentHook", "build_alignment_hook"]

logger = logging.getLogger(__name__)


class AlignmentHook(HookBase):
    """
    Logs the alignment metrics of every converted layer (:mod:`bio_detectron.core.alignment`) as
    ``alignment/<layer>/<metric>`` scalars, and the summaries as ``alignment/mean/<metric>`` and
    ``alignment/all/{grad_angle,weight_angle}``, at iterations where ``(iter + 1) % period == 0``:
    the ones detectron2's writers write at when ``period`` is a multiple of their period (20 in
    DefaultTrainer). Writers keep only the latest value of a scalar, so values of iterations in
    between would not reach metrics.json or TensorBoard.

    How: before a logging iteration, a forward pre-hook is put on the unwrapped model; the
    training forward hands it the batch (and the random state before it), and it removes itself.
    After the backward pass and before the optimizer step (in ``after_backward``, or, for a trainer
    that does not pass ``after_backward`` on to its hooks, such as detectron2's DefaultTrainer, in a
    step pre-hook of the trainer's ``optimizer``), :func:`bio_detectron.core.probe.probe_gradients`
    compares the rule's gradients with backprop's on that batch with the same weights and the same
    dropout masks. The training trajectory is exactly the same as without the hook. Other
    iterations cost nothing. The probe runs in full precision, also under AMP.

    Distributed training: only the main process probes and logs; the others do nothing. The probe
    calls the unwrapped model, makes no collective call (synchronised BatchNorm normalises locally
    during the probe) and restores everything it changes, so the processes stay in step.

    Works with SimpleTrainer, AMPTrainer, DefaultTrainer and any trainer with a ``model`` and an
    ``optimizer`` (registered with the trainer whose ``train()`` runs).
    """

    def __init__(
        self,
        period: int,
        model: Optional[nn.Module] = None,
        *,
        loss_fn: Optional[Callable] = None,
        writer_period: Optional[int] = None,
    ):
        """
        Args:
            period (int): log every ``period`` iterations; 0 turns the hook off (it then does
                nothing at all).
            model (nn.Module): the model trained, wrapped in DistributedDataParallel or not;
                default: the trainer's ``model`` at the start of training.
            loss_fn (callable): output of the model -> scalar loss; default
                :func:`bio_detectron.core.probe.total_loss` (the sum of a loss dict), as
                detectron2's trainers compute it.
            writer_period (int): the period of the trainer's writers, when known: a ``period``
                that is not a multiple of it gets a warning (values of other iterations never
                reach metrics.json or TensorBoard).
        """
        self.period = nonnegative_int(period, "period")
        if writer_period and self.period % writer_period:
            logger.warning(
                f"AlignmentHook: period {self.period} is not a multiple of the writers' period "
                f"{writer_period}; only the values of iterations the writers write at reach "
                "metrics.json and TensorBoard"
            )
        self._model = unwrap_model(model) if model is not None else None
        self._loss_fn = loss_fn
        self._step_handle = None  # the optimizer's step pre-hook, during logging iterations
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
            self._model = unwrap_model(self.trainer.model)
        if not converted_layers(self._model):
            logger.warning("AlignmentHook: the model has no converted layer; nothing to log.")

    def before_step(self):
        if not self.active or (self.trainer.iter + 1) % self.period != 0:
            return
        self._pending = True
        self._remove_pre_hook()
        self._handle = self._model.register_forward_pre_hook(self._capture, with_kwargs=True)
        optimizer = getattr(self.trainer, "optimizer", None)
        if isinstance(optimizer, torch.optim.Optimizer):
            # Reached when the trainer does not call after_backward (probed there first).
            self._step_handle = optimizer.register_step_pre_hook(lambda *_: self.after_backward())

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

    def _remove_step_hook(self):
        if self._step_handle is not None:
            self._step_handle.remove()
            self._step_handle = None

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
        self._remove_step_hook()
        if not self._pending:
            return
        # Neither after_backward nor the optimizer's step was seen: a trainer that does not call
        # after_backward and has no ``optimizer``, or an AMP step skipped for non-finite
        # gradients. The weights may have been stepped by now, so only weight metrics are logged.
        self._pending = False
        self._remove_pre_hook()
        self._captured = None
        self._warn_once(
            "neither after_backward nor the optimizer's step was seen in this iteration; only "
            "weight metrics are logged, after the step"
        )
        self._put(alignment_metrics(self._model), forward_order=False)

    def after_train(self):
        self._remove_pre_hook()
        self._remove_step_hook()
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


def build_alignment_hook(
    cfg, model: Optional[nn.Module] = None, writer_period: Optional[int] = None
) -> Optional[AlignmentHook]:
    """
    Args:
        cfg: a config with ``MODEL.BIO.ALIGNMENT.PERIOD`` (see :func:`add_bio_config`).
        model, writer_period: see :class:`AlignmentHook`.

    Returns:
        AlignmentHook or None: None when the period is 0, so that nothing is registered
        (``register_hooks`` skips None).
    """
    period = nonnegative_int(cfg.MODEL.BIO.ALIGNMENT.PERIOD, "MODEL.BIO.ALIGNMENT.PERIOD")
    return AlignmentHook(period, model, writer_period=writer_period) if period > 0 else None

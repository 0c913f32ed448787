"""
The base of the three trainers: detection (:class:`~.trainer.BioTrainer`, yacs), image
classification (:class:`~.classification.ClassificationTrainer`, yacs) and LazyConfig
(:class:`~.lazy.LazyTrainer`).

Composed as detectron2's ``DefaultTrainer`` is (and a subclass of it): the outer trainer runs the
loop and the hooks, and an inner step trainer ``_trainer`` runs each iteration; the model,
optimizer and data loader are the inner trainer's, read through DefaultTrainer's properties, and a
checkpoint holds the step's state (optimizer, gradient scaler) under ``trainer._trainer`` as
DefaultTrainer's does. The inner trainer is chosen by precision (:mod:`.amp`). The base owns
training (returning the last evaluation's results), resuming, loading weights to evaluate and the
assembly of bio_detectron's hooks (:func:`~.hooks.add_bio_hooks`); the subclasses build the model,
optimizer, data loaders, evaluation and the stock hooks, from the config keys of
:class:`ConfigKeys`.
"""

import functools
import weakref
from typing import NamedTuple, Optional

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer, default_writers
from detectron2.engine.hooks import EvalHook
from detectron2.engine.train_loop import HookBase, TrainerBase

from .amp import amp_precision, build_step_trainer
from .ddp import create_ddp_model
from .hooks import add_bio_hooks, yacs_hook_options

__all__ = ["BioTrainerBase", "ConfigKeys", "LAZY_KEYS", "YACS_KEYS", "config_value"]


class ConfigKeys(NamedTuple):
    """Where a trainer's config keeps what :class:`BioTrainerBase` reads (dotted keys)."""

    device: str
    amp: str  # the AMP switch
    weights: str  # the weights to start from or to evaluate
    output_dir: str
    max_iter: str


YACS_KEYS = ConfigKeys(
    "MODEL.DEVICE", "SOLVER.AMP.ENABLED", "MODEL.WEIGHTS", "OUTPUT_DIR", "SOLVER.MAX_ITER"
)
LAZY_KEYS = ConfigKeys(
    "train.device", "train.amp.enabled", "train.init_checkpoint", "train.output_dir",
    "train.max_iter",
)  # fmt: skip


def config_value(cfg, key: str):
    """The value of a dotted ``key`` of a yacs or LazyConfig config, e.g. "SOLVER.MAX_ITER"."""
    return functools.reduce(getattr, key.split("."), cfg)


class _AfterBackwardRelay(HookBase):
    """
    The inner trainer's one hook: passes its ``after_backward`` on to the outer trainer's hooks
    (e.g. the alignment probe), which DefaultTrainer's inner trainer, holding no hooks, never
    calls. The inner trainer's ``train()`` never runs, so no other hook method is called.
    """

    def __init__(self, outer):
        self._outer = weakref.proxy(outer)

    def after_backward(self):
        self._outer.after_backward()


class BioTrainerBase(DefaultTrainer):
    """
    A trainer whose inner step trainer is chosen by precision: detectron2's ``SimpleTrainer``,
    its ``AMPTrainer`` (float16 with a gradient scaler, CUDA) or
    :class:`~.amp.CPUAutocastTrainer` (bfloat16 autocast, a CPU with native bfloat16).

    A subclass builds the model, optimizer and data loader from its config and hands them to
    ``__init__``; it provides :meth:`build_default_hooks` (detectron2's hooks of its kind, with an
    ``EvalHook`` calling :meth:`test_and_save_results`), ``test`` and ``evaluate``, and, for a
    config that is not yacs, :attr:`KEYS`, :attr:`writer_period` and :meth:`bio_hook_options`.
    DefaultTrainer's yacs builders (``build_train_loader``, ``build_test_loader``,
    ``build_evaluator``, ...) are the detection trainer's; the others build their own.

    Attributes:
        precision (torch.dtype or None): the autocast dtype of the training step, None for full
            precision (see :func:`~.amp.amp_precision`).
        unwrapped_model (nn.Module): the model trained, outside any DDP wrapper.
        checkpointer: from :meth:`build_checkpointer`.
    """

    KEYS: ConfigKeys = YACS_KEYS
    # detectron2's DefaultTrainer.build_hooks writes metrics every 20 iterations, a literal there
    # with no public way to read it back; the yacs trainers write at that period too.
    # tests/test_upstream_internals.py fails if detectron2's changes.
    WRITER_PERIOD = 20

    def __init__(self, cfg, model, optimizer, data_loader, ddp_options: Optional[dict] = None):
        """
        DefaultTrainer.__init__'s work, in its order, but with this package's DDP wrapper
        (detectron2's passes device_ids, which CPU modules refuse) and step trainer (detectron2's
        picks AMPTrainer whenever SOLVER.AMP.ENABLED, which needs CUDA). DefaultTrainer offers no
        seam to choose either, so this is the one place that sets its private ``_trainer``, which
        its run_step, state_dict and model/optimizer/data_loader properties read.
        tests/test_upstream_internals.py fails if DefaultTrainer stops reading it, or its
        ``__init__`` sets attributes that BioTrainer's does not.

        Args:
            cfg: the run's config, as the subclass resolved it.
            model: the model to train, on its device, not wrapped for DDP.
            optimizer, data_loader: as detectron2's SimpleTrainer takes them.
            ddp_options: DistributedDataParallel's options (:func:`~.ddp.create_ddp_model`);
                default: no buffer broadcast, per-process BatchNorm statistics as DefaultTrainer.
        """
        TrainerBase.__init__(self)
        keys = self.KEYS
        ddp_options = {"broadcast_buffers": False} if ddp_options is None else ddp_options
        self.unwrapped_model = model
        model = create_ddp_model(model, **ddp_options)
        self.precision = amp_precision(
            config_value(cfg, keys.amp), config_value(cfg, keys.device), keys.amp
        )
        self._trainer = build_step_trainer(self.precision, model, data_loader, optimizer)
        self._trainer.register_hooks([_AfterBackwardRelay(self)])
        self.checkpointer = self.build_checkpointer(
            model, config_value(cfg, keys.output_dir), trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = config_value(cfg, keys.max_iter)
        self.cfg = cfg
        self._last_eval_results = None  # DefaultTrainer's name: its EvalHook function sets it
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_checkpointer(cls, model, save_dir: str, **checkpointables):
        """detectron2's DetectionCheckpointer; the classification trainer's checks keys."""
        return DetectionCheckpointer(model, save_dir, **checkpointables)

    @property
    def writer_period(self) -> int:
        """How often the writers write (the alignment hook's period must be a multiple)."""
        return self.WRITER_PERIOD

    def build_writers(self):
        """Console line, ``metrics.json`` and TensorBoard, in the config's output folder."""
        return default_writers(config_value(self.cfg, self.KEYS.output_dir), self.max_iter)

    def build_default_hooks(self) -> list:
        """The trainer's detectron2 hooks, in detectron2's order (without bio_detectron's)."""
        raise NotImplementedError

    def bio_hook_options(self) -> dict:
        """:func:`~.hooks.add_bio_hooks`'s options from the config (the yacs keys here)."""
        return yacs_hook_options(self.cfg)

    def build_hooks(self):
        """
        Returns:
            list[HookBase or None]: :meth:`build_default_hooks` with bio_detectron's hooks (the
            non-finite-loss stop, the weight mirror, the alignment metrics, compilation) put in
            by :func:`~.hooks.add_bio_hooks`.
        """
        return add_bio_hooks(
            self.build_default_hooks(),
            self.unwrapped_model,
            writer_period=self.writer_period,
            **self.bio_hook_options(),
        )

    def run_test(self):
        """Evaluate the model being trained (``test``); the unwrapped one, so that a DDP
        wrapper's buffer broadcast does not wait for processes with fewer test batches."""
        return self.test(self.cfg, self.unwrapped_model)

    def test_and_save_results(self):
        """The ``EvalHook``'s function: :meth:`run_test`, its results kept for :meth:`train`."""
        self._last_eval_results = self.run_test()
        return self._last_eval_results

    def build_eval_hook(self, period: int) -> EvalHook:
        """An ``EvalHook`` every ``period`` iterations and after the last one."""
        return EvalHook(period, self.test_and_save_results)

    def resume_or_load(self, resume: bool = True):
        """
        With ``resume`` and a checkpoint in the output folder: load it all (model with its
        feedback buffers, optimizer, LR schedule, iteration) and continue after its iteration.
        Otherwise load the model weights of the weights key (``MODEL.WEIGHTS``,
        ``train.init_checkpoint``), if set, and start at iteration 0.
        """
        weights = config_value(self.cfg, self.KEYS.weights)
        self.checkpointer.resume_or_load(weights, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint stores the iteration that just finished.
            self.start_iter = self.iter + 1

    def train(self):
        """
        Returns:
            OrderedDict or None: the results of the last evaluation (the periodic ones, and the
            final one), as ``test`` returns them; None when there was none.
        """
        # TrainerBase's loop: DefaultTrainer.train adds a check of the yacs key
        # TEST.EXPECTED_RESULTS, which BioTrainer.train makes.
        TrainerBase.train(self, self.start_iter, self.max_iter)
        return self._last_eval_results

    def load_state_dict(self, state_dict):
        if "_trainer" not in state_dict:
            # The layout of a loop on SimpleTrainer itself (detectron2's lazyconfig_train_net.py,
            # and this package's classification and lazy trainers before they were composed):
            # the step's state (optimizer, gradient scaler) at the top level.
            step = {k: v for k, v in state_dict.items() if k != "hooks"}
            state_dict = {**state_dict, "_trainer": step}
        super().load_state_dict(state_dict)

    @classmethod
    def load_weights(cls, cfg, model, resume: bool = False):
        """
        ``--eval-only``'s loading: the weights key's file (or, with ``resume``, the last
        checkpoint of the output folder) into ``model``, with :meth:`build_checkpointer`'s
        checkpointer. No weights at all is an error: the evaluation would be of random weights.

        Returns:
            nn.Module: ``model``.
        """
        keys = cls.KEYS
        weights, output_dir = config_value(cfg, keys.weights), config_value(cfg, keys.output_dir)
        checkpointer = cls.build_checkpointer(model, output_dir)
        if not weights and not (resume and checkpointer.has_checkpoint()):
            raise ValueError(
                f"--eval-only needs weights: set {keys.weights} (or use --resume with a "
                f"checkpoint in {keys.output_dir}={output_dir!r})"
            )
        checkpointer.resume_or_load(weights, resume=resume)
        return model

"""
Training and evaluation from Detectron2's Python configs (LazyConfig), for
``tools/lazyconfig_train_net.py``: detectron2's lazy training template (``do_train``/``do_test``
of its ``tools/lazyconfig_train_net.py``) with the pieces :class:`~.trainer.BioTrainer` adds to
the yacs path:

* DistributedDataParallel that works for CPU processes (gloo) as well as CUDA ones
  (:func:`~.ddp.create_ddp_model`);
* a stop with a clear message, before the optimizer step, when a loss becomes non-finite
  (:class:`~.hooks.FiniteLossCheck`);
* the alignment metrics every ``train.bio_alignment_period`` iterations (:class:`AlignmentHook`);
* ``train.device`` "cuda" falls back to "cpu", with a warning, when CUDA is missing;
* the embedded datasets' files generated before ``dataloader.evaluator`` opens them;
* without ``dataloader.evaluator``, the evaluator of the test dataset's ``evaluator_type``
  (:mod:`~.evaluation`).

The config has the keys of detectron2's ``configs/common/train.py`` (``model``, ``optimizer``,
``lr_multiplier``, ``dataloader.{train,test,evaluator}``, ``train.*``), and optionally:

* ``train.bio_alignment_period`` (int >= 0): log the alignment metrics of every converted layer
  every this many iterations; 0 or absent: off, at no cost.
* ``train.bio_mirror`` (dict): options of the weight mirror of ``weight_mirror`` layers
  (``MODEL.BIO.MIRROR.*`` of the yacs path: period, std, lr, decay, noise_batch,
  samples_per_input, initial_steps); absent ones take their default.
* ``train.bio_compile``: ``torch.compile`` the model before training (``MODEL.BIO.COMPILE`` of the
  yacs path): True, a mode ("default", "reduce-overhead", ...), or a dict of enabled, mode and
  backend; absent or False: off.
"""

import logging
import os
import weakref
from collections import OrderedDict
from typing import Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import SimpleTrainer, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from torch import nn

from ..config import device_or_cpu
from ..core.mirror import MIRROR_DEFAULTS
from ..data import ensure_dataset_files
from ..evaluation import build_dataset_evaluator, check_evaluator
from ..validate import nonnegative_int
from .amp import precision_trainer_class, with_precision
from .ddp import create_ddp_model
from .hooks import add_bio_hooks, compile_options

__all__ = [
    "ALIGNMENT_PERIOD_KEY",
    "LAZY_ADVICE",
    "load_lazy_config",
    "alignment_period",
    "build_lazy_model",
    "default_lazy_evaluator",
    "LazyTrainer",
    "AMPLazyTrainer",
    "CPUAMPLazyTrainer",
    "build_lazy_trainer",
    "do_train",
]

logger = logging.getLogger(__name__)

ALIGNMENT_PERIOD_KEY = "train.bio_alignment_period"
MIRROR_KEY = "train.bio_mirror"
COMPILE_KEY = "train.bio_compile"

# What to try after a divergence, in the keys of a config whose model is
# L(bio_detectron.bio_plausible)(model=<a detectron2 model>, ...), as in configs/.
LAZY_ADVICE = (
    "Lower optimizer.lr, try bio_plausible's scale='mean_abs' (model.scale), or for detectors "
    "normalise FPN and head (e.g. model.model.backbone.norm, model.model.head.norm 'GN')."
)


def load_lazy_config(path: str, opts=()):
    """
    Load a LazyConfig file, apply command-line overrides ("key=value") and check bio_detectron's
    keys: ``train.device`` becomes "cpu" when it names CUDA and none is available (a warning says
    so), ``train.bio_alignment_period`` must be an integer >= 0 and ``train.bio_compile`` a
    switch :func:`~.hooks.compile_options` takes.

    Returns:
        omegaconf.DictConfig: the config.
    """
    cfg = LazyConfig.apply_overrides(LazyConfig.load(path), list(opts))
    cfg.train.device = device_or_cpu(cfg.train.device, "train.device")
    alignment_period(cfg)
    compile_options(cfg.train.get("bio_compile", None), COMPILE_KEY)
    return cfg


def alignment_period(cfg) -> int:
    """``train.bio_alignment_period``, checked; 0 when absent."""
    return nonnegative_int(cfg.train.get("bio_alignment_period", 0), ALIGNMENT_PERIOD_KEY)


def default_lazy_evaluator(cfg):
    """
    The evaluator of a LazyConfig without ``dataloader.evaluator``: the one of the
    ``evaluator_type`` of its test dataset (``dataloader.test.dataset.names``, one name), writing
    into ``train.output_dir/inference/<name>``.
    """
    names = cfg.dataloader.test.dataset.names
    names = [names] if isinstance(names, str) else list(names)
    if len(names) != 1:
        raise ValueError(
            f"dataloader.test.dataset.names={names}: without dataloader.evaluator the test split "
            "is evaluated by its dataset's evaluator_type, so it must name one dataset"
        )
    output_dir = os.path.join(cfg.train.output_dir, "inference", names[0])
    return build_dataset_evaluator(names[0], output_dir)


def build_lazy_model(cfg) -> nn.Module:
    """``instantiate(cfg.model)`` on ``cfg.train.device``."""
    model = instantiate(cfg.model)
    logger.info(f"Model:\n{model}")
    return model.to(cfg.train.device)


class LazyTrainer(SimpleTrainer):
    """
    Trains ``cfg.model`` with detectron2's SimpleTrainer loop and the hooks of its lazy training
    template: iteration timer, ``cfg.lr_multiplier``, periodic checkpoints
    (``train.checkpointer``), evaluation every ``train.eval_period`` iterations and at the end,
    and metrics written every ``train.log_period`` iterations to the console, ``metrics.json``
    and TensorBoard; plus the alignment metrics when ``train.bio_alignment_period`` > 0, and a
    stop naming the iteration when a loss becomes non-finite on any process.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg: a LazyConfig (see this module's docstring), as :func:`load_lazy_config` gives it.
        """
        alignment_period(cfg)  # a bad value stops the run before anything is built
        if cfg.dataloader.get("evaluator", None) is None and "test" in cfg.dataloader:
            names = cfg.dataloader.test.dataset.get("names", ())
            for name in [names] if isinstance(names, str) else names:
                check_evaluator(name)  # the default evaluator's: fail now, not after training
        model = build_lazy_model(cfg)
        cfg.optimizer.params.model = model  # as detectron2's template: the optimizer's params
        optimizer = instantiate(cfg.optimizer)
        data_loader = instantiate(cfg.dataloader.train)
        super().__init__(create_ddp_model(model, **cfg.train.ddp), data_loader, optimizer)

        self.cfg = cfg
        self.unwrapped_model = model
        self.checkpointer = DetectionCheckpointer(
            model, cfg.train.output_dir, trainer=weakref.proxy(self)
        )
        self.start_iter, self.max_iter = 0, cfg.train.max_iter
        self._last_eval_results = None
        self.register_hooks(self.build_hooks())

    @classmethod
    def test(cls, cfg, model: nn.Module) -> Optional[OrderedDict]:
        """
        Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``, or, when
        the config has none, with the evaluator of the test dataset's ``evaluator_type``
        (:func:`~.evaluation.build_dataset_evaluator`, results in
        ``train.output_dir/inference/<dataset>``).

        Returns:
            OrderedDict or None: the evaluator's results (e.g. {"bbox": {"AP": ...}}) on the main
            process, {} on the others.
        """
        if "evaluator" in cfg.dataloader:
            # COCOEvaluator opens the dataset's json in its constructor: make embedded sets first.
            names = cfg.dataloader.evaluator.get("dataset_name")
            for name in [names] if isinstance(names, str) else list(names or ()):
                ensure_dataset_files(name)
            evaluator = instantiate(cfg.dataloader.evaluator)
        else:
            evaluator = default_lazy_evaluator(cfg)
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
        if comm.is_main_process():
            print_csv_format(results)
        return results

    @classmethod
    def evaluate(cls, cfg, resume: bool = False) -> Optional[OrderedDict]:
        """
        ``--eval-only``: build the model, load ``train.init_checkpoint`` (or, with ``resume``, the
        last checkpoint of ``train.output_dir``) and evaluate it with :meth:`test`.
        """
        model = build_lazy_model(cfg)
        checkpointer = DetectionCheckpointer(model, cfg.train.output_dir)
        if not cfg.train.init_checkpoint and not (resume and checkpointer.has_checkpoint()):
            raise ValueError(
                "--eval-only needs weights: set train.init_checkpoint=<file> (or use --resume with "
                f"a checkpoint in train.output_dir={cfg.train.output_dir!r})"
            )
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
        return cls.test(cfg, model)

    def build_hooks(self):
        """
        Returns:
            list[HookBase or None]: the non-finite-loss stop, timer, LR schedule, the weight mirror
            (``train.bio_mirror``, when the model has weight_mirror layers), checkpoints (main
            process), evaluation, alignment metrics (when on), writers (main process; last, so
            that they write the evaluation and alignment results of the same iteration). The bio
            hooks come from :func:`~bio_detectron.engine.hooks.add_bio_hooks`, as in the other
            trainers.
        """
        cfg = self.cfg
        main = comm.is_main_process()

        def test_and_save_results():
            # The unwrapped model: a DDP wrapper's buffer broadcast (train.ddp.broadcast_buffers)
            # would wait for processes with fewer test batches.
            self._last_eval_results = self.test(cfg, self.unwrapped_model)
            return self._last_eval_results

        writer = hooks.PeriodicWriter(
            default_writers(cfg.train.output_dir, self.max_iter), period=cfg.train.log_period
        )
        checkpointer = hooks.PeriodicCheckpointer(self.checkpointer, **cfg.train.checkpointer)
        stock = [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            checkpointer if main else None,
            hooks.EvalHook(cfg.train.eval_period, test_and_save_results),
            writer if main else None,
        ]
        keys = {k: f"{MIRROR_KEY}.{k}" for k in MIRROR_DEFAULTS}
        keys.update(alignment_period=ALIGNMENT_PERIOD_KEY, mirror=MIRROR_KEY)
        return add_bio_hooks(
            stock,
            self.unwrapped_model,
            alignment_period=alignment_period(cfg),
            mirror_options=dict(cfg.train.get("bio_mirror", None) or {}),
            seed=cfg.model.get("seed", 0) if hasattr(cfg.model, "get") else 0,
            writer_period=cfg.train.log_period,
            advice=LAZY_ADVICE,
            keys=keys,
            compiled=compile_options(cfg.train.get("bio_compile", None), COMPILE_KEY),
        )

    def resume_or_load(self, resume: bool = True):
        """
        With ``resume`` and a checkpoint in ``train.output_dir``: load it all (model with its
        feedback state, optimizer, LR schedule, iteration) and continue after its iteration.
        Otherwise load the model weights of ``train.init_checkpoint``, if set, and start at 0.
        """
        self.checkpointer.resume_or_load(self.cfg.train.init_checkpoint, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint stores the iteration that just finished.
            self.start_iter = self.iter + 1

    def train(self):
        """
        Returns:
            OrderedDict or None: the results of the last evaluation (see :meth:`test`).
        """
        super().train(self.start_iter, self.max_iter)
        return self._last_eval_results


AMPLazyTrainer = with_precision(LazyTrainer, torch.float16)  # float16 with a gradient scaler, CUDA
CPUAMPLazyTrainer = with_precision(LazyTrainer, torch.bfloat16)  # bfloat16 autocast, CPU


def build_lazy_trainer(cfg) -> LazyTrainer:
    """The trainer for ``cfg``, in the precision ``train.amp.enabled`` gives on its device."""
    trainer = precision_trainer_class
    return trainer(LazyTrainer, cfg.train.amp.enabled, cfg.train.device, "train.amp.enabled")(cfg)


def do_train(cfg, resume: bool = False) -> Optional[OrderedDict]:
    """
    Train as ``tools/lazyconfig_train_net.py`` does: build the trainer, resume from the last
    checkpoint of ``train.output_dir`` (``resume``) or load ``train.init_checkpoint``, train.

    Returns:
        OrderedDict or None: the results of the last evaluation.
    """
    trainer = build_lazy_trainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer.train()

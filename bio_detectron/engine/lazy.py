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
* ``train.device`` "cuda" on a machine without CUDA is an error that says how to choose the CPU;
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
from collections import OrderedDict
from typing import Optional

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from torch import nn

from ..config import check_device
from ..core.mirror import MIRROR_DEFAULTS
from ..data import ensure_dataset_files
from ..evaluation import build_dataset_evaluator, check_evaluator
from ..validate import nonnegative_int
from .base import LAZY_KEYS, BioTrainerBase
from .hooks import compile_options

__all__ = [
    "ALIGNMENT_PERIOD_KEY",
    "LAZY_ADVICE",
    "load_lazy_config",
    "alignment_period",
    "build_lazy_model",
    "default_lazy_evaluator",
    "LazyTrainer",
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
    keys: ``train.device`` must not name CUDA where there is none, ``train.bio_alignment_period``
    must be an integer >= 0 and ``train.bio_compile`` a switch :func:`~.hooks.compile_options`
    takes.

    Returns:
        omegaconf.DictConfig: the config.
    """
    cfg = LazyConfig.apply_overrides(LazyConfig.load(path), list(opts))
    check_device(cfg.train.device, "train.device", "train.device=cpu")
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


class LazyTrainer(BioTrainerBase):
    """
    Trains ``cfg.model`` with detectron2's loop and the hooks of its lazy training template:
    iteration timer, ``cfg.lr_multiplier``, periodic checkpoints (``train.checkpointer``),
    evaluation every ``train.eval_period`` iterations and at the end, and metrics written every
    ``train.log_period`` iterations to the console, ``metrics.json`` and TensorBoard; the step,
    the precision (``train.amp.enabled``) and bio_detectron's hooks (the alignment metrics when
    ``train.bio_alignment_period`` > 0, a stop naming the iteration when a loss becomes
    non-finite on any process) are those of :class:`~.base.BioTrainerBase`.
    """

    KEYS = LAZY_KEYS

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
        super().__init__(cfg, model, optimizer, data_loader, ddp_options=dict(cfg.train.ddp))

    @property
    def writer_period(self) -> int:
        return self.cfg.train.log_period

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
        return cls.test(cfg, cls.load_weights(cfg, build_lazy_model(cfg), resume=resume))

    def build_default_hooks(self):
        """
        Returns:
            list[HookBase or None]: the hooks of detectron2's lazy template: timer, LR schedule,
            checkpoints (main process), evaluation, writers (main process; last, so that they
            write the evaluation results of the same iteration).
        """
        cfg = self.cfg
        main = comm.is_main_process()
        writer = hooks.PeriodicWriter(self.build_writers(), period=self.writer_period)
        checkpointer = hooks.PeriodicCheckpointer(self.checkpointer, **cfg.train.checkpointer)
        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            checkpointer if main else None,
            self.build_eval_hook(cfg.train.eval_period),
            writer if main else None,
        ]

    def bio_hook_options(self) -> dict:
        """:func:`~.hooks.add_bio_hooks`'s options from ``train.bio_*`` and ``model.seed``."""
        cfg = self.cfg
        keys = {k: f"{MIRROR_KEY}.{k}" for k in MIRROR_DEFAULTS}
        keys.update(alignment_period=ALIGNMENT_PERIOD_KEY, mirror=MIRROR_KEY)
        return dict(
            alignment_period=alignment_period(cfg),
            mirror_options=dict(cfg.train.get("bio_mirror", None) or {}),
            seed=cfg.model.get("seed", 0) if hasattr(cfg.model, "get") else 0,
            advice=LAZY_ADVICE,
            keys=keys,
            compiled=compile_options(cfg.train.get("bio_compile", None), COMPILE_KEY),
        )


def build_lazy_trainer(cfg) -> LazyTrainer:
    """The trainer for ``cfg`` (its step in the precision ``train.amp.enabled`` gives on its
    device: :attr:`~.base.BioTrainerBase.precision`)."""
    return LazyTrainer(cfg)


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

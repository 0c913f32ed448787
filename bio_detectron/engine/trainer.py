"""The detection trainer: detectron2's DefaultTrainer with bio_detectron's pieces plugged in."""

import logging
import os

from detectron2.data import build_detection_test_loader, build_detection_train_loader
import torch
from detectron2.engine import DefaultTrainer, SimpleTrainer
from detectron2.evaluation import COCOEvaluator

from ..data import CheckedDatasetMapper, ensure_dataset_files
from ..solver import build_bio_optimizer
from .alignment import build_alignment_hook
from .amp import CPUAutocastTrainer, amp_precision
from .ddp import cpu_safe_ddp, sync_batchnorm_if_distributed
from .hooks import FiniteLossCheck
from .mirror import build_weight_mirror_hook

__all__ = ["BioTrainer"]

logger = logging.getLogger(__name__)


class BioTrainer(DefaultTrainer):
    """
    detectron2's DefaultTrainer, with:

    * DistributedDataParallel that works for CPU processes (gloo) as well as CUDA ones;
    * BatchNorm turned into SyncBatchNorm when training with several CUDA processes
      (``MODEL.BIO.SYNC_BN``);
    * a stop with a clear message, before the optimizer step, when a loss becomes non-finite;
    * data loaders whose errors name an unreadable image, and COCO evaluation of any dataset
      with COCO-format metadata, the embedded ones generated on demand;
    * the alignment-metrics hook when ``MODEL.BIO.ALIGNMENT.PERIOD`` > 0;
    * the optimizer of ``SOLVER.BIO`` (SGD or batch-manhattan SGD) and the weight mirror of the
      ``weight_mirror`` rule (``MODEL.BIO.MIRROR``);
    * ``SOLVER.AMP.ENABLED`` on CPU too: bfloat16 autocast where the CPU has native bfloat16,
      else full precision with a warning (:mod:`bio_detectron.engine.amp`).
    """

    def __init__(self, cfg):
        with cpu_safe_ddp():
            super().__init__(cfg)
        precision = amp_precision(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE, "SOLVER.AMP.ENABLED")
        if cfg.SOLVER.AMP.ENABLED and precision != torch.float16:
            # DefaultTrainer builds its inner trainer in __init__, AMPTrainer whenever
            # SOLVER.AMP.ENABLED, and AMPTrainer needs CUDA; there is no seam to choose another.
            # Replace it, with the same model, loader and optimizer (tests/test_detection.py
            # fails if DefaultTrainer stops keeping them there).
            inner = self._trainer
            step = CPUAutocastTrainer if precision == torch.bfloat16 else SimpleTrainer
            self._trainer = step(inner.model, inner.data_loader, inner.optimizer)
        self.model.register_forward_hook(FiniteLossCheck(self))

    def train(self):
        """
        Returns:
            OrderedDict or None: the results of the last evaluation (``TEST.EVAL_PERIOD``, and
            the final one), as ``DefaultTrainer.test`` returns them.
        """
        super().train()
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def build_model(cls, cfg):
        return sync_batchnorm_if_distributed(super().build_model(cfg), cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_bio_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=CheckedDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        ensure_dataset_files(dataset_name)
        mapper = CheckedDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        ensure_dataset_files(dataset_name)  # COCOEvaluator opens the json in its constructor
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    def build_hooks(self):
        hooks = super().build_hooks()
        # Before the writer, so its scalars are written in the same iteration; None when off.
        hooks.insert(-1, build_alignment_hook(self.cfg, self.model))
        # Right after DefaultTrainer's IterationTimer and LRScheduler, before its checkpointer, so
        # that a checkpoint holds B after its iteration's mirror step; None without mirror layers.
        hooks.insert(2, build_weight_mirror_hook(self.cfg, self.model))
        return hooks

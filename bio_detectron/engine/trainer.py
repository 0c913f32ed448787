"""The detection trainer: detectron2's DefaultTrainer with bio_detectron's pieces plugged in."""
import logging
import math
import os
import weakref

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from torch import nn

from ..data import CheckedDatasetMapper, ensure_dataset_files
from .alignment import build_alignment_hook
from .ddp import all_ranks_true, cpu_safe_ddp

__all__ = ["BioTrainer", "FiniteLossCheck"]

logger = logging.getLogger(__name__)


class FiniteLossCheck:
    """
    A forward hook for the model the training loop calls: a non-finite loss stops the run before
    the backward pass and the optimizer step, so weights stay finite and no checkpoint written so
    far is touched. All processes agree on the verdict, so none of them waits forever in the next
    gradient all-reduce.
    """

    def __init__(self, trainer):
        self.trainer = weakref.proxy(trainer)

    def __call__(self, module, inputs, loss_dict):
        if not module.training:  # evaluation hooks call the trainer's model too
            return
        losses = loss_dict if isinstance(loss_dict, dict) else {"total_loss": loss_dict}
        total = sum(v.detach().float().sum() for v in losses.values())
        if all_ranks_true(bool(torch.isfinite(total)), total.device):
            return
        bad = {k: float(v.detach().float().sum()) for k, v in losses.items()}
        bad = {k: v for k, v in bad.items() if not math.isfinite(v)}
        checkpoint = self.trainer.checkpointer.get_checkpoint_file() or "none written yet"
        raise FloatingPointError(
            f"Loss became non-finite at iteration {self.trainer.iter} "
            f"({bad or 'on another process'}); training stopped before the optimizer step. "
            f"The last checkpoint ({checkpoint}) is intact. Lower SOLVER.BASE_LR, normalise "
            "FPN/head (MODEL.FPN.NORM, MODEL.RETINANET.NORM 'GN') or try MODEL.BIO.SCALE 'mean_abs'."
        )


class BioTrainer(DefaultTrainer):
    """
    detectron2's DefaultTrainer, with:

    * DistributedDataParallel that works for CPU processes (gloo) as well as CUDA ones;
    * BatchNorm turned into SyncBatchNorm when training with several CUDA processes
      (``MODEL.BIO.SYNC_BN``);
    * a stop with a clear message, before the optimizer step, when a loss becomes non-finite;
    * data loaders whose errors name an unreadable image, and COCO evaluation of any dataset
      with COCO-format metadata, the embedded ones generated on demand;
    * the alignment-metrics hook when ``MODEL.BIO.ALIGNMENT.PERIOD`` > 0.
    """

    def __init__(self, cfg):
        with cpu_safe_ddp():
            super().__init__(cfg)
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
        model = super().build_model(cfg)
        if (
            cfg.MODEL.BIO.SYNC_BN
            and comm.get_world_size() > 1
            and torch.device(cfg.MODEL.DEVICE).type == "cuda"
        ):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

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
        return hooks

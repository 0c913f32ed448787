"""
The image-classification trainer of ``tools/train_imagenet.py``: detectron2's SimpleTrainer (or
AMPTrainer) with its hooks, checkpointer and event writers, on ImageNet-style folders.

Its checkpoints hold the ResNet under the names a detectron2 RetinaNet/FPN gives it
(``backbone.bottom_up.*``), so ``OUTPUT_DIR/model_final.pth`` is a detector's ``MODEL.WEIGHTS``.
"""

import logging
import time
import weakref
from collections import OrderedDict
from typing import Dict, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks
from detectron2.engine.defaults import default_writers
from detectron2.engine.train_loop import SimpleTrainer
from detectron2.solver import build_lr_scheduler
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.imagenet import (
    build_classification_dataset,
    build_classification_test_loader,
    build_classification_train_loader,
    classification_root,
)
from ..modeling.classification import build_classifier
from ..solver import build_bio_optimizer
from .amp import precision_trainer_class, with_precision
from .ddp import create_ddp_model, sync_batchnorm_if_distributed
from .hooks import add_bio_hooks_from_cfg

__all__ = [
    "ClassificationCheckpointer",
    "ClassificationTrainer",
    "AMPClassificationTrainer",
    "CPUAMPClassificationTrainer",
    "build_classification_trainer",
    "evaluate_classifier",
    "num_classes_from_cfg",
    "resolve_schedule",
]

logger = logging.getLogger(__name__)


def num_classes_from_cfg(cfg, classes: Sequence[str]) -> int:
    """``MODEL.CLASSIFIER.NUM_CLASSES``, or, when 0, the number of class folders ``classes``."""
    n = cfg.MODEL.CLASSIFIER.NUM_CLASSES
    if n > 0 and n != len(classes):
        raise ValueError(
            f"MODEL.CLASSIFIER.NUM_CLASSES={n} but the dataset has {len(classes)} class folders "
            f"(e.g. {list(classes)[:5]}); set it to 0 to use the folders"
        )
    return len(classes)


def resolve_schedule(cfg, iters_per_epoch: int):
    """
    Turn the epoch schedule into detectron2's iteration one.

    * ``SOLVER.MAX_ITER`` = ``SOLVER.EPOCHS * iters_per_epoch``, unless MAX_ITER > 0 is given;
    * ``SOLVER.STEPS``: ``SOLVER.STEP_EPOCHS * iters_per_epoch``, or, with a given MAX_ITER, the
      same fractions of it; steps that fall on the same iteration in very short runs merge;
    * ``SOLVER.BASE_LR`` *= ``SOLVER.IMS_PER_BATCH / SOLVER.LR_REFERENCE_BATCH`` (linear scaling;
      none when LR_REFERENCE_BATCH is 0).

    Returns:
        CfgNode: a frozen copy of ``cfg`` with these keys set.
    """
    s = cfg.SOLVER
    if s.EPOCHS <= 0 and s.MAX_ITER <= 0:
        raise ValueError(f"Set SOLVER.EPOCHS or SOLVER.MAX_ITER > 0 (got {s.EPOCHS}, {s.MAX_ITER})")
    epochs = list(s.STEP_EPOCHS)
    if any(b <= a for a, b in zip(epochs, epochs[1:])) or any(e <= 0 for e in epochs):
        raise ValueError(f"SOLVER.STEP_EPOCHS={epochs} must be positive and increasing")
    if s.MAX_ITER > 0:
        max_iter = s.MAX_ITER
        steps = [round(max_iter * e / s.EPOCHS) for e in epochs] if s.EPOCHS > 0 else []
    else:
        max_iter = s.EPOCHS * iters_per_epoch
        steps = [e * iters_per_epoch for e in epochs]
    steps = sorted({x for x in steps if 0 < x < max_iter})
    lr = s.BASE_LR
    if s.LR_REFERENCE_BATCH > 0:
        lr = s.BASE_LR * s.IMS_PER_BATCH / s.LR_REFERENCE_BATCH
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.BASE_LR = max_iter, tuple(steps), lr
    cfg.freeze()
    return cfg


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, data_loader, topk: Sequence[int] = (1, 5)
) -> Dict[str, float]:
    """
    Top-k accuracies over every process's share of a test loader.

    Args:
        model: returns logits (N, C) for a batch of images in eval mode (a DDP wrapper is
            unwrapped: its buffer broadcast would wait for processes with fewer batches).
        data_loader: yields (images, labels) batches.
        topk: the k of each accuracy; a k above the number of classes counts every image.

    Returns:
        dict: "top<k>" -> accuracy in percent over all processes' images.
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    was_training = model.training
    model.eval()
    correct, total = [0] * len(topk), 0
    try:
        for images, labels in data_loader:
            logits = model(images)
            k = min(max(topk), logits.shape[1])
            hits = logits.topk(k, dim=1).indices.cpu() == labels.view(-1, 1)
            for i, t in enumerate(topk):
                correct[i] += int(hits[:, : min(t, k)].any(dim=1).sum())
            total += len(labels)
    finally:
        model.train(was_training)
    counts = comm.all_gather((correct, total))
    total = sum(c[1] for c in counts)
    if total == 0:
        raise ValueError("The test loader gave no image")
    return OrderedDict(
        (f"top{t}", 100.0 * sum(c[0][i] for c in counts) / total) for i, t in enumerate(topk)
    )


class ClassificationCheckpointer(DetectionCheckpointer):
    """
    detectron2's checkpointer, but a checkpoint must fit the classifier it is loaded into: a
    missing or unexpected key, or a shape that differs (e.g. AlexNet's checkpoint for a ResNet,
    or another number of classes) is an error naming the file and the keys, raised before
    anything is loaded. Fixed-feedback buffers (``*.feedback``) may be missing or extra: a
    checkpoint of one rule initialises a model of another.
    """

    def load(self, path: str, checkpointables=None):
        self._loading = path
        return super().load(path, checkpointables)

    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        expected = self.model.state_dict()
        prefix = "module."  # a DDP model's state dict, saved by hand
        if (
            state
            and all(k.startswith(prefix) for k in state)
            and not any(k.startswith(prefix) for k in expected)
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
        missing = [k for k in expected if k not in state and not k.endswith(".feedback")]
        unexpected = [k for k in state if k not in expected and not k.endswith(".feedback")]
        shapes = [
            f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
            for k, v in expected.items()
            if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                f"Checkpoint {getattr(self, '_loading', '?')!r} does not fit "
                f"{type(self.model).__name__} (MODEL.CLASSIFIER.NAME / MODEL.RESNETS.DEPTH / "
                f"number of classes?): {len(missing)} missing keys {missing[:6]}, "
                f"{len(unexpected)} unexpected keys {unexpected[:6]}, "
                f"{len(shapes)} shape mismatches {shapes[:4]}. Nothing was loaded."
            )
        return super()._load_model(checkpoint)


class ClassificationTrainer(SimpleTrainer):
    """
    Trains ``MODEL.CLASSIFIER.NAME`` on the train split of :func:`classification_root`, with
    detectron2's SimpleTrainer loop (so ``after_backward`` hooks and forward hooks on the model
    see each step) and hooks: iteration timer, LR schedule, periodic checkpoints, top-1/top-5 on
    the val split every epoch (or every ``TEST.EVAL_PERIOD`` iterations when > 0) and at the end,
    and metrics written to the console, ``metrics.json`` and TensorBoard.

    A non-finite loss on any process stops every process before the optimizer step, with a
    FloatingPointError naming the iteration; checkpoints written so far are untouched.
    """

    def __init__(self, cfg):
        root = classification_root(cfg)
        train_set = build_classification_dataset(cfg, "train", root=root)
        val_set = build_classification_dataset(cfg, "val", classes=train_set.classes, root=root)
        model = self.build_model(cfg, num_classes_from_cfg(cfg, train_set.classes))
        data_loader = build_classification_train_loader(cfg, dataset=train_set)
        cfg = resolve_schedule(cfg, data_loader.iters_per_epoch)
        logger.info(
            f"{root}: {len(train_set)} train / {len(val_set)} val images, {len(train_set.classes)} "
            f"classes; {data_loader.iters_per_epoch} iterations per epoch, MAX_ITER "
            f"{cfg.SOLVER.MAX_ITER}, lr {cfg.SOLVER.BASE_LR:g} (x{cfg.SOLVER.GAMMA:g} at "
            f"{list(cfg.SOLVER.STEPS)})"
        )
        optimizer = build_bio_optimizer(cfg, model)
        # Per-process BatchNorm statistics, as the seed code: no buffer broadcast each step.
        super().__init__(create_ddp_model(model, broadcast_buffers=False), data_loader, optimizer)

        self.cfg = cfg
        self.unwrapped_model = model
        self.train_set = train_set
        self.test_loader = build_classification_test_loader(cfg, dataset=val_set)
        self.scheduler = build_lr_scheduler(cfg, optimizer)
        self.checkpointer = ClassificationCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter, self.max_iter = 0, cfg.SOLVER.MAX_ITER
        self.iters_per_epoch = data_loader.iters_per_epoch
        self._last_eval_results = None
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg, num_classes: int) -> nn.Module:
        """The classifier, converted by ``MODEL.BIO``, on ``MODEL.DEVICE``."""
        model = sync_batchnorm_if_distributed(build_classifier(cfg, num_classes), cfg)
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def test(cls, cfg, model: nn.Module, dataset=None) -> Dict[str, Dict[str, float]]:
        """
        Returns:
            dict: {"val": {"top1": %, "top5": %}} over the val split (or ``dataset``).
        """
        loader = build_classification_test_loader(cfg, dataset=dataset)
        results = OrderedDict(val=evaluate_classifier(model, loader))
        if comm.is_main_process():
            logger.info(
                "Evaluation on {} val images: {}".format(
                    len(loader.dataset),
                    ", ".join(f"{k} {v:.2f}%" for k, v in results["val"].items()),
                )
            )
        return results

    # Metrics are written every this many iterations.
    WRITER_PERIOD = 20

    @classmethod
    def evaluate(cls, cfg, resume: bool = False) -> Dict[str, Dict[str, float]]:
        """
        ``--eval-only``: build the classifier for the val split, load ``MODEL.WEIGHTS`` (or,
        with ``resume``, the last checkpoint of OUTPUT_DIR) strictly, and evaluate it.

        Returns:
            dict: {"val": {"top1": %, "top5": %}}.
        """
        val_set = build_classification_dataset(cfg, "val")
        model = cls.build_model(cfg, num_classes_from_cfg(cfg, val_set.classes))
        checkpointer = ClassificationCheckpointer(model, cfg.OUTPUT_DIR)
        if not cfg.MODEL.WEIGHTS and not (resume and checkpointer.has_checkpoint()):
            raise ValueError(
                "--eval-only needs weights: set MODEL.WEIGHTS (or use --resume with a checkpoint "
                f"in OUTPUT_DIR={cfg.OUTPUT_DIR!r})"
            )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        return cls.test(cfg, model, val_set)

    def build_hooks(self):
        """
        Returns:
            list[HookBase]: in order: the non-finite-loss stop, timer, LR schedule, the weight
            mirror (MODEL.BIO.MIRROR, when the model has weight_mirror layers), checkpoints (main
            process), evaluation, the alignment metrics when ``MODEL.BIO.ALIGNMENT.PERIOD`` > 0,
            writers (main process; last, so that they write the evaluation and alignment results
            of the same iteration). The bio hooks come from
            :func:`~bio_detectron.engine.hooks.add_bio_hooks`, as in the other trainers.
        """
        cfg = self.cfg
        ret = [hooks.IterationTimer(), hooks.LRScheduler(self.optimizer, self.scheduler)]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results():
            self._last_eval_results = self.test(
                self.cfg, self.unwrapped_model, self.test_loader.dataset
            )
            return self._last_eval_results

        period = cfg.TEST.EVAL_PERIOD if cfg.TEST.EVAL_PERIOD > 0 else self.iters_per_epoch
        ret.append(hooks.EvalHook(period, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=self.WRITER_PERIOD))
        return add_bio_hooks_from_cfg(
            ret, self.unwrapped_model, cfg, writer_period=self.WRITER_PERIOD
        )

    def build_writers(self):
        """Console line (losses, lr, images/s, ETA), ``metrics.json`` and TensorBoard."""
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def resume_or_load(self, resume: bool = True):
        """
        With ``resume`` and a checkpoint in OUTPUT_DIR: load it all (model with its feedback
        buffers, optimizer, LR schedule, iteration) and continue after its iteration. Otherwise
        load the model weights of ``MODEL.WEIGHTS``, if set, and start at iteration 0.
        """
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
        self.data_loader.set_start_iter(self.start_iter)

    def train(self):
        """
        Returns:
            dict: the last evaluation's results, {"val": {"top1": %, "top5": %}}.
        """
        super().train(self.start_iter, self.max_iter)
        return self._last_eval_results

    def run_step(self):
        start = time.perf_counter()
        super().run_step()
        batch = self.cfg.SOLVER.IMS_PER_BATCH
        # "[metric]" makes CommonMetricPrinter show it on the console line.
        self.storage.put_scalar("[metric]images_per_s", batch / (time.perf_counter() - start))
        if self.train_set.skip_unreadable:
            self.storage.put_scalar("data/skipped_images", self.train_set.num_skipped)


AMPClassificationTrainer = with_precision(ClassificationTrainer, torch.float16)  # CUDA
CPUAMPClassificationTrainer = with_precision(ClassificationTrainer, torch.bfloat16)


def build_classification_trainer(cfg) -> ClassificationTrainer:
    """The trainer for ``cfg``, in the precision ``SOLVER.AMP.ENABLED`` gives on its device."""
    amp, device = cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE
    return precision_trainer_class(ClassificationTrainer, amp, device, "SOLVER.AMP.ENABLED")(cfg)

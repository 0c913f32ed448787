"""
The trainers and their hooks: detection (:class:`BioTrainer`, ``tools/train_net.py``), image
classification (:class:`ClassificationTrainer`, ``tools/train_imagenet.py``) and LazyConfig
(:class:`LazyTrainer`, ``tools/lazyconfig_train_net.py``). All three are a
:class:`BioTrainerBase`: detectron2's DefaultTrainer composition, with an inner step trainer
chosen by precision (:func:`amp_precision`) and bio_detectron's hooks from :func:`add_bio_hooks`.
The tools start their processes with :func:`launch`.
"""

from .alignment_hook import AlignmentHook, build_alignment_hook
from .amp import CPUAutocastTrainer, amp_precision, build_step_trainer
from .base import BioTrainerBase
from .classification import (
    ClassificationCheckpointer,
    ClassificationTrainer,
    build_classification_trainer,
    evaluate_classifier,
)
from .ddp import create_ddp_model, unwrap_model
from .hooks import FiniteLossCheck, add_bio_hooks, add_bio_hooks_from_cfg
from .launcher import launch
from .lazy import LazyTrainer, build_lazy_trainer, do_train, load_lazy_config
from .mirror_hook import WeightMirrorHook, build_weight_mirror_hook, weight_mirror_hook
from .trainer import BioTrainer

__all__ = [
    "AlignmentHook",
    "BioTrainer",
    "BioTrainerBase",
    "CPUAutocastTrainer",
    "ClassificationCheckpointer",
    "ClassificationTrainer",
    "FiniteLossCheck",
    "LazyTrainer",
    "WeightMirrorHook",
    "add_bio_hooks",
    "add_bio_hooks_from_cfg",
    "amp_precision",
    "build_alignment_hook",
    "build_classification_trainer",
    "build_lazy_trainer",
    "build_step_trainer",
    "build_weight_mirror_hook",
    "create_ddp_model",
    "do_train",
    "evaluate_classifier",
    "launch",
    "load_lazy_config",
    "unwrap_model",
    "weight_mirror_hook",
]

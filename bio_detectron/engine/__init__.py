"""
The trainers and their hooks: detection (:class:`BioTrainer`, ``tools/train_net.py``), image
classification (:class:`ClassificationTrainer`, ``tools/train_imagenet.py``) and LazyConfig
(:class:`LazyTrainer`, ``tools/lazyconfig_train_net.py``). All three get bio_detectron's hooks
from :func:`add_bio_hooks` and their precision from :func:`precision_trainer_class`.
"""

from .alignment_hook import AlignmentHook, build_alignment_hook
from .amp import CPUAutocastTrainer, amp_precision, precision_trainer_class, with_precision
from .classification import (
    AMPClassificationTrainer,
    ClassificationCheckpointer,
    ClassificationTrainer,
    build_classification_trainer,
    evaluate_checkpoint,  # noqa: F401  (deprecated)
    evaluate_classifier,
)
from .ddp import create_ddp_model, unwrap_model
from .evaluation import EVALUATOR_TYPES, build_dataset_evaluator, build_evaluator
from .hooks import FiniteLossCheck, add_bio_hooks, add_bio_hooks_from_cfg
from .lazy import (
    AMPLazyTrainer,
    LazyTrainer,
    build_lazy_trainer,
    do_test,  # noqa: F401  (deprecated)
    do_train,
    evaluate_lazy_checkpoint,  # noqa: F401  (deprecated)
    load_lazy_config,
)
from .mirror_hook import WeightMirrorHook, build_weight_mirror_hook, weight_mirror_hook
from .trainer import BioTrainer
from .voc_evaluation import PascalVOCEvaluator

__all__ = [
    "EVALUATOR_TYPES",
    "AMPClassificationTrainer",
    "AMPLazyTrainer",
    "AlignmentHook",
    "BioTrainer",
    "CPUAutocastTrainer",
    "ClassificationCheckpointer",
    "ClassificationTrainer",
    "FiniteLossCheck",
    "LazyTrainer",
    "PascalVOCEvaluator",
    "WeightMirrorHook",
    "add_bio_hooks",
    "add_bio_hooks_from_cfg",
    "amp_precision",
    "build_alignment_hook",
    "build_classification_trainer",
    "build_dataset_evaluator",
    "build_evaluator",
    "build_lazy_trainer",
    "build_weight_mirror_hook",
    "create_ddp_model",
    "do_train",
    "evaluate_classifier",
    "load_lazy_config",
    "precision_trainer_class",
    "unwrap_model",
    "weight_mirror_hook",
    "with_precision",
]


# Kept working, outside __all__: alignment_metrics (now bio_detectron.alignment's), and the
# deprecated do_test, evaluate_checkpoint and evaluate_lazy_checkpoint (they warn when called).
from ..alignment import alignment_metrics  # noqa: E402,F401


def __getattr__(name):
    if name == "cpu_safe_ddp":
        raise AttributeError(
            "bio_detectron.engine.cpu_safe_ddp is gone: BioTrainer wraps its model with "
            "bio_detectron.engine.create_ddp_model itself, without changing detectron2"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

from .alignment import AlignmentHook, alignment_metrics, build_alignment_hook
from .classification import (
    AMPClassificationTrainer,
    ClassificationCheckpointer,
    ClassificationTrainer,
    build_classification_trainer,
    evaluate_checkpoint,
    evaluate_classifier,
)
from .ddp import cpu_safe_ddp, create_ddp_model
from .hooks import FiniteLossCheck
from .lazy import (
    AMPLazyTrainer,
    LazyTrainer,
    build_lazy_trainer,
    do_test,
    do_train,
    evaluate_lazy_checkpoint,
    load_lazy_config,
)
from .mirror import WeightMirrorHook, build_weight_mirror_hook, weight_mirror_hook
from .trainer import BioTrainer

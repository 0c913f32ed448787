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
from .trainer import BioTrainer

"""
Evaluators of detectron2's datasets, chosen by each dataset's ``evaluator_type``
(:mod:`.build`), and a Pascal VOC evaluator that reports AP per class (:mod:`.pascal_voc`).
"""

from .build import (
    EVALUATOR_PACKAGES,
    EVALUATOR_TYPES,
    build_dataset_evaluator,
    build_evaluator,
    check_evaluator,
)
from .pascal_voc import PascalVOCEvaluator

__all__ = [
    "EVALUATOR_PACKAGES",
    "EVALUATOR_TYPES",
    "PascalVOCEvaluator",
    "build_dataset_evaluator",
    "build_evaluator",
    "check_evaluator",
]

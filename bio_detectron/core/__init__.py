"""
The PyTorch-only core of bio_detectron: learning rules, the converted layers (one conv and one
linear autograd path), the conversion of any model, the weight mirror, the alignment probe and
metrics, compiling, and batch-manhattan SGD. Nothing here imports detectron2 (``probe`` uses its
event storage and SyncBatchNorm only when it is installed) or anything else of this package.
"""

from .compile import compile_model
from .convert import convert_model, find_unsupported, make_feedback_now, revert_model, rules_of
from .layers import FeedbackConv2d, FeedbackLayer, FeedbackLinear, is_converted
from .optim import BatchManhattanSGD
from .rules import RULE_REGISTRY, LearningRule, available_rules, build_rule

__all__ = [
    "RULE_REGISTRY",
    "BatchManhattanSGD",
    "FeedbackConv2d",
    "FeedbackLayer",
    "FeedbackLinear",
    "LearningRule",
    "available_rules",
    "build_rule",
    "compile_model",
    "convert_model",
    "find_unsupported",
    "is_converted",
    "make_feedback_now",
    "revert_model",
    "rules_of",
]

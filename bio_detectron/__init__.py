"""bio_detectron: Detectron2 models trained with biologically-plausible learning rules."""
from .convert import convert_model, rules_of
from .layers import FeedbackConv2d, FeedbackLayer, FeedbackLinear, is_converted
from .rules import RULE_REGISTRY, LearningRule, available_rules, build_rule

__version__ = "0.1.0"

"""
bio_detectron: Detectron2 models trained with biologically-plausible learning rules.

``rules``, ``layers`` and ``convert`` need nothing but PyTorch: ``import bio_detectron`` and
``bio_detectron.convert_model`` work without detectron2. When detectron2 is importable, importing
the package also registers its backbones, RetinaNet head and meta-architectures with detectron2,
and the embedded datasets with its catalogs.
"""
from .convert import (
    convert_model,
    find_unsupported,
    make_feedback_now,
    revert_model,
    rules_of,
)
from .layers import FeedbackConv2d, FeedbackLayer, FeedbackLinear, is_converted
from .rules import RULE_REGISTRY, LearningRule, available_rules, build_rule

from .config import add_bio_config, add_classification_config  # isort: skip
from . import data as _data  # noqa: F401  (registers the embedded datasets)
from . import modeling as _modeling  # noqa: F401  (registers builders)
from .modeling import bio_plausible

__version__ = "0.1.0"

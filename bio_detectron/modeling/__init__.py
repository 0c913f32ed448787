"""Registered builders; importing this module registers them with detectron2."""

from .backbone import build_bio_resnet_backbone, build_bio_retinanet_resnet_fpn_backbone
from .classification import (
    CLASSIFIER_REGISTRY,
    AlexNet,
    ImageClassifier,
    ResNetClassifier,
    build_classifier,
)
from .meta_arch import BioPlausible, bio_plausible
from .parts import (
    PARTS,
    bio_args,
    convert_from_cfg,
    convert_parts,
    part_of,
    parts_of,
    rules_from_cfg,
)
from .retinanet import RETINANET_HEAD_REGISTRY, BioRetinaNet, BioRetinaNetHead, build_retinanet_head

__all__ = [
    "CLASSIFIER_REGISTRY",
    "PARTS",
    "RETINANET_HEAD_REGISTRY",
    "AlexNet",
    "BioPlausible",
    "BioRetinaNet",
    "BioRetinaNetHead",
    "ImageClassifier",
    "ResNetClassifier",
    "bio_args",
    "bio_plausible",
    "build_bio_resnet_backbone",
    "build_bio_retinanet_resnet_fpn_backbone",
    "build_classifier",
    "build_retinanet_head",
    "convert_from_cfg",
    "convert_parts",
    "part_of",
    "parts_of",
    "rules_from_cfg",
]

"""A registry of RetinaNet heads, the bio head, and the BioRetinaNet meta-architecture."""

from typing import Dict, List

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.utils.registry import Registry
from torch import nn

from .parts import bio_args_from_cfg, check_exclude, convert_parts

__all__ = ["RETINANET_HEAD_REGISTRY", "build_retinanet_head", "BioRetinaNetHead", "BioRetinaNet"]

RETINANET_HEAD_REGISTRY = Registry("RETINANET_HEAD")
RETINANET_HEAD_REGISTRY.__doc__ = """
Registry for RetinaNet heads: callables ``(cfg, input_shape: List[ShapeSpec]) -> nn.Module`` whose
forward maps a list of feature maps to (class logits, box deltas), as detectron2's RetinaNetHead.
``MODEL.RETINANET.HEAD_NAME`` picks one.
"""


def build_retinanet_head(cfg, input_shape: List[ShapeSpec]):
    """Build the head named by ``cfg.MODEL.RETINANET.HEAD_NAME``."""
    name = cfg.MODEL.RETINANET.HEAD_NAME
    if name not in RETINANET_HEAD_REGISTRY:
        known = sorted(k for k, _ in RETINANET_HEAD_REGISTRY)
        raise ValueError(f"MODEL.RETINANET.HEAD_NAME={name!r} is not registered; known: {known}")
    return RETINANET_HEAD_REGISTRY.get(name)(cfg, input_shape)


@RETINANET_HEAD_REGISTRY.register()
class BioRetinaNetHead(RetinaNetHead):
    """
    detectron2's RetinaNetHead (cls/box towers of ``MODEL.RETINANET.NUM_CONVS`` convs with optional
    ``MODEL.RETINANET.NORM``) whose towers learn with the HEAD part's rule and whose final
    ``cls_score``/``bbox_pred`` convs learn with the PREDICTOR part's rule.
    """

    @configurable
    def __init__(
        self, *, rules: Dict[str, object], seed: int = 0, exclude=(), unsupported="error", **kwargs
    ):
        """
        Args:
            rules, seed, exclude, unsupported: see
                :func:`bio_detectron.modeling.parts.convert_parts`.
            kwargs: the arguments of detectron2's RetinaNetHead.
        """
        super().__init__(**kwargs)
        convert_parts(
            self, rules, seed=seed, exclude=exclude, unsupported=unsupported, prefix="head."
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {**super().from_config(cfg, input_shape), **bio_args_from_cfg(cfg)}


@META_ARCH_REGISTRY.register()
class BioRetinaNet(RetinaNet):
    """
    RetinaNet whose head comes from :data:`RETINANET_HEAD_REGISTRY`. Its backbone is whatever
    ``MODEL.BACKBONE.NAME`` builds: use ``build_bio_retinanet_resnet_fpn_backbone`` for a backbone
    trained with the configured rules.
    """

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        shapes = ret["backbone"].output_shape()
        ret["head"] = build_retinanet_head(
            cfg, [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        )
        check_exclude(
            nn.ModuleDict({"backbone": ret["backbone"], "head": ret["head"]}), cfg.MODEL.BIO.EXCLUDE
        )
        return ret

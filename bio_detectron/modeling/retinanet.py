"""
BioRetinaNet: detectron2's RetinaNet, with its head from a registry, converted whole by
``MODEL.BIO``; and the registry of RetinaNet heads, whose default builds detectron2's head.
"""

from typing import List

from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.utils.registry import Registry
from torch import nn

from .parts import convert_from_cfg

__all__ = ["RETINANET_HEAD_REGISTRY", "build_retinanet_head", "BioRetinaNetHead", "BioRetinaNet"]

RETINANET_HEAD_REGISTRY = Registry("RETINANET_HEAD")
RETINANET_HEAD_REGISTRY.__doc__ = """
Registry for RetinaNet heads: callables ``(cfg, input_shape: List[ShapeSpec]) -> nn.Module`` whose
forward maps a list of feature maps to (class logits, box deltas), as detectron2's RetinaNetHead.
``MODEL.RETINANET.HEAD_NAME`` picks one. A builder that builds a detectron2 head sets
``stock_name`` to that head's class name, so that :mod:`bio_detectron.export` knows the model is
stock RetinaNet's.
"""


def build_retinanet_head(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """Build the head named by ``cfg.MODEL.RETINANET.HEAD_NAME``."""
    name = cfg.MODEL.RETINANET.HEAD_NAME
    if name not in RETINANET_HEAD_REGISTRY:
        known = sorted(k for k, _ in RETINANET_HEAD_REGISTRY)
        raise ValueError(f"MODEL.RETINANET.HEAD_NAME={name!r} is not registered; known: {known}")
    return RETINANET_HEAD_REGISTRY.get(name)(cfg, input_shape)


@RETINANET_HEAD_REGISTRY.register()
def BioRetinaNetHead(cfg, input_shape: List[ShapeSpec]) -> RetinaNetHead:
    """
    detectron2's RetinaNetHead (cls/box towers of ``MODEL.RETINANET.NUM_CONVS`` convs with optional
    ``MODEL.RETINANET.NORM``), unconverted: :func:`BioRetinaNet` converts the whole model, the
    towers with the HEAD part's rule and the final ``cls_score``/``bbox_pred`` convs with the
    PREDICTOR part's.
    """
    return RetinaNetHead(cfg, input_shape)


BioRetinaNetHead.stock_name = RetinaNetHead.__name__


@META_ARCH_REGISTRY.register()
def BioRetinaNet(cfg) -> RetinaNet:
    """
    detectron2's RetinaNet, with the head of :data:`RETINANET_HEAD_REGISTRY`
    (``MODEL.RETINANET.HEAD_NAME``) and the backbone of ``MODEL.BACKBONE.NAME``, converted whole by
    ``MODEL.BIO`` (:func:`~.parts.convert_from_cfg`). The model is a stock ``RetinaNet`` with the
    stock state-dict keys (plus the ``feedback`` state of rules that keep one), so stock
    checkpoints load into it and it exports by reverting its layers.
    """
    kwargs = RetinaNet.from_config(cfg)
    # from_config built detectron2's head too; it is replaced, and built first all the same, so
    # that the weights drawn after a torch.manual_seed are those of every earlier version.
    shapes = kwargs["backbone"].output_shape()
    kwargs["head"] = build_retinanet_head(cfg, [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES])
    return convert_from_cfg(RetinaNet(**kwargs), cfg)


BioRetinaNet.stock_name = "RetinaNet"
# Builds the whole model and converts it: the bio backbone builders may be used under it.
BioRetinaNet.converts_whole_model = True

"""detectron2's ResNet and RetinaNet ResNet-FPN backbones, trained with the configured rules."""

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import build_retinanet_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .parts import convert_from_cfg

__all__ = ["build_bio_resnet_backbone", "build_bio_retinanet_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_bio_resnet_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    detectron2's ResNet (``MODEL.RESNETS.DEPTH`` 18 to 152) whose convs learn with
    ``MODEL.BIO.PARTS.BACKBONE`` (or ``MODEL.BIO.RULE``).
    """
    return convert_from_cfg(build_resnet_backbone(cfg, input_shape), cfg, prefix="backbone.")


@BACKBONE_REGISTRY.register()
def build_bio_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    detectron2's RetinaNet ResNet-FPN (P3-P7): the bottom-up ResNet learns with the BACKBONE part's
    rule, the FPN's lateral/output convs and P6/P7 with the FPN part's rule.
    """
    backbone = build_retinanet_resnet_fpn_backbone(cfg, input_shape)
    return convert_from_cfg(backbone, cfg, prefix="backbone.")

"""
detectron2's ResNet and RetinaNet ResNet-FPN backbones under the names the configs give them.

They are thin: each builds detectron2's backbone, unconverted, and the meta-architecture that
holds it (``BioRetinaNet``, ``BioPlausible``) converts the whole model once, by ``MODEL.BIO``, so
that parts, exclusions, unsupported layers and each layer's B come from one pass over the model
with its full module names. Converting a backbone while it is built would need a second
conversion path that knows the backbone's name in the model; so under a meta-architecture that
does not convert (stock ``RetinaNet``, ``GeneralizedRCNN``), where the backbone would silently
train with plain backprop, they refuse to build and say which meta-architecture to use.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import build_retinanet_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["build_bio_resnet_backbone", "build_bio_retinanet_resnet_fpn_backbone"]


def _check_converted(cfg, name: str) -> None:
    meta = cfg.MODEL.META_ARCHITECTURE
    if meta in META_ARCH_REGISTRY and getattr(
        META_ARCH_REGISTRY.get(meta), "converts_whole_model", False
    ):
        return
    raise ValueError(
        f"MODEL.BACKBONE.NAME={name!r} is converted by the meta-architecture that holds it, but "
        f"MODEL.META_ARCHITECTURE={meta!r} does not convert: its backbone would train with plain "
        "backprop. Use MODEL.META_ARCHITECTURE 'BioRetinaNet', or 'BioPlausible' with "
        f"MODEL.BIO.BASE_META_ARCHITECTURE {meta!r}."
    )


@BACKBONE_REGISTRY.register()
def build_bio_resnet_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    detectron2's ResNet (``MODEL.RESNETS.DEPTH`` 18 to 152), whose convs the meta-architecture
    converts with ``MODEL.BIO.PARTS.BACKBONE`` (or ``MODEL.BIO.RULE``).
    """
    _check_converted(cfg, "build_bio_resnet_backbone")
    return build_resnet_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_bio_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    detectron2's RetinaNet ResNet-FPN (P3-P7), which the meta-architecture converts: the bottom-up
    ResNet with the BACKBONE part's rule, the FPN's lateral/output convs and P6/P7 with the FPN
    part's.
    """
    _check_converted(cfg, "build_bio_retinanet_resnet_fpn_backbone")
    return build_retinanet_resnet_fpn_backbone(cfg, input_shape)


# The detectron2 builders of the same backbones, for bio_detectron.export.
build_bio_resnet_backbone.stock_name = "build_resnet_backbone"
build_bio_retinanet_resnet_fpn_backbone.stock_name = "build_retinanet_resnet_fpn_backbone"

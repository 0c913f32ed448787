"""
Image classifiers trained with the configured learning rules, whose bodies initialise detectors.

Module names follow the parts of a detectron2 detector, so that ``MODEL.BIO.PARTS`` means the same
here and there, and so that a layer has the same fixed feedback weight B in the classifier and in
the detector (B's seed depends on the full module name):

* ResNet: ``backbone.bottom_up`` is detectron2's ResNet, exactly as the RetinaNet/FPN backbones hold
  it (``backbone.bottom_up.stem.conv1``, ``backbone.bottom_up.res2.0.conv1``, ...), so that a
  classifier checkpoint loads into the detector with nothing of the ResNet missing;
  ``classifier`` is the last linear layer (the "predictor" part).
* AlexNet: the five convs are ``backbone.bottom_up.conv1..conv5`` ("backbone"), the hidden linear
  layers ``head.fc6/fc7`` ("head") and the last one ``classifier`` ("predictor").
* ViT: ``backbone.bottom_up`` is torchvision's VisionTransformer without its head ("backbone":
  the patch embedding, every attention module and MLP); ``classifier`` the last layer.
"""

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from fvcore.common.registry import Registry
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from .parts import convert_from_cfg

__all__ = [
    "CLASSIFIER_REGISTRY",
    "ImageClassifier",
    "ResNetClassifier",
    "AlexNet",
    "ViTClassifier",
    "build_classifier",
]

CLASSIFIER_REGISTRY = Registry("CLASSIFIER")
CLASSIFIER_REGISTRY.__doc__ = """
Registry for image classifiers (MODEL.CLASSIFIER.NAME). A registered class is called as
``cls(cfg, num_classes=n)`` and returns an :class:`ImageClassifier`.
"""

Batch = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class _Container(nn.Module):
    """A module that only names its children: ``backbone`` holding ``bottom_up``, as detectors."""

    def __init__(self, **children: nn.Module):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


class ImageClassifier(nn.Module):
    """
    Base of the classifiers: normalises the input on the model's device, computes logits with
    :meth:`logits`, and in training returns detectron2's dict of losses.

    The batch is what :func:`bio_detectron.data.imagenet.build_classification_train_loader`
    yields: ``(images, labels)``, images uint8 or float (N, 3, H, W) in 0-255 in INPUT.FORMAT's
    channel order, labels int64 (N,). In evaluation, images alone are accepted too.

    Every step has static shapes, so :func:`bio_detectron.compile_model` compiles the whole
    model, loss included (:attr:`bio_compile_targets`).
    """

    bio_compile_targets = ("",)

    def __init__(
        self,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        channels_last: bool = False,
    ):
        """
        Args:
            pixel_mean, pixel_std: per-channel normalisation, in the input's channel order and
                0-255 scale (MODEL.PIXEL_MEAN/STD).
            channels_last: feed convolutions channels_last tensors when on a CUDA device.
        """
        super().__init__()
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                f"MODEL.PIXEL_MEAN={list(pixel_mean)} and MODEL.PIXEL_STD={list(pixel_std)} must "
                "have 3 values each"
            )
        # Not saved in checkpoints, as in detectron2's meta-architectures.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)
        self.channels_last = channels_last

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            images: (N, 3, H, W), uint8 or float, 0-255, on any device.

        Returns:
            Tensor: float (N, 3, H, W) on the model's device, normalised.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.device, non_blocking=True).float()
        x = (x - self.pixel_mean) / self.pixel_std
        if self.channels_last and x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: normalised images (N, 3, H, W).

        Returns:
            Tensor: (N, num_classes) class scores.
        """
        raise NotImplementedError

    def forward(self, batched_inputs: Batch):
        """
        Args:
            batched_inputs: ``(images, labels)``; or, in evaluation, ``images``.

        Returns:
            In training, ``{"loss_cls": mean cross-entropy}``; in evaluation, logits
            (N, num_classes).
        """
        if isinstance(batched_inputs, (tuple, list)):
            images, labels = batched_inputs
        else:
            images, labels = batched_inputs, None
        logits = self.logits(self.preprocess(images))
        if not self.training:
            return logits
        if labels is None:
            raise ValueError("In training, the model takes (images, labels) batches")
        return {"loss_cls": F.cross_entropy(logits.float(), labels.to(logits.device))}


def _base_kwargs(cfg):
    return {
        "pixel_mean": cfg.MODEL.PIXEL_MEAN,
        "pixel_std": cfg.MODEL.PIXEL_STD,
        "channels_last": cfg.MODEL.CLASSIFIER.CHANNELS_LAST,
    }


@CLASSIFIER_REGISTRY.register()
class ResNetClassifier(ImageClassifier):
    """
    detectron2's ResNet (``MODEL.RESNETS.*``: depth 18/34/50/101/152, norm, stride-in-1x1, ...),
    then global average pooling and a linear ``classifier``.
    """

    @configurable
    def __init__(self, *, bottom_up: nn.Module, out_feature: str, num_classes: int, **kwargs):
        """
        Args:
            bottom_up: a detectron2 ``Backbone`` (e.g. ``ResNet``) whose output ``out_feature``
                feeds the classifier.
            out_feature: e.g. "res5".
            num_classes: outputs of the classifier.
            kwargs: see :class:`ImageClassifier`.
        """
        super().__init__(**kwargs)
        self.backbone = _Container(bottom_up=bottom_up)
        self.out_feature = out_feature
        channels = bottom_up.output_shape()[out_feature].channels
        self.classifier = nn.Linear(channels, num_classes)

    @classmethod
    def from_config(cls, cfg, num_classes: int):
        # The classifier needs only res5; the detector's OUT_FEATURES (res3-res5) would not change
        # the layers built, since ResNet drops only the stages after the last output.
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
        return {
            "bottom_up": build_resnet_backbone(cfg, ShapeSpec(channels=3)),
            "out_feature": "res5",
            "num_classes": num_classes,
            **_base_kwargs(cfg),
        }

    def logits(self, x):
        features = self.backbone.bottom_up(x)[self.out_feature]
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


# The smallest input AlexNet's three 3x3/2 max-pools accept.
ALEXNET_MIN_SIZE = 63


@CLASSIFIER_REGISTRY.register()
class AlexNet(ImageClassifier):
    """
    AlexNet as in the seed paper's code (Xiao et al. 2018): BatchNorm before every ReLU, no bias
    in a layer followed by BatchNorm, no dropout. Convs 64-192-384-256-256 (11x11/4, 5x5, 3x3 x3)
    with 3x3/2 max-pools after conv1, conv2 and conv5, adaptive average pooling to 6x6, linear
    layers 4096-4096 (BatchNorm1d, ReLU) and a linear ``classifier``. Inputs must be >= 63 px.
    """

    @configurable
    def __init__(self, *, num_classes: int, width: int = 4096, **kwargs):
        """
        Args:
            num_classes: outputs of the classifier.
            width: outputs of fc6 and fc7.
            kwargs: see :class:`ImageClassifier`.
        """
        super().__init__(**kwargs)
        body = nn.Sequential()
        convs = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1)]
        convs += [(384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
        for i, (c_in, c_out, k, stride, pad) in enumerate(convs, start=1):
            body.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, k, stride, pad, bias=False))
            body.add_module(f"bn{i}", nn.BatchNorm2d(c_out))
            body.add_module(f"relu{i}", nn.ReLU(inplace=True))
            if i in (1, 2, 5):
                body.add_module(f"pool{i}", nn.MaxPool2d(kernel_size=3, stride=2))
        body.add_module("avgpool", nn.AdaptiveAvgPool2d((6, 6)))
        self.backbone = _Container(bottom_up=body)
        self.head = nn.Sequential()
        for name, c_in in (("6", 256 * 6 * 6), ("7", width)):
            self.head.add_module(f"fc{name}", nn.Linear(c_in, width, bias=False))
            self.head.add_module(f"bn{name}", nn.BatchNorm1d(width))
            self.head.add_module(f"relu{name}", nn.ReLU(inplace=True))
        self.classifier = nn.Linear(width, num_classes)

    @classmethod
    def from_config(cls, cfg, num_classes: int):
        size = cfg.INPUT.CLASSIFICATION.SIZE
        if size < ALEXNET_MIN_SIZE:
            raise ValueError(
                f"INPUT.CLASSIFICATION.SIZE={size} is too small for AlexNet: its pools need "
                f">= {ALEXNET_MIN_SIZE} px"
            )
        return {"num_classes": num_classes, **_base_kwargs(cfg)}

    def logits(self, x):
        x = torch.flatten(self.backbone.bottom_up(x), 1)
        return self.classifier(self.head(x))


@CLASSIFIER_REGISTRY.register()
class ViTClassifier(ImageClassifier):
    """
    torchvision's VisionTransformer (square patches, a class token, pre-norm blocks of
    ``nn.MultiheadAttention`` and an MLP), without dropout, whose class token feeds a linear
    ``classifier``. Its attention modules learn with the rule as its other layers do (see
    docs/rules.md, "Attention").
    """

    @configurable
    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        num_classes: int,
        **kwargs,
    ):
        """
        Args:
            image_size: side of the (square) input images.
            patch_size, num_layers, num_heads, hidden_dim, mlp_dim: torchvision's
                ``VisionTransformer`` arguments.
            num_classes: outputs of the classifier.
            kwargs: see :class:`ImageClassifier`.
        """
        super().__init__(**kwargs)
        body = VisionTransformer(
            image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes=1
        )
        body.heads = nn.Identity()  # the classifier below is the last layer
        self.backbone = _Container(bottom_up=body)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    @classmethod
    def from_config(cls, cfg, num_classes: int):
        vit, size = cfg.MODEL.CLASSIFIER.VIT, cfg.INPUT.CLASSIFICATION.SIZE
        if size % vit.PATCH_SIZE:
            raise ValueError(
                f"INPUT.CLASSIFICATION.SIZE={size} is not a multiple of "
                f"MODEL.CLASSIFIER.VIT.PATCH_SIZE={vit.PATCH_SIZE}"
            )
        if vit.HIDDEN_DIM % vit.NUM_HEADS:
            raise ValueError(
                f"MODEL.CLASSIFIER.VIT.HIDDEN_DIM={vit.HIDDEN_DIM} is not a multiple of "
                f"MODEL.CLASSIFIER.VIT.NUM_HEADS={vit.NUM_HEADS}"
            )
        return {
            "image_size": size,
            "patch_size": vit.PATCH_SIZE,
            "num_layers": vit.NUM_LAYERS,
            "num_heads": vit.NUM_HEADS,
            "hidden_dim": vit.HIDDEN_DIM,
            "mlp_dim": vit.MLP_DIM,
            "num_classes": num_classes,
            **_base_kwargs(cfg),
        }

    def logits(self, x):
        return self.classifier(self.backbone.bottom_up(x))


def build_classifier(cfg, num_classes: int) -> ImageClassifier:
    """
    Build ``MODEL.CLASSIFIER.NAME``, convert its layers by ``MODEL.BIO`` (the last layer by
    ``MODEL.BIO.PARTS.PREDICTOR``) and move it to ``MODEL.DEVICE``.

    Args:
        num_classes: outputs of the last layer.
    """
    name = cfg.MODEL.CLASSIFIER.NAME
    if name not in CLASSIFIER_REGISTRY:
        raise ValueError(
            f"MODEL.CLASSIFIER.NAME={name!r} is not a registered classifier; registered: "
            f"{sorted(k for k, _ in CLASSIFIER_REGISTRY)}"
        )
    if num_classes < 1:
        raise ValueError(f"A classifier needs at least one class, got num_classes={num_classes}")
    model = convert_from_cfg(CLASSIFIER_REGISTRY.get(name)(cfg, num_classes=num_classes), cfg)
    device = torch.device(cfg.MODEL.DEVICE)
    model.to(device)
    if cfg.MODEL.CLASSIFIER.CHANNELS_LAST and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model

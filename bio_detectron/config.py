"""Config keys of bio_detectron, added to a detectron2 config by :func:`add_bio_config`."""
from detectron2.config import CfgNode as CN

__all__ = ["add_bio_config"]


def add_bio_config(cfg):
    """
    Add the ``MODEL.BIO`` keys (learning rules) to a detectron2 config, in place.
    Values are validated when the model is built (see ``bio_detectron.modeling.parts``).
    """
    _C = cfg
    _C.MODEL.BIO = CN()
    # The learning rule of every Conv2d/Linear of the model, unless a part below overrides it.
    # One of bio_detectron.available_rules(): "backprop", "sign_symmetry",
    # "sign_symmetry_random_magnitude", "feedback_alignment", "feedback_alignment_signed_init".
    _C.MODEL.BIO.RULE = "backprop"
    # Per-part rules; "" inherits MODEL.BIO.RULE. Parts are found by module name:
    _C.MODEL.BIO.PARTS = CN()
    # the backbone's bottom-up network (ResNet: backbone.bottom_up.*, or backbone.{stem,resN}.*).
    _C.MODEL.BIO.PARTS.BACKBONE = ""
    # the rest of the backbone: FPN lateral/output convs and its extra levels (P6/P7).
    _C.MODEL.BIO.PARTS.FPN = ""
    # the head towers: RetinaNet's cls/box subnets, the RPN conv, ROI box/mask heads.
    _C.MODEL.BIO.PARTS.HEAD = ""
    # the final prediction layers: cls_score, bbox_pred, RPN objectness_logits/anchor_deltas,
    # mask_fcn_logits, and a classifier's last linear layer.
    _C.MODEL.BIO.PARTS.PREDICTOR = ""
    # Seed of the fixed feedback weights. With a layer's module name it decides that layer's B,
    # so every process of a distributed run makes the same B without communication.
    _C.MODEL.BIO.SEED = 0
    # Scale s of the feedback weight, for every rule but backprop: "kaiming"
    # (sqrt(2/(k*k*C_out)) for a conv, 1/sqrt(fan_in) for a linear layer: the seed paper's code),
    # "mean_abs" (mean |W| of the layer; recomputed each step by sign_symmetry), or a positive
    # number written as a string, e.g. "0.01".
    _C.MODEL.BIO.SCALE = "kaiming"
    # Regexes (re.search) on full module names (as in model.named_modules()) of layers that keep
    # plain autograd. Each must match at least one Conv2d/Linear of the model.
    _C.MODEL.BIO.EXCLUDE = []
    # The meta-architecture that MODEL.META_ARCHITECTURE "BioPlausible" builds and converts,
    # e.g. "GeneralizedRCNN" or "RetinaNet" (any name in META_ARCH_REGISTRY).
    _C.MODEL.BIO.BASE_META_ARCHITECTURE = "GeneralizedRCNN"
    # Convert BatchNorm to SyncBatchNorm when training with more than one CUDA process.
    _C.MODEL.BIO.SYNC_BN = True

    # The RetinaNet head BioRetinaNet builds: a name in RETINANET_HEAD_REGISTRY.
    _C.MODEL.RETINANET.HEAD_NAME = "BioRetinaNetHead"

    _C.MODEL.BIO.ALIGNMENT = CN()
    # Log alignment metrics of every converted layer every PERIOD iterations (0: off, no cost).
    _C.MODEL.BIO.ALIGNMENT.PERIOD = 0

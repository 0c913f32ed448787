"""Config keys of bio_detectron, added to a detectron2 config by :func:`add_bio_config`."""

import ast
import numbers

import torch
from detectron2.config import CfgNode as CN

from .core.mirror import MIRROR_DEFAULTS

__all__ = [
    "add_bio_config",
    "add_classification_config",
    "check_device",
    "check_model_device",
]

# Keys whose value is a string or a number: a number from a YAML file or a command line
# (``MODEL.BIO.SCALE 0.01``) is kept as its string, so the key keeps one type.
STRING_OR_NUMBER_KEYS = ("MODEL.BIO.SCALE",)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _decoded(value):
    """A value as yacs reads it: a string is a Python literal where it parses as one."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _as_string(value):
    """
    A number (or a string that reads as one), as a value yacs decodes to the number's string:
    yacs reads every merged string as a Python literal where it parses as one, from files too.
    """
    number = _decoded(value)
    return repr(repr(number)) if _number(number) else value


class _NumbersAsStrings:
    """
    One merge method of one config (``merge_from_list`` or ``merge_from_other_cfg``, which
    ``merge_from_file`` calls): its class's, except that a number given for a key of
    :data:`STRING_OR_NUMBER_KEYS` is handed on as its string. An object, not a bound method, so
    that copies and pickles of the config keep it, bound to themselves.
    """

    def __init__(self, cfg, name: str):
        self.cfg, self.name = cfg, name

    def __call__(self, other):
        if self.name == "merge_from_list":
            other = list(other)
            for i in range(0, len(other) - 1, 2):
                if other[i] in STRING_OR_NUMBER_KEYS:
                    other[i + 1] = _as_string(other[i + 1])
        else:
            for full_key in STRING_OR_NUMBER_KEYS:
                *path, key = full_key.split(".")
                node = other
                for part in path:
                    node = node.get(part) if isinstance(node, dict) else None
                if isinstance(node, dict) and key in node:
                    node[key] = _as_string(node[key])
        return getattr(type(self.cfg), self.name)(self.cfg, other)


def _accept_numbers(cfg):
    """
    Let ``cfg`` take a number for the keys of :data:`STRING_OR_NUMBER_KEYS`, whose defaults are
    strings. yacs checks that a merged value has the default's type, in a module function with no
    per-key seam; rather than replace that function for every config of the process, this config
    alone gets merge methods of its own, as instance attributes (yacs keeps its own flags in the
    instance ``__dict__`` too), which hand yacs the number's string. The config keeps its class.
    tests/test_detection.py checks numbers from files and command lines, copies and pickles, and
    that yacs's own check is untouched.
    """
    for name in ("merge_from_list", "merge_from_other_cfg"):
        cfg.__dict__[name] = _NumbersAsStrings(cfg, name)


def add_bio_config(cfg):
    """
    Add the ``MODEL.BIO`` keys (learning rules) to a detectron2 config, in place.
    Values are validated when the model is built (see ``bio_detectron.modeling.parts``). The
    config's merges take a number for ``MODEL.BIO.SCALE`` from a file or a command line.
    """
    _accept_numbers(cfg)
    _C = cfg
    _C.MODEL.BIO = CN()
    # The learning rule of every Conv2d/Linear of the model, unless a part below overrides it.
    # One of bio_detectron.available_rules(): "backprop", "sign_symmetry",
    # "sign_symmetry_random_magnitude", "feedback_alignment", "feedback_alignment_signed_init",
    # "kolen_pollack", "weight_mirror" (see MODEL.BIO.MIRROR), "direct_feedback_alignment" (its
    # error is the output gradient of the PREDICTOR part's layers, whatever their rule).
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
    # "mean_abs" (mean |W| of the layer; recomputed each step by sign_symmetry), "rms" (the root
    # mean square of W: sign(W) * s then has W's norm), or a positive number (0.01, or "0.01";
    # kept as a string).
    _C.MODEL.BIO.SCALE = "kaiming"
    # Regexes (re.search) on full module names (as in model.named_modules()) of layers that keep
    # plain autograd. Each must match at least one convolution/Linear of the model.
    _C.MODEL.BIO.EXCLUDE = []
    # A layer the rule cannot act on (a conv subclass that computes its convolution itself, the
    # out_proj of an nn.MultiheadAttention that is excluded, a weight shared with another
    # module): "error" stops the build naming each such layer; "skip" leaves them on plain
    # autograd with a warning naming each (rules_of reports "none" for them).
    _C.MODEL.BIO.UNSUPPORTED = "error"
    # The meta-architecture that MODEL.META_ARCHITECTURE "BioPlausible" builds and converts,
    # e.g. "GeneralizedRCNN" or "RetinaNet" (any name in META_ARCH_REGISTRY).
    _C.MODEL.BIO.BASE_META_ARCHITECTURE = "GeneralizedRCNN"
    # Convert BatchNorm to SyncBatchNorm when training with more than one CUDA process.
    _C.MODEL.BIO.SYNC_BN = True

    # torch.compile the model before its first training step (bio_detectron.compile_model), after
    # weights are loaded and the model is wrapped for DDP: for detectors the parts with static
    # shapes (the backbone with its FPN, the RetinaNet/FCOS head, the RPN head; losses, matching
    # and post-processing stay eager), for classifiers the whole model. Checkpoints keep the stock
    # keys. A platform that cannot compile (no C++ compiler for the CPU, no Triton for CUDA) is an
    # error naming this key, not an eager run.
    _C.MODEL.BIO.COMPILE = CN()
    _C.MODEL.BIO.COMPILE.ENABLED = False
    # torch.compile's mode: "default", "reduce-overhead" (CUDA graphs on CUDA), "max-autotune",
    # "max-autotune-no-cudagraphs".
    _C.MODEL.BIO.COMPILE.MODE = "default"
    # torch.compile's backend: "inductor"; "aot_eager" or "eager" to debug a graph.
    _C.MODEL.BIO.COMPILE.BACKEND = "inductor"

    # The RetinaNet head BioRetinaNet builds: a name in RETINANET_HEAD_REGISTRY.
    _C.MODEL.RETINANET.HEAD_NAME = "BioRetinaNetHead"

    _C.MODEL.BIO.ALIGNMENT = CN()
    # Log alignment metrics of every converted layer every PERIOD iterations (0: off, no cost).
    _C.MODEL.BIO.ALIGNMENT.PERIOD = 0

    # The weight mirror of the "weight_mirror" rule (Akrout et al. 2019, section 4), run by the
    # trainers: B <- (1 - DECAY) * B + LR * corr(x, y), with noise x ~ N(0, NOISE_STD^2) shaped
    # like the layer's input and y = W x; B follows (LR * NOISE_STD^2 / DECAY) * W, up to noise of
    # about sqrt(DECAY / (2 - DECAY) / SAMPLES_PER_INPUT) x |W|. The defaults are
    # bio_detectron.core.mirror.MIRROR_DEFAULTS, those of WeightMirrorHook.
    _C.MODEL.BIO.MIRROR = CN()
    # A mirror step of every weight_mirror layer after every PERIOD-th iteration's optimizer step
    # (0: none). With the defaults a step costs 0.5-1 training step, so 20 adds 2-5 %.
    _C.MODEL.BIO.MIRROR.PERIOD = MIRROR_DEFAULTS["period"]
    # sigma, the standard deviation of the noise (> 0).
    _C.MODEL.BIO.MIRROR.NOISE_STD = MIRROR_DEFAULTS["std"]
    # eta_B, the mirror's learning rate (> 0).
    _C.MODEL.BIO.MIRROR.LR = MIRROR_DEFAULTS["lr"]
    # lambda_B, the mirror's decay of B per step, in [0, 1]: B averages the last ~1/DECAY steps'
    # correlations; smaller is less noisy but slower to follow W.
    _C.MODEL.BIO.MIRROR.DECAY = MIRROR_DEFAULTS["decay"]
    # Noise samples per layer and step (each of the spatial size of the layer's training input);
    # 0: per layer, the fewest that give SAMPLES_PER_INPUT (below).
    _C.MODEL.BIO.MIRROR.NOISE_BATCH = MIRROR_DEFAULTS["noise_batch"]
    # With NOISE_BATCH 0: noise products summed per weight and step, in units of the layer's
    # fan-in (> 0). One step's estimate of W is then off by about 1/sqrt(SAMPLES_PER_INPUT) x |W|
    # in every layer: layers on small maps (ResNet's res5, P6/P7) get many samples, cheap there.
    _C.MODEL.BIO.MIRROR.SAMPLES_PER_INPUT = MIRROR_DEFAULTS["samples_per_input"]
    # Mirror steps after the first iteration (iteration 0; not on resume), so that B is aligned
    # from the start, as Akrout et al.'s released code mirrors before training (0: none; with
    # PERIOD also 0, B stays random, as in feedback alignment).
    _C.MODEL.BIO.MIRROR.INITIAL_STEPS = MIRROR_DEFAULTS["initial_steps"]

    # The optimizer of both trainers (bio_detectron.solver.build_bio_optimizer). The seed paper's
    # code (its train.py) applies it to every parameter but the last layer's, which has switches of
    # its own; the last layer is the "predictor" part (MODEL.BIO.PARTS.PREDICTOR: RetinaNet's
    # cls_score/bbox_pred, a classifier's last linear layer).
    _C.SOLVER.BIO = CN()
    # "SGD" (detectron2's SGD, the default) or "BatchManhattanSGD": the sign of each parameter's
    # mini-batch gradient replaces the gradient, then weight decay and momentum are added as in
    # SGD: g = sign(grad) + wd * W; v = momentum * v + g; W -= lr * v (the seed code's --bm).
    _C.SOLVER.BIO.OPTIMIZER = "SGD"
    # No sign change (the seed code's --nsc): a weight whose update would flip its sign (or make
    # it 0) is set to +-1e-10, keeping its sign. Biases (parameters named "bias") are left out.
    _C.SOLVER.BIO.NO_SIGN_CHANGE = False
    # The last layer: batch manhattan for it too (--lbm), no sign change for it too (--lnsc),
    # and its learning rate (--llr; 0: SOLVER.BASE_LR), which follows the same lr schedule.
    _C.SOLVER.BIO.LAST_LAYER_BATCH_MANHATTAN = False
    _C.SOLVER.BIO.LAST_LAYER_NO_SIGN_CHANGE = False
    _C.SOLVER.BIO.LAST_LAYER_LR = 0.0
    # Multiplies the weight decay of every parameter that steps by batch manhattan. Its step is
    # lr x (sign(grad) + decay x W): with batch manhattan's small lr (3e-4 in the shapes
    # configs) a decay shrinks W by lr x decay per step, some 70 times less than the same decay
    # under SGD's lr (0.02). SGD's lr / batch manhattan's lr gives the same shrink per step as
    # SGD's. 1: the seed code's step. Only with batch manhattan (an error otherwise).
    _C.SOLVER.BIO.BATCH_MANHATTAN_WEIGHT_DECAY_FACTOR = 1.0
    # Weight decay that follows the schedule's length. When > 0, SOLVER.WEIGHT_DECAY (and
    # WEIGHT_DECAY_NORM, WEIGHT_DECAY_BIAS) are the decays of runs of up to this many iterations,
    # and a longer run of SOLVER.MAX_ITER iterations uses them times
    # WEIGHT_DECAY_REFERENCE_ITER / MAX_ITER: lr x decay x iterations, how far the decay shrinks
    # the weights over the run, stays the same (bio_detectron.solver.schedule_weight_decay). It
    # is resolved against MAX_ITER as configured, before detectron2's SOLVER.REFERENCE_WORLD_SIZE
    # rescales lr and MAX_ITER. 0: the decays as given, whatever the length.
    _C.SOLVER.BIO.WEIGHT_DECAY_REFERENCE_ITER = 0


def add_classification_config(cfg):
    """
    Add the keys of image classification (``tools/train_imagenet.py``) to a config that already
    has :func:`add_bio_config`'s keys, in place. Existing detectron2 keys keep their meaning:
    ``MODEL.RESNETS.*``, ``MODEL.PIXEL_MEAN/STD``, ``INPUT.FORMAT``, ``SOLVER.*``,
    ``DATALOADER.NUM_WORKERS``, ``TEST.EVAL_PERIOD`` (see
    configs/ImageNet/Base-Classification.yaml).
    """
    _C = cfg
    _C.MODEL.CLASSIFIER = CN()
    # The classifier to build, a name in bio_detectron.modeling.classification.CLASSIFIER_REGISTRY:
    # "ResNetClassifier" (detectron2's ResNet, MODEL.RESNETS.*, + global pool + linear layer),
    # "AlexNet" (the seed paper's AlexNet with BatchNorm before every ReLU) or "ViTClassifier"
    # (torchvision's vision transformer, MODEL.CLASSIFIER.VIT.*).
    _C.MODEL.CLASSIFIER.NAME = "ResNetClassifier"
    # Number of classes; 0: the number of class folders of the dataset's train split (val split with
    # --eval-only). A positive value must equal that number.
    _C.MODEL.CLASSIFIER.NUM_CLASSES = 0
    # Keep activations in channels_last memory format (faster convolutions on recent GPUs).
    # CUDA only: a no-op when MODEL.DEVICE is "cpu".
    _C.MODEL.CLASSIFIER.CHANNELS_LAST = False
    # The size of "ViTClassifier" (torchvision's VisionTransformer; its image size is
    # INPUT.CLASSIFICATION.SIZE). vit_b_16's values are the defaults.
    _C.MODEL.CLASSIFIER.VIT = CN()
    # Side of the square patches, in pixels; INPUT.CLASSIFICATION.SIZE must be a multiple of it.
    _C.MODEL.CLASSIFIER.VIT.PATCH_SIZE = 16
    # Encoder blocks (attention, then MLP).
    _C.MODEL.CLASSIFIER.VIT.NUM_LAYERS = 12
    # Attention heads per block; HIDDEN_DIM must be a multiple of it.
    _C.MODEL.CLASSIFIER.VIT.NUM_HEADS = 12
    # Width of the tokens.
    _C.MODEL.CLASSIFIER.VIT.HIDDEN_DIM = 768
    # Width of the hidden layer of each block's MLP.
    _C.MODEL.CLASSIFIER.VIT.MLP_DIM = 3072
    # The rule of the last layer (the one named "classifier"): "backprop" here, as the seed
    # paper's code keeps the last layer on exact backprop whatever the rule of the others. Any
    # rule of MODEL.BIO.RULE is allowed; "" makes it follow MODEL.BIO.RULE.
    _C.MODEL.BIO.PARTS.PREDICTOR = "backprop"

    # Root of an ImageNet-style folder: <root>/train/<class>/*.JPEG and <root>/val/<class>/*.
    # "": the environment variable IMAGENET_ROOT; if that is unset too, the embedded generated
    # classification folder of DATASETS.GENERATED_CLASSIFICATION is used, and the log says so.
    _C.DATASETS.IMAGENET_ROOT = ""
    # The generated folder used when neither DATASETS.IMAGENET_ROOT nor $IMAGENET_ROOT is set:
    # "shapes" (10 drawn shapes) or "photos" (the 10 classes of the photos detection set, one
    # object cut from a photograph per image), sized by DATASETS.SHAPES_CLASSIFICATION below.
    _C.DATASETS.GENERATED_CLASSIFICATION = "shapes"
    _C.DATASETS.SHAPES_CLASSIFICATION = CN()
    # Side of the generated square images, in pixels (>= 32).
    _C.DATASETS.SHAPES_CLASSIFICATION.IMAGE_SIZE = 64
    # Generated images per class (10 classes) in the train and val splits.
    _C.DATASETS.SHAPES_CLASSIFICATION.NUM_TRAIN_PER_CLASS = 100
    _C.DATASETS.SHAPES_CLASSIFICATION.NUM_VAL_PER_CLASS = 20

    _C.INPUT.CLASSIFICATION = CN()
    # Side of the square crops the network sees, in pixels (224 for ImageNet). Training takes a
    # random-resized crop of this size; evaluation resizes the short side to SIZE * 256 / 224 and
    # takes the centre crop of this size. AlexNet needs >= 63.
    _C.INPUT.CLASSIFICATION.SIZE = 224
    # Smallest area fraction of the image a random-resized training crop covers, in (0, 1].
    _C.INPUT.CLASSIFICATION.MIN_SCALE = 0.08
    # Flip training images horizontally with probability 0.5.
    _C.INPUT.CLASSIFICATION.HFLIP = True

    # An image that cannot be read or decoded: False stops with an error naming the file; True
    # skips it (the batch is one image smaller), logs its name and counts it in the metrics
    # ("data/skipped_images").
    _C.DATALOADER.SKIP_UNREADABLE = False

    # Training length in epochs over the train split, used when SOLVER.MAX_ITER is 0. An epoch is
    # floor(#train images / SOLVER.IMS_PER_BATCH) iterations (the last partial batch is dropped).
    _C.SOLVER.EPOCHS = 90
    # Epochs at which the learning rate is multiplied by SOLVER.GAMMA (0.1 by default), increasing.
    # With SOLVER.MAX_ITER > 0 they keep their fraction of the run: step i happens at iteration
    # round(MAX_ITER * STEP_EPOCHS[i] / EPOCHS). SOLVER.STEPS is not used by classification.
    _C.SOLVER.STEP_EPOCHS = (30, 60)
    # Linear scaling: SOLVER.BASE_LR is the learning rate at this total batch size, and a run uses
    # lr = BASE_LR * SOLVER.IMS_PER_BATCH / LR_REFERENCE_BATCH (0.1 at 256 -> 0.4 at 1024).
    # 0: no scaling, the run uses BASE_LR as it is.
    _C.SOLVER.LR_REFERENCE_BATCH = 256


def check_device(device: str, key: str, cpu_choice: str) -> str:
    """
    Args:
        device: a torch device name from a config, e.g. "cuda" or "cpu".
        key: the config key it comes from, for the error, e.g. "MODEL.DEVICE".
        cpu_choice: how a run chooses the CPU instead, as typed on the command line, e.g.
            "MODEL.DEVICE cpu".

    Returns:
        str: ``device``.

    Raises:
        ValueError: ``device`` names CUDA and torch finds none: a broken CUDA install or a CPU
            machine does not train on the CPU quietly.
    """
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"{key}={device!r}, but CUDA is not available here (torch.cuda.is_available() is "
            f"False: no GPU, or a PyTorch build or driver without CUDA). To train on the CPU, "
            f"add {cpu_choice}"
        )
    return device


def check_model_device(cfg):
    """:func:`check_device` of a yacs config's ``MODEL.DEVICE``."""
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE", "MODEL.DEVICE cpu")

"""Learning rules: how a layer's backward pass makes its feedback weight B from its weight W.

A rule only decides B. The input gradient of a converted layer is computed with B in place of W;
the weight and bias gradients are the ordinary ones, and every other module (BatchNorm, pooling,
activations) keeps exact backprop. Adding a rule is adding one registered class.

The rules and their names follow the code of Xiao, Chen, Liao & Poggio (2018), arXiv 1811.03567;
``kolen_pollack`` and ``weight_mirror`` follow Akrout, Wilson, Humphreys, Lillicrap & Tweed (2019),
*Deep learning without weight transport*, NeurIPS (arXiv 1904.05391).
"""

import inspect
import math
import numbers
import zlib
from typing import Dict, Optional, Tuple

import torch

__all__ = [
    "RULE_REGISTRY",
    "LearningRule",
    "RuleRegistry",
    "ScaledRule",
    "StoredFeedbackRule",
    "available_rules",
    "build_rule",
    "feedback_scale",
    "layer_seed",
    "parse_scale",
]


class RuleRegistry:
    """
    Learning rules by name: subclasses of :class:`LearningRule`, registered under their ``name``
    attribute with ``@RULE_REGISTRY.register()``. (The core needs nothing but PyTorch, so this is
    not fvcore's ``Registry``, though it reads the same: ``register``, ``get``, ``in``, iteration
    over ``(name, class)`` pairs.)
    """

    def __init__(self, name: str):
        self._name = name
        self._obj_map: Dict[str, type] = {}

    def register(self, obj=None):
        if obj is None:
            return self.register
        if not obj.name:
            raise ValueError(f"{obj.__name__} has no name to register under")
        if obj.name in self._obj_map:
            raise ValueError(f"a rule named {obj.name!r} is registered already in {self._name}")
        self._obj_map[obj.name] = obj
        return obj

    def get(self, name: str) -> type:
        if name not in self._obj_map:
            raise KeyError(
                f"no rule named {name!r} in {self._name}; available: {sorted(self._obj_map)}"
            )
        return self._obj_map[name]

    def __contains__(self, name) -> bool:
        return name in self._obj_map

    def __iter__(self):
        return iter(self._obj_map.items())

    def __repr__(self):
        return f"RuleRegistry({self._name!r}: {sorted(self._obj_map)})"


RULE_REGISTRY = RuleRegistry("BIO_RULE")

# Named ways to choose the scale s of a feedback weight (any positive number is allowed as well).
#   kaiming:  sqrt(2 / (W.shape[0] * prod(kernel))) for a conv of any dimension, transposed or not
#             (sqrt(2 / (k_h * k_w * C_out)) for a Conv2d: the seed paper's code), and
#             1 / sqrt(fan_in) for a linear layer.
#   mean_abs: mean |W| of the layer, so that |B| follows the size of W.
#   rms:      the root mean square of W, sqrt(mean W^2), so that B has W's Frobenius norm: for
#             sign(W) * s, mean_abs gives B about 0.78 of W's norm in every layer of a trained
#             detector, and a backward pass through n such layers about 0.78^n of backprop's size.
# Rules whose B changes with W recompute mean_abs and rms at every backward pass; rules with a
# feedback tensor read W when they make it.
SCALES = ("kaiming", "mean_abs", "rms")


def feedback_scale(scale, weight: torch.Tensor):
    """
    Args:
        scale (str or float): one of :data:`SCALES` or a positive number.
        weight (Tensor): a conv weight (W.shape[0], W.shape[1], *kernel) of any dimension, or a
            linear weight (out_features, in_features).

    Returns:
        float or 0-dim Tensor: the scale s for this weight.
    """
    if scale == "kaiming":
        if weight.dim() > 2:
            return math.sqrt(2.0 / (weight.shape[0] * math.prod(weight.shape[2:])))
        return 1.0 / math.sqrt(weight.shape[1])
    if scale == "mean_abs":
        return weight.detach().abs().mean()
    if scale == "rms":
        return torch.linalg.vector_norm(weight.detach()) / math.sqrt(weight.numel())
    return float(scale)


def parse_scale(value):
    """
    Validate a scale given in Python, a YAML config or on a command line.

    Args:
        value: one of :data:`SCALES`, a positive number, or a positive number written as a
            string (``"0.01"``).

    Returns:
        str or float: the scale name or the number.
    """
    if isinstance(value, str) and value in SCALES:
        return value
    number = -1.0
    if isinstance(value, (numbers.Real, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(
            f"scale={value!r} is not allowed; use one of {SCALES} or a positive number"
        )
    return number


def layer_seed(seed: int, name: str) -> int:
    """
    The seed of one layer's fixed feedback: a function of the run's seed and the layer's module
    name only, so that every process of a distributed run makes the same B without communication,
    whatever order the layers are converted in.
    """
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)


class LearningRule:
    """
    Base class of learning rules. A rule is a small, stateless object holding its options. Two
    tensors are named after what they are:

    * **B, the feedback weight**: what the backward pass uses in place of W to propagate the
      error, made by :meth:`feedback_weight` at every backward pass (a layer's
      ``feedback_weight()`` shows it);
    * **the feedback tensor**: what a rule keeps per layer to make B from (a fixed random B, the
      B that Kolen-Pollack trains), stored in the layer as ``feedback`` (a buffer, or a parameter
      when ``feedback_kind`` is "parameter"), made by :meth:`init_feedback`, so that it follows
      the layer to a device, across processes and into checkpoints.

    When the feedback tensor is made (see :class:`~bio_detectron.core.layers.FeedbackLayer`):
    whenever the weights it describes are set, i.e. at conversion, when pretrained weights are
    loaded, and when DistributedDataParallel has given every process rank 0's weights, unless a
    checkpoint made by the same rule restored it; never in a forward pass.

    Attributes:
        name (str): the name the rule is registered under.
        feedback_kind (str or None): how the layer keeps the feedback tensor: None (the rule keeps
            none), "buffer" (never touched by optimizers) or "parameter" (trained by the
            optimizer like W; the rule's backward gives it a gradient, :meth:`feedback_grad`).
    """

    name = ""
    feedback_kind: Optional[str] = None
    # True: a layer's input gradient is not made from its output gradient; :meth:`bind` gives an
    # object whose input_gradient(input, feedback) the autograd functions call (core/dfa.py).
    error_feedback = False

    def init_feedback(
        self, weight: torch.Tensor, generator: torch.Generator
    ) -> Optional[torch.Tensor]:
        """
        Make the feedback tensor of a layer.

        Args:
            weight (Tensor): the layer's weight W, detached, float32, on the CPU.
            generator (torch.Generator): a CPU generator seeded for this layer.

        Returns:
            Tensor or None: a tensor shaped like W, stored in the layer (``feedback``) and handed
            back to :meth:`feedback_weight`; None when the rule keeps none (``feedback_kind``
            None).
        """
        return None

    def feedback_weight(
        self, weight: torch.Tensor, feedback: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """
        Args:
            weight (Tensor): the layer's current weight W (as used in its forward pass).
            feedback (Tensor or None): the layer's feedback tensor (what :meth:`init_feedback`
                made), None for a rule that keeps none.

        Returns:
            Tensor: B, shaped and typed like W.
        """
        raise NotImplementedError

    def feedback_weight_parts(self, weight: torch.Tensor, feedback: Optional[torch.Tensor]):
        """
        B as a tensor and a scalar factor, for the backward pass: B = M * s. A rule whose B has
        such a factor returns a new tensor M (the caller may change it in place) and s, so that
        the layer applies s to whichever of M and the input gradient is smaller. The default is
        (B, None): no factor.

        Returns:
            (Tensor, float or 0-dim Tensor or None): M and s.
        """
        return self.feedback_weight(weight, feedback), None

    def bind(self, layer):
        """
        What a converted layer hands its autograd function and makes its feedback tensor with:
        the rule itself, unless the rule needs more than the layer's own tensors.
        """
        return self

    def feedback_shape(self, weight: torch.Tensor) -> tuple:
        """The shape of the feedback tensor :meth:`init_feedback` makes: W's."""
        return tuple(weight.shape)

    def feedback_grad(self, grad_weight: torch.Tensor) -> torch.Tensor:
        """
        For ``feedback_kind == "parameter"``: the gradient the feedback tensor receives, given
        W's gradient (computed by the layer's backward in any case).
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no trained feedback tensor")

    def options(self) -> dict:
        """The options this rule was built with (its constructor's named arguments)."""
        return {k: getattr(self, k) for k in _option_names(type(self))}

    def tag(self) -> str:
        """
        The rule and options that decide its state, e.g. "feedback_alignment(scale='mean_abs')":
        saved with a checkpoint's ``feedback`` tensors so that a load can tell whether they were
        made by this rule.
        """
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{self.name}({opts})"

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def _option_names(cls) -> list:
    """The named arguments of a rule class's constructor (none for object's)."""
    if cls.__init__ is object.__init__:
        return []
    params = inspect.signature(cls.__init__).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.name != "self" and p.kind in kinds]


@RULE_REGISTRY.register()
class Backprop(LearningRule):
    """B = W: exact backprop through the same code path, the control for every other rule."""

    name = "backprop"

    def feedback_weight(self, weight, feedback):
        return weight


class ScaledRule(LearningRule):
    """A rule with one option, ``scale``: see :func:`feedback_scale`."""

    def __init__(self, scale="kaiming"):
        self.scale = parse_scale(scale)


def _random_feedback(weight, generator, scale):
    """B ~ N(0, s^2), shaped like W: the random B of feedback alignment and the start of the rules
    that learn B."""
    r = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
    return r.mul_(feedback_scale(scale, weight))


@RULE_REGISTRY.register()
class SignSymmetry(ScaledRule):
    """B = sign(W) * s, recomputed as W changes (Liao, Leibo & Poggio 2016; Xiao et al. 2018)."""

    name = "sign_symmetry"

    def feedback_weight(self, weight, feedback):
        sign, scale = self.feedback_weight_parts(weight, feedback)
        return sign.mul_(scale)

    def feedback_weight_parts(self, weight, feedback):
        if self.scale != "mean_abs":
            return torch.sign(weight), feedback_scale(self.scale, weight)
        if torch.compiler.is_compiling():
            # One op in a compiled graph, which Inductor calls rather than fuses: it fused this
            # reduction over W into kernels of unrelated reductions over activations (BatchNorm's
            # backward), and a compiled ResNet-18 step took 4-12 % longer than with ATen's kernels.
            return torch.ops.bio_detectron.sign_and_mean_abs(weight)
        return _sign_and_mean_abs(weight)


def _sign_and_mean_abs(weight: torch.Tensor):
    """sign(W), and mean |W| (0-dim)."""
    sign = torch.sign(weight)
    if weight.dtype in (torch.float32, torch.float64):
        # mean |W| = W . sign(W) / n: one dot product over the sign just made, instead of abs() (a
        # copy of W) and a mean. (Not for bfloat16/float16 weights under autocast: a CPU dot
        # product in bfloat16 was 36x slower than abs().mean().)
        return sign, torch.dot(weight.reshape(-1), sign.reshape(-1)) / weight.numel()
    return sign, weight.abs().mean()


@torch.library.custom_op("bio_detectron::sign_and_mean_abs", mutates_args=())
def _sign_and_mean_abs_op(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return _sign_and_mean_abs(weight)


@_sign_and_mean_abs_op.register_fake
def _(weight):
    return torch.empty_like(weight), weight.new_empty(())


@RULE_REGISTRY.register()
class SignSymmetryRandomMagnitude(ScaledRule):
    """B = |R| * sign(W): the signs of W with fixed random magnitudes, R ~ N(0, s^2)."""

    name = "sign_symmetry_random_magnitude"
    feedback_kind = "buffer"

    def init_feedback(self, weight, generator):
        return _random_feedback(weight, generator, self.scale).abs_()

    def feedback_weight(self, weight, feedback):
        return torch.sign(weight).mul_(feedback.to(weight.dtype))


class StoredFeedbackRule(ScaledRule):
    """
    A rule whose B is its feedback tensor, which starts random, B ~ N(0, s^2) (the base of
    feedback alignment, Kolen-Pollack and the weight mirror: they differ in what, if anything,
    changes B afterwards).
    """

    feedback_kind = "buffer"

    def init_feedback(self, weight, generator):
        return _random_feedback(weight, generator, self.scale)

    def feedback_weight(self, weight, feedback):
        return feedback.to(weight.dtype)


@RULE_REGISTRY.register()
class FeedbackAlignment(StoredFeedbackRule):
    """B fixed random, B ~ N(0, s^2), never updated (Lillicrap et al. 2016)."""

    name = "feedback_alignment"


@RULE_REGISTRY.register()
class FeedbackAlignmentSignedInit(StoredFeedbackRule):
    """B = sign(W0) * s, then fixed, W0 the weights training starts from: sign-symmetric at first,
    drifting as W learns."""

    name = "feedback_alignment_signed_init"

    def init_feedback(self, weight, generator):
        return torch.sign(weight).mul_(feedback_scale(self.scale, weight))


@RULE_REGISTRY.register()
class KolenPollack(StoredFeedbackRule):
    """
    B starts random like feedback_alignment's, B ~ N(0, s^2), and is then trained like W: it is a
    parameter whose gradient is exactly W's weight gradient, so the optimizer gives it W's update
    and weight decay (Kolen & Pollack 1994; Akrout et al. 2019, eqs. 16-17: dW = -lr*grad - wd*W,
    dB = -lr*grad - wd*B). W - B then only decays, by (1 - lr*wd) per plain SGD step, and the angle
    between W and B goes to 0 when weight decay > 0; B needs no access to W.
    """

    name = "kolen_pollack"
    feedback_kind = "parameter"

    def feedback_grad(self, grad_weight):
        # A tensor of its own: W's and B's .grad must not alias (gradient clipping, DDP buckets
        # and optimizers may change a .grad in place).
        return grad_weight.clone()


@RULE_REGISTRY.register()
class WeightMirror(StoredFeedbackRule):
    """
    B starts random like feedback_alignment's, B ~ N(0, s^2), and learns from the layer's own
    forward pass on noise, without reading W (Akrout et al. 2019, section 4): every few iterations
    a mirror step draws noise x ~ N(0, sigma^2) of the layer's input shape, computes y = W x and
    sets B <- (1 - decay) * B + lr * corr(x, y). As E[corr(x, y)] = sigma^2 * W, B follows
    (lr * sigma^2 / decay) * W. The mirror step is not part of the backward pass: the training hook
    :class:`bio_detectron.engine.WeightMirrorHook` runs it (``MODEL.BIO.MIRROR.*``); without it, B
    stays the random one of feedback alignment.
    """

    name = "weight_mirror"


def available_rules():
    """
    Returns:
        list[str]: the names of all registered rules, sorted.
    """
    return sorted(name for name, _ in RULE_REGISTRY)


def build_rule(rule, **options) -> LearningRule:
    """
    Args:
        rule (str or LearningRule): a registered rule name, or a rule object (returned as is).
        options: the rule's options, e.g. ``scale="mean_abs"``.

    Returns:
        LearningRule
    """
    if isinstance(rule, LearningRule):
        if options:
            raise ValueError(f"options {sorted(options)} given with a built rule {rule!r}")
        return rule
    if not isinstance(rule, str) or rule not in RULE_REGISTRY:
        raise ValueError(f"unknown learning rule {rule!r}; available: {available_rules()}")
    cls = RULE_REGISTRY.get(rule)
    allowed = _option_names(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"learning rule {rule!r} has no option(s) {unknown}; its options are {allowed}"
        )
    return cls(**options)

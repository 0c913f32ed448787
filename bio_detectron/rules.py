"""Learning rules: how a layer's backward pass makes its feedback weight B from its weight W.

A rule only decides B. The input gradient of a converted layer is computed with B in place of W;
the weight and bias gradients are the ordinary ones, and every other module (BatchNorm, pooling,
activations) keeps exact backprop. Adding a rule is adding one registered class.

The rules and their names follow the code of Xiao, Chen, Liao & Poggio (2018), arXiv 1811.03567.
"""
import inspect
import math
import numbers
import zlib
from typing import Optional

import torch
from fvcore.common.registry import Registry

__all__ = [
    "RULE_REGISTRY",
    "LearningRule",
    "available_rules",
    "build_rule",
    "feedback_scale",
    "layer_seed",
]



class _RuleRegistry(Registry):
    """A registry whose entries are named by their ``name`` attribute, not their class name."""

    def register(self, obj=None):
        if obj is None:
            return self.register
        self._do_register(obj.name, obj)
        return obj


RULE_REGISTRY = _RuleRegistry("BIO_RULE")
RULE_REGISTRY.__doc__ = """
Registry for learning rules: subclasses of :class:`LearningRule`, registered under their ``name``
with ``@RULE_REGISTRY.register()``.
"""

# Named ways to choose the scale s of a feedback weight (any positive number is allowed as well).
#   kaiming:  sqrt(2 / (k_h * k_w * C_out)) for a conv, 1 / sqrt(fan_in) for a linear layer,
#             the choice of the seed paper's code.
#   mean_abs: mean |W| of the layer, so that |B| follows the size of W. Rules whose B changes with W
#             recompute it at every backward pass; fixed rules read W once, at conversion.
SCALES = ("kaiming", "mean_abs")


def feedback_scale(scale, weight: torch.Tensor):
    """
    Args:
        scale (str or float): one of :data:`SCALES` or a positive number.
        weight (Tensor): a conv weight (C_out, C_in/groups, k_h, k_w) or a linear weight
            (out_features, in_features).

    Returns:
        float or 0-dim Tensor: the scale s for this weight.
    """
    if scale == "kaiming":
        if weight.dim() == 4:
            c_out, _, k_h, k_w = weight.shape
            return math.sqrt(2.0 / (k_h * k_w * c_out))
        return 1.0 / math.sqrt(weight.shape[1])
    if scale == "mean_abs":
        return weight.detach().abs().mean()
    return float(scale)


def layer_seed(seed: int, name: str) -> int:
    """
    The seed of one layer's fixed feedback: a function of the run's seed and the layer's module
    name only, so that every process of a distributed run makes the same B without communication,
    whatever order the layers are converted in.
    """
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)


class LearningRule:
    """
    Base class of learning rules. A rule is a small, stateless object holding its options; the
    state a rule needs (a fixed random B, say) lives in the layer as a buffer made by
    :meth:`init_feedback`, so that it follows the layer to a device and into checkpoints.

    Attributes:
        name (str): the name the rule is registered under.
        fixed (bool): True when B is made once, at conversion, and stored in the layer.
    """

    name = ""
    fixed = False

    def init_feedback(self, weight: torch.Tensor, generator: torch.Generator) -> Optional[torch.Tensor]:
        """
        Make the rule's state for a layer at conversion.

        Args:
            weight (Tensor): the layer's weight W.
            generator (torch.Generator): a CPU generator seeded for this layer.

        Returns:
            Tensor or None: a tensor shaped like W, stored in the layer (buffer ``feedback``) and
            handed back to :meth:`feedback`; None when the rule keeps no state.
        """
        return None

    def feedback(self, weight: torch.Tensor, state: Optional[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            weight (Tensor): the layer's current weight W (as used in its forward pass).
            state (Tensor or None): what :meth:`init_feedback` returned for this layer.

        Returns:
            Tensor: B, shaped and typed like W.
        """
        raise NotImplementedError

    def options(self) -> dict:
        """The options this rule was built with (its constructor's arguments)."""
        params = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in params if k != "self"}

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def _check_scale(scale):
    ok = scale in SCALES or (
        isinstance(scale, numbers.Real) and not isinstance(scale, bool) and scale > 0
    )
    if not ok:
        raise ValueError(f"scale={scale!r} is not allowed; use one of {SCALES} or a positive number")
    return scale


@RULE_REGISTRY.register()
class Backprop(LearningRule):
    """B = W: exact backprop through the same code path, the control for every other rule."""

    name = "backprop"

    def feedback(self, weight, state):
        return weight


class ScaledRule(LearningRule):
    """A rule with one option, ``scale``: see :func:`feedback_scale`."""

    def __init__(self, scale="kaiming"):
        self.scale = _check_scale(scale)


@RULE_REGISTRY.register()
class SignSymmetry(ScaledRule):
    """B = sign(W) * s, recomputed as W changes (Liao, Leibo & Poggio 2016; Xiao et al. 2018)."""

    name = "sign_symmetry"

    def feedback(self, weight, state):
        return torch.sign(weight).mul_(feedback_scale(self.scale, weight))


@RULE_REGISTRY.register()
class SignSymmetryRandomMagnitude(ScaledRule):
    """B = |R| * sign(W): the signs of W with fixed random magnitudes, R ~ N(0, s^2)."""

    name = "sign_symmetry_random_magnitude"
    fixed = True

    def init_feedback(self, weight, generator):
        r = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
        return r.abs_().mul_(feedback_scale(self.scale, weight.detach().cpu().float()))

    def feedback(self, weight, state):
        return torch.sign(weight).mul_(state.to(weight.dtype))


@RULE_REGISTRY.register()
class FeedbackAlignment(ScaledRule):
    """B fixed random, B ~ N(0, s^2), never updated (Lillicrap et al. 2016)."""

    name = "feedback_alignment"
    fixed = True

    def init_feedback(self, weight, generator):
        r = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
        return r.mul_(feedback_scale(self.scale, weight.detach().cpu().float()))

    def feedback(self, weight, state):
        return state.to(weight.dtype)


@RULE_REGISTRY.register()
class FeedbackAlignmentSignedInit(ScaledRule):
    """B = sign(W at conversion) * s, then fixed: sign-symmetric at first, drifting as W learns."""

    name = "feedback_alignment_signed_init"
    fixed = True

    def init_feedback(self, weight, generator):
        w = weight.detach().cpu().float()
        return torch.sign(w).mul_(feedback_scale(self.scale, w))

    def feedback(self, weight, state):
        return state.to(weight.dtype)


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
    allowed = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
    allowed = [k for k in allowed if k not in ("args", "kwargs")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"learning rule {rule!r} has no option(s) {unknown}; its options are {allowed}"
        )
    return cls(**options)

"""
The weight mirror (Akrout et al. 2019, section 4): a layer's feedback weight B learns from the
layer's own forward pass on noise, without reading W.

One mirror step of a layer with weight W draws noise x ~ N(0, sigma^2), i.i.d., shaped like the
layer's input, computes y = W x (the layer's convolution or linear map, without its bias: the bias
adds nothing to the expected correlation, only variance) and sets

    B <- (1 - decay) * B + lr * corr(x, y).

``corr(x, y)`` is what the layer's weight gradient would be for input x and output gradient y
(``y^T x`` for a linear layer, the weight-gradient convolution of x and y for a convolution),
divided by the number of (sample, position) pairs that contribute to each kernel offset, so that
E[corr(x, y)] = sigma^2 * W exactly, at the border of a zero-padded convolution too. B therefore
follows (lr * sigma^2 / decay) * W, and equals W's direction up to the noise of the estimate, which
shrinks with more noise samples (``noise_batch``, ``samples_per_input``) and a smaller ``decay`` (a
longer average): with ``samples_per_input`` s, one step's estimate is off by about 1/sqrt(s) x |W|,
and the average B by about sqrt(decay / (2 - decay) / s) x |W|.

Only PyTorch is needed here; :class:`bio_detectron.engine.WeightMirrorHook` (in
``engine/mirror_hook.py``) runs the steps during training.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .layers import FeedbackLayer
from .rules import WeightMirror, layer_seed

__all__ = [
    "MIRROR_DEFAULTS",
    "InputShapes",
    "mirror_correlation",
    "mirror_layers",
    "mirror_noise",
    "mirror_step",
    "noise_batch_for",
    "noise_shape",
]


# The mirror's default options: those of WeightMirrorHook and of MODEL.BIO.MIRROR (config.py reads
# them from here). period: a mirror step every N iterations (0: none); std, lr, decay: sigma,
# eta_B, lambda_B; noise_batch: samples per step (0: enough for samples_per_input);
# samples_per_input: noise products per weight and step, in units of the fan-in; initial_steps:
# mirror steps after iteration 0.
MIRROR_DEFAULTS = dict(
    period=20, std=1.0, lr=0.1, decay=0.1, noise_batch=0, samples_per_input=0.25, initial_steps=20
)


def mirror_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """
    Returns:
        list[(str, nn.Module)]: the converted layers of ``model`` that learn with the
        ``weight_mirror`` rule, named as in ``model.named_modules()``.
    """
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, FeedbackLayer) and isinstance(m.learning_rule, WeightMirror)
    ]


def _conv_arguments(layer: nn.Module):
    """
    The zero padding to apply to the noise first (F.pad's order), or None, and the arguments of
    ``aten.convolution`` for the layer: the layer's own, except that noise is always padded with
    zeros (reflected or circular copies of the noise would correlate with it).
    """
    n = len(layer.kernel_size)
    pad, padding = None, layer.padding
    if isinstance(layer, _ConvTransposeNd):
        transposed, output_padding = True, list(layer.output_padding)
    else:
        transposed, output_padding = False, [0] * n
        if layer.padding_mode != "zeros" or isinstance(padding, str):
            pads = layer._reversed_padding_repeated_twice  # last dim first, (before, after) each
            if all(pads[i] == pads[i + 1] for i in range(0, 2 * n, 2)):
                padding = tuple(pads[2 * (n - 1 - i)] for i in range(n))
            else:
                pad, padding = list(pads), (0,) * n
    args = (
        list(layer.stride),
        list(padding),
        list(layer.dilation),
        transposed,
        output_padding,
        layer.groups,
    )
    return pad, args


def _contributions_per_offset(kernel_size, spatial, pad, args, device) -> torch.Tensor:
    """
    For one sample: how many (input, output) position pairs each kernel offset connects, i.e. the
    weight gradient of a 1-channel convolution with the layer's geometry for an all-ones input and
    an all-ones output gradient. Shape: ``kernel_size``.
    """
    stride, padding, dilation, transposed, output_padding, _ = args
    geometry = (stride, padding, dilation, transposed, output_padding, 1)
    ones = torch.ones((1, 1, *spatial), device=device)
    if pad is not None:
        ones = F.pad(ones, pad)
    weight = torch.zeros((1, 1, *kernel_size), device=device)
    out = torch.ops.aten.convolution(ones, weight, None, *geometry)
    _, counts, _ = torch.ops.aten.convolution_backward(
        torch.ones_like(out), ones, weight, None, *geometry, [False, True, False]
    )
    return counts[0, 0]


@torch.no_grad()
def mirror_correlation(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """
    Args:
        layer: a convolution (any dimension, transposed or not), nn.Linear or an attention
            projection (:class:`~bio_detectron.core.attention.AttentionProjection`).
        x (Tensor): noise shaped like the layer's input: (N, C_in, *spatial) for a convolution,
            (*, in_features) for a linear layer.

    Returns:
        Tensor: corr(x, y) with y = W x, shaped like W: for a linear layer y^T x / (number of rows
        of x); for a convolution the weight-gradient convolution of x and y, each kernel offset
        divided by the number of (sample, position) pairs it sums over. For i.i.d. x of variance
        sigma^2, its expectation is sigma^2 * W.
    """
    weight = layer.weight.detach()
    x = x.to(weight.dtype)
    if not isinstance(layer, _ConvNd):  # nn.Linear, or an attention projection
        rows = x.reshape(-1, x.shape[-1])
        y = F.linear(rows, weight)
        return y.t().mm(rows).div_(rows.shape[0])
    pad, args = _conv_arguments(layer)
    spatial = x.shape[2:]
    if pad is not None:
        x = F.pad(x, pad)
    y = torch.ops.aten.convolution(x, weight, None, *args)
    _, corr, _ = torch.ops.aten.convolution_backward(
        y, x, weight, None, *args, [False, True, False]
    )
    counts = _contributions_per_offset(layer.kernel_size, spatial, pad, args, weight.device)
    # An offset that connects no position (a dilation wider than the input) gets 0, not 0/0.
    return corr.div_(counts.clamp(min=1).mul_(x.shape[0]).to(corr.dtype))


def _fan_in(layer: nn.Module) -> float:
    """How many inputs each output of the layer sums (per position, for a convolution)."""
    weight = layer.weight
    if isinstance(layer, _ConvTransposeNd):
        # Each output sums its group's inputs over the kernel offsets that land on it.
        return (
            weight.shape[0] / layer.groups * math.prod(layer.kernel_size) / math.prod(layer.stride)
        )
    return float(weight[0].numel())


def _positions_per_sample(layer: nn.Module, input_shape: Sequence[int]) -> float:
    """Products one noise sample adds to the correlation of a weight, averaged over offsets."""
    if not isinstance(layer, _ConvNd):
        return float(math.prod(input_shape[1:-1]))
    pad, args = _conv_arguments(layer)
    counts = _contributions_per_offset(layer.kernel_size, input_shape[2:], pad, args, "cpu")
    return float(counts.mean())


def noise_batch_for(layer: nn.Module, input_shape: Sequence[int], samples_per_input: float) -> int:
    """
    The smallest noise batch whose correlation sums, for each weight, at least
    ``samples_per_input`` x fan-in products of noise: one step's estimate of W then has a relative
    noise of about ``1 / sqrt(samples_per_input)`` in every layer. Layers on small feature maps
    (few positions per sample, large fan-in: the last stages of a ResNet, P6/P7) get more samples;
    they are cheap there, and without them their B would be mostly noise.
    """
    positions = max(_positions_per_sample(layer, input_shape), 1.0)
    return max(1, math.ceil(samples_per_input * _fan_in(layer) / positions))


def noise_shape(input_shape: Sequence[int], noise_batch: int) -> Tuple[int, ...]:
    """The shape of a layer's mirror noise: its input's, with ``noise_batch`` samples."""
    return (int(noise_batch),) + tuple(input_shape)[1:]


def mirror_noise(
    layer: nn.Module, shape: Sequence[int], std: float, generator: torch.Generator
) -> torch.Tensor:
    """Noise N(0, std^2) of ``shape``, on the layer's device and in its weight's dtype."""
    weight = layer.weight
    x = torch.randn(tuple(shape), generator=generator, device=weight.device, dtype=torch.float32)
    return x.mul_(std).to(weight.dtype)


@torch.no_grad()
def mirror_step(
    layer: nn.Module,
    input_shape: Sequence[int],
    *,
    std: float,
    lr: float,
    decay: float,
    noise_batch: int = 0,
    samples_per_input: float = 0.25,
    seed: int = 0,
    step=0,
    name: Optional[str] = None,
):
    """
    One mirror step of a ``weight_mirror`` layer, in place:
    B <- (1 - decay) * B + lr * corr(x, y), x ~ N(0, std^2) (see :func:`mirror_correlation`).

    The noise comes from a generator of its own, seeded by (``seed``, the layer's name, ``step``):
    the step draws nothing from the global random number generators, and the same step of a
    resumed run, or of another process, draws the same noise.

    Args:
        layer: a converted layer whose rule is ``weight_mirror``.
        input_shape: the shape of the layer's input in training.
        std, lr, decay: sigma, the mirror's learning rate and its decay.
        noise_batch: noise samples per step; 0: :func:`noise_batch_for` with
            ``samples_per_input``.
        samples_per_input: see :func:`noise_batch_for`.
        seed, step: decide the noise, with ``name`` (default: the layer's ``bio_name``); ``step``
            is any id of the step (int or str), e.g. the iteration.
        name: the layer's module name.
    """
    if not isinstance(getattr(layer, "learning_rule", None), WeightMirror):
        raise TypeError(
            f"{type(layer).__name__} {name or getattr(layer, 'bio_name', '')!r} does not learn "
            "with the weight_mirror rule; only its layers have a mirror"
        )
    name = layer.bio_name if name is None else name
    device = layer.weight.device
    generator = torch.Generator(device=device)
    generator.manual_seed(layer_seed(seed, f"{name}/mirror/{step}"))
    if noise_batch <= 0:
        noise_batch = noise_batch_for(layer, input_shape, samples_per_input)
    x = mirror_noise(layer, noise_shape(input_shape, noise_batch), std, generator)
    corr = mirror_correlation(layer, x)
    feedback = layer.feedback
    feedback.mul_(1.0 - decay).add_(corr.to(feedback.dtype), alpha=lr)


class InputShapes:
    """
    Records the shape of each layer's input in training forward passes. Between :meth:`start` and
    :meth:`stop` (or within ``with``), the first call of each layer in each step writes its
    input's shape into :attr:`shapes` (name -> shape), which keeps the last shape recorded;
    nothing else changes. A step begins at :meth:`new_step` (and at :meth:`start`): a layer
    called several times per step (a RetinaNet head conv, once per pyramid level) keeps the shape
    of its first call.

    The forward pre-hooks stay in place from :meth:`start` to :meth:`stop`, so that a compiled
    model is traced with them once and never recompiled for them.
    """

    def __init__(self, layers: Sequence[Tuple[str, nn.Module]]):
        self.layers = list(layers)
        self._handles = []
        # This step's shapes, and those of earlier steps. The hooks only add to an empty
        # dict of this step's, so that a compiled graph meets the same state at every step.
        self._step: Dict[str, Tuple[int, ...]] = {}
        self._earlier: Dict[str, Tuple[int, ...]] = {}

    @property
    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """layer name -> the shape of its input at its first call in the latest step it ran."""
        return {**self._earlier, **self._step}

    def _hook(self, name):
        def record(module, args):
            if name in self._step or not (module.training and torch.is_grad_enabled()):
                return
            if args and isinstance(args[0], torch.Tensor):
                self._step[name] = tuple(args[0].shape)

        return record

    def start(self):
        self.stop()
        self.new_step()
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.layers]

    def new_step(self):
        """The next forward passes are a new step: each layer's first call records again."""
        self._earlier.update(self._step)
        self._step.clear()

    def stop(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

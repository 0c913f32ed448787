#!/usr/bin/env python
"""
Time a training step (forward, backward, SGD) per learning rule against native backprop.

Rules and native autograd run in interleaved rounds, each in a new random order, so that drifts of
the machine's speed hit them alike; the figure reported per rule is the median over rounds of
(rule's step time / native step time measured in the same round), with a distribution-free 95 %
interval for that median (order statistics of the per-round ratios), so that a difference can be
read against the run's own noise.

    python tools/benchmark_rules.py [--batch 8] [--size 224] [--rounds 7] [--device cpu]
    python tools/benchmark_rules.py --arch resnet50 --batch 64 --amp --channels-last
    python tools/benchmark_rules.py --arch retinanet_R_50_FPN --batch 8 --size 800 \\
        --rules backprop sign_symmetry --scale mean_abs
    python tools/benchmark_rules.py --batch 16 --size 128 --compile    # + compiled rows

weight_mirror's B also learns from mirror steps run by a training hook every MODEL.BIO.MIRROR.PERIOD
iterations. Its row counts them at that period: each round also times one mirror step of all its
layers (noise of each layer's input shape in the training step), and the step time is taken as
(training step + mirror step / period). The mirror step is also shown on a row of its own.

Reference rows, so that a ratio can be read against what this machine can resolve (--no-reference
to leave them out): "native, second copy" is another copy of the unconverted model, timed like
a rule: its ratio is the method's own noise and bias, 1.00x in expectation. "bare
autograd.Function" is the unconverted model with every nn.Conv2d and nn.Linear run through a
minimal torch.autograd.Function that saves (input, W) and calls the same ATen convolution / matmul
backward as native autograd, with no rule code (same gradients, tested): the cost of a backward
defined in Python, which every rule's layers carry.

Compiled rows (--compile): every variant again, compiled as the trainers compile it
(bio_detectron.compile_model: the whole classifier; RetinaNet's backbone and head), each rule's
ratio taken to the compiled unconverted model ("native (compiled)"), in the same interleaved
rounds as the eager rows. Beside them (--no-plain-compile to leave them out), the unconverted model
and every rule under a plain ``torch.compile(model)``, the call every PyTorch user types, with the
same mode and backend and none of compile_model's choices: each rule's ratio is to the unconverted
model compiled the same way ("native (torch.compile)"), whose own ratio is to "native (compiled)".
Compiling happens in the warm-up steps, which are not timed.

Evaluation rows: the same model in eval mode under ``torch.no_grad()``, converted with each rule
(--eval-rules, default sign_symmetry) against the unconverted model; converted layers then run the
stock forward, so the goal is 1.00x within noise.

Models (--arch): torchvision's ResNet-18 / ResNet-50 (1000 classes, random images and labels);
"vit_tiny", torchvision's VisionTransformer (nn.MultiheadAttention in each layer) with patch 16
(--size 128: 64 tokens), 4 layers, 3 heads, hidden 96, MLP 192, 1000 classes; or the RetinaNet
R50-FPN of configs/COCO-Detection/retinanet_R_50_FPN_*_1x.yaml without weights, on a synthetic
batch: --batch random square images of --size px, 10 random boxes of the 80 COCO classes each.
"native" is the model before conversion; each rule converts a copy of it. direct_feedback_alignment
takes its error at the model's output layers: a classifier's last linear layer, RetinaNet's
cls_score and bbox_pred (the predictors the trainers choose). A rule whose conversion refuses the
model (a layer it does not act on) gets the row "refused: <reason>" instead of times. The bare
row leaves nn.MultiheadAttention's projections native (its forward reads their weights directly).

Where the extra time goes (--breakdown): every training row is also timed by phase, forward,
backward and optimizer step apart (on CUDA, with a synchronisation between forward and backward),
each phase's median printed with its difference to the row the ratio is taken to. Without it, the
compiled rows alone are timed by phase, forward and backward together.
"""

import argparse
import contextlib
import copy
import json
import math
import os
import random
import statistics
import time

import torch
import torchvision

import bio_detectron as bd
from bio_detectron.core.convert import ArgumentError
from bio_detectron.core.mirror import MIRROR_DEFAULTS as MIRROR
from bio_detectron.core.mirror import InputShapes, mirror_layers, mirror_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# --arch -> (its name in the header, its output layers: direct_feedback_alignment's error source)
ARCHS = {
    "resnet18": ("ResNet-18", ["fc"]),
    "resnet50": ("ResNet-50", ["fc"]),
    "vit_tiny": ("ViT-tiny (patch 16, 4 layers, 3 heads, hidden 96)", ["heads.head"]),
    "retinanet_R_50_FPN": ("RetinaNet R50-FPN", ["head.cls_score", "head.bbox_pred"]),
}


def classifier(arch, batch_size, size, device):
    """A torchvision ResNet or the small VisionTransformer "vit_tiny" (images of ``size`` px, a
    multiple of its patch, 16), a batch of random images and labels, and its loss."""
    if arch == "vit_tiny":
        model = torchvision.models.VisionTransformer(
            image_size=size, patch_size=16, num_layers=4, num_heads=3, hidden_dim=96,
            mlp_dim=192, num_classes=1000,
        )  # fmt: skip
    else:
        model = getattr(torchvision.models, arch)(num_classes=1000)
    model.to(device)
    batch = (
        torch.randn(batch_size, 3, size, size, device=device),
        torch.randint(0, 1000, (batch_size,), device=device),
    )

    def loss_fn(model, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    return model, batch, loss_fn


def retinanet(batch_size, size, device, boxes_per_image=10):
    """detectron2's RetinaNet R50-FPN as the repo's configs build it (before conversion), a
    synthetic batch of images with random boxes, and its training loss."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    cfg = get_cfg()
    bd.add_bio_config(cfg)
    cfg.merge_from_file(
        os.path.join(REPO, "configs", "COCO-Detection", "retinanet_R_50_FPN_backprop_1x.yaml")
    )
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", str(device)])
    model = bd.revert_model(build_model(cfg))  # the stock layers: the "native" variant

    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(batch_size):
        corner = torch.rand(boxes_per_image, 2, generator=g) * size * 0.7
        extent = 16 + torch.rand(boxes_per_image, 2, generator=g) * size * 0.3
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([corner, (corner + extent).clamp(max=size)], 1))
        instances.gt_classes = torch.randint(0, 80, (boxes_per_image,), generator=g)
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        # On the device already, as a prefetching loader would leave them.
        batch.append(
            {
                "image": image.to(device),
                "instances": instances.to(device),
                "height": size,
                "width": size,
            }
        )

    def loss_fn(model, batch):
        with EventStorage():  # RetinaNet logs training statistics into one
            return sum(model(batch).values())

    return model, batch, loss_fn


class _BareConv(torch.autograd.Function):
    """A convolution whose backward is written in Python and is native autograd's: no rule."""

    @staticmethod
    def forward(ctx, input, weight, bias, args):
        ctx.save_for_backward(input, weight)
        ctx.args, ctx.has_bias = args, bias is not None
        return torch.convolution(input, weight, bias, *args)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        grads = torch.ops.aten.convolution_backward(
            grad_output, input, weight, bias_sizes, *ctx.args, mask
        )
        return (*grads, None)


class _BareLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias):
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        return torch.nn.functional.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_2d = grad_output.reshape(-1, grad_output.shape[-1])
        grad_input = grad_output.matmul(weight) if ctx.needs_input_grad[0] else None
        grad_weight = grad_2d.t().mm(input.reshape(-1, input.shape[-1]))
        grad_bias = grad_2d.sum(0) if ctx.has_bias else None
        return grad_input, grad_weight, grad_bias


def _autocast_cast(input, *tensors):
    """``tensors`` as autocast would pass them to a conv or linear op: in its dtype when it is on
    for ``input``'s device (a custom Function's saved tensors must match its gradients' dtype)."""
    device = input.device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None else None for t in tensors)


def bare_function_model(model):
    """
    ``model`` (in place) with every zero-padded nn.Conv2d (detectron2's Conv2d included: its norm
    and activation follow) and nn.Linear run through _BareConv / _BareLinear in training, under
    autocast too.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"bare autograd.Function row: unsupported padding in {m}")
            args = (m.stride, m.padding, m.dilation, False, (0, 0), m.groups)
            # detectron2's Conv2d: its norm and activation, looked up once, not at every forward
            after = [getattr(m, name, None) for name in ("norm", "activation")]
            after = [f for f in after if f is not None]

            def conv_forward(x, m=m, args=args, after=after):
                x, weight, bias = _autocast_cast(x, x, m.weight, m.bias)
                x = _BareConv.apply(x, weight, bias, args)
                for f in after:
                    x = f(x)
                return x

            m.forward = conv_forward
        elif isinstance(m, torch.nn.Linear):

            def linear_forward(x, m=m):
                return _BareLinear.apply(*_autocast_cast(x, x, m.weight, m.bias))

            m.forward = linear_forward
    return model


def make_step(model, batch, loss_fn, device, amp_dtype=None, phases=None, split=False):
    """One training step; under autocast to ``amp_dtype`` unless None, with a gradient scaler
    for float16 (as detectron2's AMPTrainer). With ``phases`` (a dict), each step appends the
    seconds of its forward and backward to ``phases["forward+backward"]`` (with ``split``: of its
    forward to ``phases["forward"]`` and of its backward to ``phases["backward"]``, synchronising
    CUDA between them) and of its optimizer step to ``phases["optimizer"]``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model, batch)
        if split:
            sync()
            forward_end = time.perf_counter()
        scaler.scale(loss).backward()
        sync()
        t1 = time.perf_counter()
        scaler.step(opt)
        scaler.update()
        sync()
        if phases is not None:
            if split:
                phases.setdefault("forward", []).append(forward_end - t0)
                phases.setdefault("backward", []).append(t1 - forward_end)
            else:
                phases.setdefault("forward+backward", []).append(t1 - t0)
            phases.setdefault("optimizer", []).append(time.perf_counter() - t1)

    return step


def make_mirror(model, step, device):
    """One mirror step of every weight_mirror layer, with the input shapes of a training step."""
    layers = mirror_layers(model)
    with InputShapes(layers) as shapes:
        step()
    options = {k: MIRROR[k] for k in ("std", "lr", "decay", "noise_batch", "samples_per_input")}
    count = [0]

    def mirror():
        count[0] += 1
        for name, layer in layers:
            mirror_step(layer, shapes.shapes[name], step=count[0], name=name, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return mirror


def make_eval_step(model, batch, device):
    """A forward pass in eval mode without gradients (evaluation, predictors)."""
    model.eval()
    inputs = batch[0] if isinstance(batch, tuple) else [{"image": d["image"]} for d in batch]

    def step():
        with torch.no_grad():
            model(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def median_interval(values, confidence=0.95):
    """
    A distribution-free interval for the median of ``values`` (i.i.d. draws): the order statistics
    k and n - 1 - k, with k the largest index such that the binomial(n, 1/2) tails outside them
    hold at most 1 - ``confidence``. Fewer than 6 values give the full range.
    """
    xs, n = sorted(values), len(values)
    k, tail = 0, 0.0
    while k < n // 2:
        # P(at most k of n draws fall below the median), doubled for both tails
        tail = 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        if tail > 1 - confidence:
            break
        k += 1
    return xs[max(k - 1, 0)], xs[n - 1 - max(k - 1, 0)]


def rule_options(rule, scale):
    """``scale`` for the rules that take one (every rule but backprop)."""
    return {"scale": scale} if scale and "scale" in bd.build_rule(rule).options() else {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=list(ARCHS), default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rules", nargs="+", default=bd.available_rules())
    parser.add_argument(
        "--amp", action="store_true", help="autocast: float16 + grad scaler on CUDA, else bfloat16"
    )
    parser.add_argument("--channels-last", action="store_true", help="model and input NHWC")
    parser.add_argument("--scale", help="the rules' scale option (default: each rule's own)")
    parser.add_argument(
        "--mirror-period",
        type=int,
        default=MIRROR["period"],
        help="weight_mirror: a mirror step every N steps (default: MODEL.BIO.MIRROR.PERIOD's)",
    )
    parser.add_argument(
        "--eval-rules", nargs="*", default=["sign_symmetry"],
        help="rules also timed in eval mode under no_grad, against the unconverted model",
    )  # fmt: skip
    parser.add_argument(
        "--no-reference", action="store_true",
        help="leave out the rows 'native, second copy' and 'bare autograd.Function'",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true",
        help="also every variant compiled (bio_detectron.compile_model), against compiled native",
    )  # fmt: skip
    parser.add_argument(
        "--compile-mode", default="default", choices=bd.core.compile.COMPILE_MODES,
        help="torch.compile's mode for --compile (reduce-overhead: CUDA graphs on CUDA)",
    )  # fmt: skip
    parser.add_argument(
        "--compile-backend", default="inductor",
        help="torch.compile's backend for --compile (aot_eager: tracing only, for tests)",
    )  # fmt: skip
    parser.add_argument(
        "--no-plain-compile", dest="plain_compile", action="store_false",
        help="with --compile: leave out the plain torch.compile(model) rows",
    )  # fmt: skip
    parser.add_argument(
        "--no-eager", dest="eager_rows", action="store_false",
        help="with --compile: leave out the eager training rows (native stays, as the yardstick)",
    )  # fmt: skip
    parser.add_argument(
        "--breakdown", action="store_true",
        help="time every training row's forward, backward and optimizer step apart",
    )  # fmt: skip
    parser.add_argument("--json", help="append the results to this file as one JSON line")
    args = parser.parse_args()
    unknown = sorted(set(args.rules + args.eval_rules) - set(bd.available_rules()))
    if unknown:
        parser.error(f"unknown rules {unknown}; available: {bd.available_rules()}")

    device = torch.device(args.device)
    # float16 on CUDA, as detectron2's AMPTrainer; bfloat16 on the CPU, which has no float16 AMP.
    amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if args.amp else None
    torch.manual_seed(0)
    if args.arch == "retinanet_R_50_FPN":
        base, batch, loss_fn = retinanet(args.batch, args.size, device)
    else:
        base, batch, loss_fn = classifier(args.arch, args.batch, args.size, device)
    base.train()
    if args.channels_last:
        base.to(memory_format=torch.channels_last)
        if isinstance(batch, tuple):
            batch = (batch[0].contiguous(memory_format=torch.channels_last), batch[1])
    title, outputs = ARCHS[args.arch]
    refused = {}  # rule -> why its conversion refuses the model

    def convert(rule):
        """A copy of the model converted with ``rule``, or None where the conversion refuses it
        (the reason goes to ``refused``, printed as the rule's row)."""
        try:
            return bd.convert_model(
                copy.deepcopy(base), rule, outputs=outputs, **rule_options(rule, args.scale)
            )
        except ArgumentError as e:
            refused[rule] = str(e)
            return None

    variants = {}  # name -> its step
    reference = {}  # name -> the variant its ratio is taken to
    phases = {}  # name -> its steps' phases (see make_step): compiled rows, all with --breakdown

    def add_training(name, model, compared_with, by_phase=False):
        if by_phase or args.breakdown:
            phases[name] = {}
        variants[name] = make_step(
            model, batch, loss_fn, device, amp_dtype, phases.get(name), split=args.breakdown
        )
        reference[name] = compared_with

    add_training("native", copy.deepcopy(base), "native")
    if not args.no_reference and args.eager_rows:
        add_training("native, second copy", copy.deepcopy(base), "native")
        add_training("bare autograd.Function", bare_function_model(copy.deepcopy(base)), "native")
    mirrors = {}
    converted = {rule: convert(rule) for rule in args.rules if args.eager_rows}
    for rule, model in converted.items():
        if model is None:
            continue
        add_training(rule, model, "native")
        if mirror_layers(model):
            mirrors[f"{rule} mirror step"] = make_mirror(model, variants[rule], device)
            reference[f"{rule} mirror step"] = "native"
    if args.eval_rules:
        variants["native (eval, no_grad)"] = make_eval_step(copy.deepcopy(base), batch, device)
        reference["native (eval, no_grad)"] = "native (eval, no_grad)"
    for rule in args.eval_rules:
        model = convert(rule)
        if model is not None:
            variants[f"{rule} (eval, no_grad)"] = make_eval_step(model, batch, device)
            reference[f"{rule} (eval, no_grad)"] = "native (eval, no_grad)"
    if args.compile:
        # Every compiled variant is another instance of the same model class, whose forward dynamo
        # compiles once per instance: raise its per-function limit, past which it would silently
        # run the later variants eagerly (training compiles one model, far under the default).
        # Direct feedback alignment breaks the graph at each of its layers, and every resumed
        # piece of a layer's forward is compiled per layer: a ViT's 18 such layers, one model
        # per rule, went past 64.
        torch._dynamo.config.recompile_limit = 1024
        torch._dynamo.config.accumulated_recompile_limit = 8192
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        compiled = {"native (compiled)": copy.deepcopy(base)}
        if not args.no_reference:
            compiled["bare autograd.Function (compiled)"] = bare_function_model(copy.deepcopy(base))
        for rule in args.rules:
            model = convert(rule)
            if model is not None:
                compiled[f"{rule} (compiled)"] = model
        kwargs = {"mode": args.compile_mode} if args.compile_mode != "default" else {}
        if args.plain_compile:  # each model passed through torch.compile(model) alone
            plain = {"native (torch.compile)": copy.deepcopy(base)}
            for rule in args.rules:
                model = convert(rule)
                if model is not None:
                    plain[f"{rule} (torch.compile)"] = model
            for name, model in plain.items():
                model = torch.compile(model, backend=args.compile_backend, **kwargs)
                # the stock model's ratio is to compile_model's, each rule's to the stock model's
                native = name == "native (torch.compile)"
                yardstick = "native (compiled)" if native else "native (torch.compile)"
                add_training(name, model, yardstick, by_phase=True)
        for name, model in compiled.items():
            bd.compile_model(
                model, mode=args.compile_mode, backend=args.compile_backend, device=device
            )
            add_training(name, model, "native (compiled)", by_phase=True)
    variants.update(mirrors)
    for step in variants.values():  # warm-up: allocator, kernels, momentum buffers; compiling
        step()
        step()
    for p in phases.values():
        p.clear()

    times = {name: [] for name in variants}
    # Each round runs the variants in a new order: a fixed order would time later variants
    # systematically later than the native step they are divided by.
    order = random.Random(0)
    for _ in range(args.rounds):
        names = list(variants)
        order.shuffle(names)
        for name in names:
            step = variants[name]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)

    settings = "".join(
        [
            f", AMP {str(amp_dtype).split('.')[-1]}" if amp_dtype else "",
            ", channels_last" if args.channels_last else "",
            f", scale {args.scale}" if args.scale else "",
            f", compiled rows: mode {args.compile_mode}" if args.compile else "",
            f", backend {args.compile_backend}" if args.compile else "",
        ]
    )
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    gpu = f"{device_name}, " if device.type == "cuda" else ""
    malloc = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}
    print(
        f"{title} training step, batch {args.batch} x {args.size}px{settings}, "
        f"{args.rounds} interleaved rounds on {device} ({gpu}{torch.get_num_threads()} threads), "
        f"torch {torch.__version__}"
        + (f", {' '.join(f'{k}={v}' for k, v in malloc.items())}" if malloc else "")
    )
    for name in mirrors:  # training step + its share of a mirror step, per round
        rule = name[: -len(" mirror step")]
        combined = f"{rule} (+ mirror / {args.mirror_period})"
        times[combined] = [t + m / args.mirror_period for t, m in zip(times[rule], times[name])]
        reference[combined] = "native"
    w = max(len(name) for name in ["variant", *times, *refused])  # the first column's width
    print(
        f"| {'variant':<{w}} | {'median step (s)':>15} | {'ratio to native':>15} | "
        f"{'95% interval':>15} |"
    )
    # (eval rows: the ratio to "native (eval, no_grad)")
    print(f"|{'-' * (w + 2)}|{'-' * 17}|{'-' * 17}|{'-' * 17}|")
    results = {}
    for name, ts in times.items():
        ratios = [t / n for t, n in zip(ts, times[reference[name]])]
        ratio, (low, high) = statistics.median(ratios), median_interval(ratios)
        results[name] = {
            "median_step_s": statistics.median(ts),
            "ratio_to_native": ratio,
            "ratio_95_interval": [low, high],
            "compared_with": reference[name],
        }
        print(
            f"| {name:<{w}} | {statistics.median(ts):>15.3f} | {ratio:>14.3f}x | "
            f"{f'{low:.3f}-{high:.3f}':>15} |"
        )
    for rule, reason in refused.items():
        print(f"| {rule:<{w}} | refused: {reason} |")
    breakdown = {}
    if phases:
        # Where a rule's extra time goes: its forward (direct feedback alignment: recording the
        # outputs), its backward (the rule's B, made in the graph when compiled; the error sent to
        # every layer) and its optimizer step (Kolen-Pollack: B's update too).
        kinds = ("forward", "backward") if args.breakdown else ("forward+backward",)
        rows = "Training" if args.breakdown else "Compiled"
        print(
            f"\n{rows} rows by phase, median ms per step (+ ms over the row it is compared with):"
        )
        print(
            f"| {'variant':<{w}} | "
            + " | ".join(f"{k:>22}" for k in kinds + ("optimizer step",))
            + " |"
        )
        print(f"|{'-' * (w + 2)}|" + "|".join("-" * 24 for _ in kinds + ("optimizer",)) + "|")
        for name, p in phases.items():
            cells, breakdown[name] = [], {}
            for phase in kinds + ("optimizer",):
                median = statistics.median(p[phase])
                extra = median - statistics.median(phases[reference[name]][phase])
                breakdown[name][phase + "_s"] = median
                cells.append(f"{median * 1e3:9.1f} ({extra * 1e3:+7.1f})")
            print(f"| {name:<{w}} | " + " | ".join(f"{c:>22}" for c in cells) + " |")
    if args.json:
        record = {
            "benchmark": "rules",
            "arch": args.arch,
            "batch": args.batch,
            "size": args.size,
            "amp": args.amp,
            "amp_dtype": str(amp_dtype).split(".")[-1] if amp_dtype else None,
            "channels_last": args.channels_last,
            "scale": args.scale,
            "compile_mode": args.compile_mode if args.compile else None,
            "compile_backend": args.compile_backend if args.compile else None,
            "plain_compile": args.compile and args.plain_compile,
            "rounds": args.rounds,
            "steps": args.steps,
            "device": device_name,
            "torch": torch.__version__,
            "malloc_env": malloc,
            "breakdown": args.breakdown,
            "variants": results,
            "refused": refused,
            "phases": breakdown,
        }
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

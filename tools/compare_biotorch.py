#!/usr/bin/env python
"""
Train the same network on the same images with this project's learning rules and with biotorch's
implementation of the same rules, side by side in one process: top-1 per implementation and rule,
and the step time of ours over biotorch's.

    pip install biotorch==0.0.16 --no-deps     # not a dependency of bio_detectron
    python tools/compare_biotorch.py --dataset photos --size 64 --epochs 8 --seeds 0 1 2 \\
        --json compare_biotorch.jsonl

The rules: ``backprop`` (ours: B = W through our autograd path; biotorch's "backpropagation"
layers), ``usf`` (ours: sign_symmetry; biotorch's uniform sign-concordant feedback) and ``fa``
(feedback_alignment; biotorch's "fa"). biotorch's direct feedback alignment is left out: it
propagates the output error through a k x k kernel per layer at the layer's output resolution,
ours through a 1 x 1 map at the input's, so the two do not compute the same thing.

**The scale of B.** biotorch's usf uses B = s * sign(W) with s the standard deviation of Xavier
initialisation, sqrt(2 / (fan_in + fan_out)), per layer (its default ``init`` "xavier"), and its
fa draws B from Xavier's uniform distribution, of the same standard deviation. None of our named
scales is that ("kaiming" is sqrt(2 / fan_out) for a conv, 1 / sqrt(fan_in) for a linear layer),
so by default (``--our-scale biotorch``) each of our layers gets that number as its scale option,
through the one conversion (``convert_layers`` with one rule object per layer): usf is then the
same B exactly, fa a B ~ N(0, s^2) of the same s (normal, not uniform). ``--our-scale`` also takes
any of our scales ("kaiming", "mean_abs", "rms", a number) for all layers.

**Same network, same data, same schedule.** One torchvision model is built from the seed and
copied for every variant, so all start from the same weights (biotorch converts with
``copy_weights``, keeping them). Every variant sees the same batches in the same order (no
augmentation), with plain SGD (momentum, weight decay, cosine learning rate over the run).

**Correctness first.** Before training, one batch goes through both implementations of each
rule in float64 with B made equal (biotorch's fa B copied into ours; usf's B is made from W with
the same scale): every weight gradient must agree (``torch.allclose``), or the run stops naming
the rule and parameter.

**Step times, side by side.** The variants train in lockstep: at every step each one takes its
step on the same batch, in a new random order, so that drifts of the machine's speed hit them
alike. Per rule, the figure is the median over steps of (our step time / biotorch's step time at
the same step), with a distribution-free 95 % interval for that median; the first ``--warmup``
steps of every seed are not timed.
"""

import argparse
import contextlib
import copy
import io
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from importlib import metadata

import torch
import torchvision
from benchmark_rules import median_interval
from torch import nn
from torch.nn import functional as F

from bio_detectron.core import FeedbackLayer, build_rule, convert_model
from bio_detectron.core.convert import convert_layers, layers_of
from bio_detectron.data.generated import classification_folder

IMPLEMENTATIONS = ("ours", "biotorch")
# rule -> (our rule, biotorch's mode)
RULES = {
    "backprop": ("backprop", "backpropagation"),
    "usf": ("sign_symmetry", "usf"),
    "fa": ("feedback_alignment", "fa"),
}
NUM_CLASSES = 10


def import_biotorch():
    """biotorch's BioModule, or a SystemExit saying how to install it."""
    try:
        from biotorch.module.biomodule import BioModule
    except ImportError as error:
        raise SystemExit(
            f"biotorch is not importable ({error}); install it without its dependencies: "
            "pip install biotorch==0.0.16 --no-deps"
        ) from error
    return BioModule


def biotorch_scale(weight: torch.Tensor) -> float:
    """
    biotorch's usf scale for a layer of this weight (conv or linear): the standard deviation of
    Xavier initialisation, sqrt(2 / (fan_in + fan_out)), with fan_in = W.shape[1] * kernel size
    and fan_out = W.shape[0] * kernel size, as ``nn.init`` counts them.
    """
    kernel = math.prod(weight.shape[2:])
    return math.sqrt(2.0 / ((weight.shape[0] + weight.shape[1]) * kernel))


def convert_ours(model: nn.Module, rule: str, our_scale, seed: int) -> nn.Module:
    """
    ``model`` converted to our implementation of ``rule`` (a key of :data:`RULES`).

    Args:
        our_scale: "biotorch" (each layer's scale is :func:`biotorch_scale` of its weight) or one
            of our scale options for every layer ("kaiming", "mean_abs", "rms", a number).
        seed: our rules' seed (fa's random B per layer).
    """
    name = RULES[rule][0]
    if "scale" not in build_rule(name).options():
        return convert_model(model, name, seed=seed)
    if our_scale != "biotorch":
        return convert_model(model, name, seed=seed, scale=our_scale)
    layers = dict(layers_of(model))
    return convert_layers(
        model, lambda n: build_rule(name, scale=biotorch_scale(layers[n].weight)), seed=seed
    )


def convert_biotorch(model: nn.Module, rule: str, seed: int) -> nn.Module:
    """
    ``model`` converted to biotorch's implementation of ``rule``, keeping its weights. biotorch
    draws its layers' initial tensors (fa's B among them) from the global generator: seeded here.
    """
    BioModule = import_biotorch()
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a conversion summary
        return BioModule(model, mode=RULES[rule][1], copy_weights=True)


def copy_feedback_from_biotorch(ours: nn.Module, theirs: nn.Module) -> None:
    """Make each of our layers' stored B (fa's) equal to biotorch's B of the same layer."""
    their_layers = dict(theirs.module.named_modules())
    with torch.no_grad():
        for name, layer in ours.named_modules():
            feedback = getattr(layer, "feedback", None)  # a stored B (fa's), None for usf's
            if isinstance(layer, FeedbackLayer) and feedback is not None:
                feedback.copy_(their_layers[name].weight_backward)


def trained_parameters(model: nn.Module) -> dict:
    """name -> parameter, for the parameters SGD trains, under the stock model's names."""
    # biotorch's BioModule holds the model it converted as ``module``.
    prefix = "module." if isinstance(getattr(model, "module", None), nn.Module) else ""
    return {
        n[len(prefix) :]: p
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith(prefix)
    }


def weight_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """name -> gradient of the cross-entropy of one batch, in train mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    return {n: p.grad.detach().clone() for n, p in trained_parameters(model).items()}


def gradient_mismatch(ours: dict, theirs: dict, rtol: float = 1e-6) -> dict:
    """
    name -> largest |ours - theirs| / max |theirs| of each gradient that ``torch.allclose`` (with
    ``rtol`` and an absolute tolerance of ``rtol`` * max |theirs|) does not accept; empty when
    every gradient agrees.
    """
    if set(ours) != set(theirs):
        raise ValueError(f"parameters differ: {sorted(set(ours) ^ set(theirs))}")
    bad = {}
    for name, grad in ours.items():
        ref = theirs[name]
        top = ref.abs().max().item() or 1.0
        if not torch.allclose(grad, ref, rtol=rtol, atol=rtol * top):
            bad[name] = (grad - ref).abs().max().item() / top
    return bad


def check_gradients(rules, seed: int, our_scale, size: int = 32, batch: int = 4) -> dict:
    """
    For each rule: one batch through both implementations in float64, B made equal; returns
    rule -> gradient_mismatch (empty when the two compute the same weight gradients).
    """
    torch.manual_seed(seed)
    base = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    images = torch.randn(batch, 3, size, size, dtype=torch.float64)
    labels = torch.randint(NUM_CLASSES, (batch,))
    result = {}
    for rule in rules:
        ours = convert_ours(copy.deepcopy(base), rule, our_scale, seed).double()
        theirs = convert_biotorch(copy.deepcopy(base), rule, seed).double()
        copy_feedback_from_biotorch(ours, theirs)
        result[rule] = gradient_mismatch(
            weight_gradients(ours, images, labels), weight_gradients(theirs, images, labels)
        )
    return result


def load_split(folder: str, split: str):
    """The images of one split as (uint8 tensor (N, 3, H, W), labels (N,))."""
    dataset = torchvision.datasets.ImageFolder(os.path.join(folder, split))
    if len(dataset.classes) != NUM_CLASSES:
        raise ValueError(
            f"{folder}/{split} has {len(dataset.classes)} classes; the networks have {NUM_CLASSES}"
        )
    images, labels = [], []
    for path, label in dataset.samples:
        images.append(torchvision.io.decode_image(path, mode=torchvision.io.ImageReadMode.RGB))
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


class Variant:
    """One (implementation, rule): its model, optimizer and schedule, and its step times."""

    def __init__(self, impl, rule, model, args, total_steps):
        self.impl, self.rule, self.model = impl, rule, model
        params = list(trained_parameters(model).values())
        self.optimizer = torch.optim.SGD(
            params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total_steps)
        self.times = []

    def step(self, images, labels):
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(images), labels).backward()
        self.optimizer.step()
        self.scheduler.step()

    @torch.no_grad()
    def top1(self, images, labels, batch_size):
        self.model.eval()
        device = next(self.model.parameters()).device
        correct = 0
        for i in range(0, len(labels), batch_size):
            logits = self.model(images[i : i + batch_size].to(device))
            correct += (logits.argmax(1).cpu() == labels[i : i + batch_size]).sum().item()
        return 100.0 * correct / len(labels)


def train_seed(args, seed, data, device):
    """Train every variant from the same start on the same batches; returns the variants."""
    (train_x, train_y), (val_x, val_y) = data
    torch.manual_seed(seed)
    base = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    steps_per_epoch = len(train_y) // args.batch
    variants = []
    for rule in args.rules:
        for impl in IMPLEMENTATIONS:
            model = copy.deepcopy(base)
            if impl == "ours":
                model = convert_ours(model, rule, args.our_scale, seed)
            else:
                model = convert_biotorch(model, rule, seed)
            model.to(device)
            variants.append(Variant(impl, rule, model, args, args.epochs * steps_per_epoch))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shuffle = torch.Generator().manual_seed(seed)
    order = random.Random(seed)
    step = 0
    for epoch in range(args.epochs):
        perm = torch.randperm(len(train_y), generator=shuffle)
        for i in range(steps_per_epoch):
            index = perm[i * args.batch : (i + 1) * args.batch]
            images, labels = train_x[index].to(device), train_y[index].to(device)
            for variant in order.sample(variants, len(variants)):
                sync()
                start = time.perf_counter()
                variant.step(images, labels)
                sync()
                if step >= args.warmup:
                    variant.times.append(time.perf_counter() - start)
            step += 1
        top1 = {f"{v.impl} {v.rule}": v.top1(val_x, val_y, args.batch) for v in variants}
        print(f"seed {seed} epoch {epoch + 1}: top-1 {top1}", file=sys.stderr, flush=True)
    for v in variants:
        v.final_top1 = v.top1(val_x, val_y, args.batch)
    return variants


def summarise(runs, rules):
    """rule -> figures over all seeds: top-1 per implementation, step times and their ratio."""
    rows = {}
    for rule in rules:
        by_impl = {impl: [] for impl in IMPLEMENTATIONS}
        times = {impl: [] for impl in IMPLEMENTATIONS}
        ratios = []
        for variants in runs:
            pair = {v.impl: v for v in variants if v.rule == rule}
            for impl, v in pair.items():
                by_impl[impl].append(v.final_top1)
                times[impl].extend(v.times)
            ratios += [a / b for a, b in zip(pair["ours"].times, pair["biotorch"].times)]
        low, high = median_interval(ratios) if ratios else (math.nan, math.nan)
        rows[rule] = {
            "top1": by_impl,
            "step_ms": {i: 1000 * statistics.fmean(t) if t else math.nan for i, t in times.items()},
            "ratio_median": statistics.median(ratios) if ratios else math.nan,
            "ratio_interval": [low, high],
            "timed_steps": len(ratios),
        }
    return rows


def _top1(values):
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def markdown(rows, seeds, num_val):
    lines = [
        "| rule | ours top-1 | biotorch top-1 | ours step (ms) | biotorch step (ms) "
        "| step time ours / biotorch (95 % interval) |",
        "|---|---|---|---|---|---|",
    ]
    for rule, row in rows.items():
        low, high = row["ratio_interval"]
        lines.append(
            f"| {rule} ({RULES[rule][0]}) | {_top1(row['top1']['ours'])} "
            f"| {_top1(row['top1']['biotorch'])} | {row['step_ms']['ours']:.1f} "
            f"| {row['step_ms']['biotorch']:.1f} "
            f"| {row['ratio_median']:.3f}× ({low:.3f}–{high:.3f}) |"
        )
    spread = "mean ± sd over seeds" if len(seeds) > 1 else "seed"
    lines.append(f"\ntop-1: % of the {num_val} validation images, {spread} {list(seeds)}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["photos", "shapes"], default="photos")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--root", help="folder of the generated datasets (default: the cache)")
    parser.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES))
    parser.add_argument(
        "--our-scale", default="biotorch",
        help="our rules' scale: 'biotorch' (each layer biotorch's, the default), or one of ours",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps of each seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="append the results to this file as one JSON line")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.batch > NUM_CLASSES * args.train_per_class:
        parser.error(
            f"--batch {args.batch} is larger than the {NUM_CLASSES * args.train_per_class} "
            "training images (--train-per-class for each of the 10 classes)"
        )

    check = check_gradients(args.rules, args.seeds[0], args.our_scale)
    for rule, bad in check.items():
        if bad:
            name, worst = max(bad.items(), key=lambda kv: kv[1])
            raise SystemExit(
                f"{rule}: our weight gradients differ from biotorch's with B made equal, in "
                f"{len(bad)} parameter(s), most in {name} (max difference {worst:.2e} of its "
                f"largest gradient); --our-scale {args.our_scale!r}"
            )
    print(f"gradient check: {', '.join(args.rules)}: equal to biotorch's (float64, B equal)")

    folder = classification_folder(
        args.dataset,
        root=args.root,
        image_size=args.size,
        num_train_per_class=args.train_per_class,
        num_val_per_class=args.val_per_class,
    )
    train_x, train_y = load_split(folder, "train")
    val_x, val_y = load_split(folder, "val")
    # Normalised by the training set's per-channel mean and standard deviation.
    mean = train_x.float().mean((0, 2, 3), keepdim=True)
    std = train_x.float().std((0, 2, 3), keepdim=True)
    data = tuple(((x.float() - mean) / std, y) for x, y in ((train_x, train_y), (val_x, val_y)))

    cpu = platform.processor() or platform.machine()
    print(
        f"{args.dataset} classification, {args.size} px, {len(train_y)} train / {len(val_y)} val"
        f" images; resnet18, {args.epochs} epochs of batch {args.batch}, seeds {args.seeds}; "
        f"torch {torch.__version__}, biotorch {metadata.version('biotorch')}, "
        f"{torch.get_num_threads()} threads, {args.device} ({cpu})"
    )
    runs = [train_seed(args, seed, data, device) for seed in args.seeds]
    rows = summarise(runs, args.rules)
    print(markdown(rows, args.seeds, len(val_y)))
    if args.json:
        record = {"args": vars(args), "gradient_check": check, "rules": rows}
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

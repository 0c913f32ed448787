#!/usr/bin/env python
"""
Time a ResNet-18 training step (forward, backward, SGD) per learning rule against native backprop.

Rules and native autograd run in interleaved rounds, so that drifts of the machine's speed hit them
alike; the figure reported per rule is the median over rounds of (rule's step time / native step
time measured in the same round).

    python tools/benchmark_rules.py [--batch 8] [--size 224] [--rounds 7] [--device cpu]
"""
import argparse
import copy
import statistics
import time

import torch
import torchvision

import bio_detectron as bd


def make_step(model, batch, device):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = batch

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rules", nargs="+", default=bd.available_rules())
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=1000).to(device)
    batch = (
        torch.randn(args.batch, 3, args.size, args.size, device=device),
        torch.randint(0, 1000, (args.batch,), device=device),
    )
    variants = {"native": make_step(copy.deepcopy(base), batch, device)}
    for rule in args.rules:
        model = bd.convert_model(copy.deepcopy(base), rule)
        variants[rule] = make_step(model, batch, device)
    for step in variants.values():  # warm-up: allocator, kernels, momentum buffers
        step()
        step()

    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)

    print(
        f"ResNet-18 training step, batch {args.batch} x {args.size}px, {args.rounds} interleaved "
        f"rounds on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}"
    )
    print(f"| {'variant':<32} | {'median step (s)':>15} | {'ratio to native':>15} |")
    print(f"|{'-' * 34}|{'-' * 17}|{'-' * 17}|")
    for name, ts in times.items():
        ratio = statistics.median(t / n for t, n in zip(ts, times["native"]))
        print(f"| {name:<32} | {statistics.median(ts):>15.3f} | {ratio:>14.3f}x |")


if __name__ == "__main__":
    main()

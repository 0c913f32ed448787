#!/usr/bin/env python
"""
Where the time of a tools/train_net.py run goes: the real trainer (BioTrainer, its hooks and data
loader) on a config, with each part of an iteration timed, then evaluation and start-up.

    python tools/profile_train.py \\
        --config-file configs/Shapes-Detection/retinanet_R_18_FPN_sign_symmetry.yaml \\
        --iters 120 [KEY VALUE ...]

Prints one table: per part, milliseconds per iteration (mean over the iterations after the first
``--warmup``) and its share of the iteration; the alignment probe and writers run only every N
iterations, so their mean is their amortised cost.
"""

import argparse
import collections
import os
import sys
import time

from detectron2.config import get_cfg
from detectron2.engine import default_setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bio_detectron  # noqa: F401,E402
from bio_detectron.config import add_bio_config, check_model_device  # noqa: E402
from bio_detectron.engine import BioTrainer  # noqa: E402

PARTS = (
    "data loading (wait for the next batch)",
    "forward: backbone (ResNet + FPN)",
    "forward: head (towers + predictors)",
    "forward: the rest (preprocessing, anchors, matching, losses)",
    "backward",
    "after backward (the alignment probe, on its iterations)",
    "optimizer step",
    "metrics, hooks and writers (LR schedule, timer, console/json)",
)


class Clock:
    def __init__(self):
        self.totals = collections.defaultdict(float)
        self.marks = {}
        self.count = 0
        self.active = False

    def add(self, part, seconds):
        if self.active:
            self.totals[part] += seconds


def _timed_hooks(module, clock, part):
    def pre(*_):
        clock.marks[part] = time.perf_counter()

    def post(*_):
        clock.add(part, time.perf_counter() - clock.marks[part])

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def _wrap(obj, name, clock, part):
    fn = getattr(obj, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.add(part, time.perf_counter() - start)
            clock.marks[part + ":end"] = time.perf_counter()

    setattr(obj, name, timed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iters", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=10, help="iterations not counted")
    parser.add_argument("--eval", action="store_true", help="also time the final evaluation")
    parser.add_argument("opts", nargs="*")
    args = parser.parse_args()

    t0 = time.perf_counter()
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts + ["SOLVER.MAX_ITER", str(args.iters)])
    if not args.eval:
        cfg.DATASETS.TEST = ()
    check_model_device(cfg)
    cfg.freeze()
    default_setup(cfg, argparse.Namespace(config_file=args.config_file, opts=[], eval_only=False))
    trainer = BioTrainer(cfg)
    trainer.resume_or_load(resume=False)
    startup = time.perf_counter() - t0

    clock = Clock()
    model, inner = trainer.model, trainer._trainer
    _timed_hooks(model.backbone, clock, PARTS[1])
    _timed_hooks(model.head, clock, PARTS[2])

    def forward_pre(*_):
        clock.marks["forward"] = time.perf_counter()

    def forward_post(*_):
        clock.marks["forward:end"] = time.perf_counter()
        total = clock.marks["forward:end"] - clock.marks["forward"]
        clock.add("forward", total)

    model.register_forward_pre_hook(forward_pre)
    model.register_forward_hook(forward_post)
    loader = inner._data_loader_iter

    class TimedLoader:
        def __next__(self):
            start = time.perf_counter()
            try:
                return next(loader)
            finally:
                clock.add(PARTS[0], time.perf_counter() - start)

    inner._data_loader_iter_obj = TimedLoader()
    after_backward = inner.after_backward

    def timed_after_backward():
        start = time.perf_counter()
        clock.add(PARTS[4], start - clock.marks["forward:end"])
        after_backward()
        clock.add(PARTS[5], time.perf_counter() - start)

    inner.after_backward = timed_after_backward
    _wrap(inner.optimizer, "step", clock, PARTS[6])
    step_times = []
    run_step = trainer.run_step

    def timed_run_step():
        clock.active = trainer.iter >= args.warmup
        start = time.perf_counter()
        run_step()
        if clock.active:
            step_times.append(time.perf_counter() - start)

    trainer.run_step = timed_run_step
    iter_start = {}
    before_step, after_step = trainer.before_step, trainer.after_step

    def timed_before_step():
        iter_start[trainer.iter] = time.perf_counter()
        before_step()

    def timed_after_step():
        after_step()
        if trainer.iter >= args.warmup:
            clock.totals["iteration"] += time.perf_counter() - iter_start[trainer.iter]
            clock.count += 1

    trainer.before_step, trainer.after_step = timed_before_step, timed_after_step
    t1 = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - t1

    n = clock.count
    total = clock.totals["iteration"] / n
    parts = {p: clock.totals[p] / n for p in PARTS}
    parts[PARTS[3]] = (
        clock.totals["forward"] - clock.totals[PARTS[1]] - clock.totals[PARTS[2]]
    ) / n
    parts[PARTS[7]] = total - sum(v for k, v in parts.items() if k != PARTS[7])
    print(
        f"\n{args.config_file}: {n} iterations timed after {args.warmup} "
        f"({len(step_times)} steps), "
        f"{total * 1000:.0f} ms per iteration; start-up {startup:.1f} s, training "
        f"{train_time:.1f} s in all"
    )
    print("| part | ms / iteration | share |\n|---|---|---|")
    for p in PARTS:
        print(f"| {p} | {parts[p] * 1000:.1f} | {100 * parts[p] / total:.1f} % |")


if __name__ == "__main__":
    main()

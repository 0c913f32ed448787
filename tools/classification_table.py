#!/usr/bin/env python
"""
The seed paper's classification table in miniature: train each network with each learning rule
and several seeds, then print top-1 per rule (mean ± sd over the seeds, and each rule's mean as a
fraction of backprop's) and check the ordering the paper and biotorch report.

Each run is ``tools/train_imagenet.py`` with ``configs/ImageNet/<arch>_<rule>.yaml``, the schedule
below, the user's options and ``SEED S MODEL.BIO.SEED S`` (detectron2's seed of the weights, the
data order and the augmentation; the seed of the fixed feedback tensors), in a process of its own,
into ``<output-dir>/<arch>/<rule>/seed<S>`` (detectron2's log is ``log.txt`` there). A run whose
folder holds its final top-1, trained by the same config and options, is reused and says so
(``--rerun`` trains it again), as in ``tools/demo.py``; so an interrupted table continues where it
stopped, and the same command with more rules or seeds trains only the new runs. Every run of the
command gets its row in ``<output-dir>/classification.json``, the tables go to
``<output-dir>/table.md`` (both written again by each command, with its runs).

**The ordering** (backprop >= sign_symmetry > sign_symmetry_random_magnitude >
feedback_alignment) is measured, not assumed: for each network, each adjacent pair of these rules
that ran gets "holds", "within seed noise" (the means differ by less than the larger of the two
sample standard deviations over the seeds) or "reversed"; with one seed a pair has no noise
estimate, and the line says so.

**The schedule** (set here on top of the ImageNet config; options after ``--`` override any of it),
small enough for a 2-core CPU to run every rule with three seeds on both networks:

* data: the generated photos classification folder (``DATASETS.GENERATED_CLASSIFICATION photos``:
  real photographs, one object cut from a photograph per image, 10 classes), 300 training and 50
  validation images per class at 64 px, the folder ``tools/protocol.py`` pre-trains on. 500
  validation images make one image 0.2 points of top-1. Another set: ``-- DATASETS.IMAGENET_ROOT
  <folder>`` (``<folder>/{train,val}/<class>/*``); ``$IMAGENET_ROOT`` replaces the generated
  folder too, as in ``tools/train_imagenet.py``, and the tool prints which folder it trains on.
* crops: ``INPUT.CLASSIFICATION.SIZE 32``, the size the ResNet-18 and tiny-ViT classification
  runs of docs/results.md use, so that a run takes minutes; 64 for AlexNet, whose three
  max-pools need at least 63 px. ``MIN_SCALE 0.35`` instead of ImageNet's 0.08, as
  ``tools/protocol.py`` argues: a crop keeps at least 59 % of the side, so it holds most of the
  one object the label names.
* batch 64 (the learning rate scales from the config's 0.1 at 256 to 0.025), 10 epochs of 46
  iterations with the steps late, at epochs 7 and 9, and a warm-up of 100 iterations, the keys
  of docs/results.md's ResNet-18 runs (20 epochs with steps at 14 and 18): on 1000 images, 20
  epochs (300 iterations) had left ResNet-18 at 21-24 % top-1 with every rule (chance: 10 %), so
  this schedule has three times the images and 460 iterations. Not tuned: one run of it,
  ResNet-18 with backprop and seed 0 (``--archs resnet18 --rules backprop --seeds 0``), reached
  87.6 % top-1, far from chance and from 100 %.
* float32 (the configs' default), cpu, main-process loading (``DATALOADER.NUM_WORKERS 0``: one
  process per run on a 2-core machine); top-1 and top-5 on the val split after every epoch, the
  table reads the last.

    python tools/classification_table.py --output-dir output/classification_table
    python tools/classification_table.py --archs resnet18 --rules backprop sign_symmetry \\
        --seeds 0 1 2 --output-dir output/classification_table \\
        -- SOLVER.EPOCHS 20 SOLVER.STEP_EPOCHS "(14, 18)"
"""

import argparse
import glob
import json
import os
import statistics
import sys

from demo import REPO, finished_result, run_command, run_tool
from protocol import classification_cfg

CONFIG = os.path.join(REPO, "configs", "ImageNet", "{}_{}.yaml")
# The ordering the seed paper and biotorch report, best first: (rule, relation to the next).
ORDERING = (
    ("backprop", ">="),
    ("sign_symmetry", ">"),
    ("sign_symmetry_random_magnitude", ">"),
    ("feedback_alignment", None),
)
SCHEDULE = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.GENERATED_CLASSIFICATION", "photos",
    "DATASETS.SHAPES_CLASSIFICATION.IMAGE_SIZE", "64",
    "DATASETS.SHAPES_CLASSIFICATION.NUM_TRAIN_PER_CLASS", "300",
    "DATASETS.SHAPES_CLASSIFICATION.NUM_VAL_PER_CLASS", "50",
    "INPUT.CLASSIFICATION.MIN_SCALE", "0.35",
    "SOLVER.IMS_PER_BATCH", "64",
    "SOLVER.EPOCHS", "10",
    "SOLVER.STEP_EPOCHS", "(7, 9)",
    "SOLVER.WARMUP_ITERS", "100",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip
# Crop side: 32 px, or more where a classifier needs it: AlexNet's pools need 63 px
# (bio_detectron.modeling.classification.ALEXNET_MIN_SIZE), and 64 is the folder's whole image.
SIZE, MIN_SIZES = 32, {"AlexNet": 64}
# Keys this tool sets per run; an option of the user may not set them.
OWN_KEYS = ("SEED", "MODEL.BIO.SEED", "OUTPUT_DIR")
HEADER = "| rule | top-1 | seeds | / backprop | top-5 |"


def rules_with_config(arch):
    """The rules that have a ``configs/ImageNet/<arch>_<rule>.yaml``, sorted."""
    first, last = CONFIG.format(arch, "*").split("*")
    return sorted(p[len(first) : -len(last)] for p in glob.glob(CONFIG.format(arch, "*")))


def check_configs(archs, rules):
    """
    Raises:
        ValueError: a rule has no config for an arch; names the missing file and the rules that
            have one for that arch.
    """
    for arch in archs:
        missing = [r for r in rules if not os.path.isfile(CONFIG.format(arch, r))]
        if missing:
            raise ValueError(
                f"--archs {arch} --rules {missing}: no {CONFIG.format(arch, missing[0])}; rules "
                f"with a {arch} config: {rules_with_config(arch) or 'none'}"
            )


def run_opts(config, user_opts, seed):
    """The options of one run: the schedule, the crop size for the config's classifier, the
    user's options, the seeds."""
    name = classification_cfg(config, user_opts).MODEL.CLASSIFIER.NAME
    size = max(SIZE, MIN_SIZES.get(name, SIZE))
    opts = [*SCHEDULE, "INPUT.CLASSIFICATION.SIZE", str(size), *user_opts]
    return opts + ["SEED", str(seed), "MODEL.BIO.SEED", str(seed)]


def run(arch, rule, seed, output_dir, user_opts, rerun):
    """One run, reused when finished; returns its row of classification.json."""
    from bio_detectron.data.imagenet import classification_root

    config = CONFIG.format(arch, rule)
    opts = run_opts(config, user_opts, seed)
    # The folder the run trains on, made here if it is a generated one that does not exist yet.
    data = classification_root(classification_cfg(config, opts))
    folder = os.path.abspath(os.path.join(output_dir, arch, rule, f"seed{seed}"))
    result = None if rerun else finished_result(folder, run_command(config, opts), "val/top1")
    label = f"{arch} {rule} seed{seed}"
    if result is not None:
        print(f"[{label}] reusing the finished run in {folder}")
    else:
        print(f"[{label}] training on {data}", flush=True)
        result = run_tool(label, "train_imagenet.py", config, folder, opts, "val/top1")[0]
    return {
        "arch": arch,
        "rule": rule,
        "seed": seed,
        "top1": result["val/top1"],
        "top5": result["val/top5"],
        # The final evaluation's record, which detectron2 writes after the last step: MAX_ITER.
        "iterations": result["iteration"],
        "folder": folder,
        "data": data,
    }


def summarise(rows):
    """
    Returns:
        dict: arch -> rule -> {"top1", "top5": means; "sd": top-1's sample standard deviation
        over the seeds (None for one seed); "n": seeds}, rules in the order of ``rows``.
    """
    runs = {}
    for r in rows:
        runs.setdefault(r["arch"], {}).setdefault(r["rule"], []).append(r)
    return {
        arch: {
            rule: {
                "top1": statistics.mean(r["top1"] for r in rs),
                "top5": statistics.mean(r["top5"] for r in rs),
                "sd": statistics.stdev(r["top1"] for r in rs) if len(rs) > 1 else None,
                "n": len(rs),
            }
            for rule, rs in by_rule.items()
        }
        for arch, by_rule in runs.items()
    }


def table(stats):
    """The markdown table of one arch's ``stats`` (rule -> summary, see :func:`summarise`)."""
    base = stats.get("backprop")
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for rule, s in stats.items():
        sd = f" ± {s['sd']:.1f}" if s["sd"] is not None else ""
        ratio = f"{s['top1'] / base['top1']:.2f}" if base and base["top1"] else "-"
        lines.append(f"| {rule} | {s['top1']:.1f}{sd} | {s['n']} | {ratio} | {s['top5']:.1f} |")
    return "\n".join(lines)


def verdict(a, b, relation):
    """
    Whether ``a`` (a rule's summary) stands in ``relation`` (">=" or ">") to ``b``.

    Returns:
        tuple: ("holds" | "within seed noise" | "reversed" | "one seed only", why).
    """
    diff = a["top1"] - b["top1"]
    in_order = diff > 0 or (diff == 0 and relation == ">=")
    if a["sd"] is None or b["sd"] is None:
        means = "in that order" if in_order else "reversed"
        return "one seed only", f"no spread to compare with; the means are {means}"
    noise = max(a["sd"], b["sd"])
    if abs(diff) < noise:
        return "within seed noise", f"the means differ by {abs(diff):.1f} < sd {noise:.1f}"
    word = "holds" if in_order else "reversed"
    return word, f"the means differ by {diff:+.1f}, sd at most {noise:.1f}"


def ordering(stats):
    """
    The paper's ordering checked on one arch's ``stats``: one line per adjacent pair of the
    ordering's rules that ran (a rule that did not run is skipped, its neighbours compared).

    Returns:
        list[tuple]: (rule, relation, next rule, verdict, why).
    """
    names, relations = zip(*ORDERING)
    ran = [rule for rule in names if rule in stats]
    lines = []
    for a, b in zip(ran, ran[1:]):
        # ">=" only if every step between them in the full ordering is; ">" over a skipped rule.
        between = relations[names.index(a) : names.index(b)]
        relation = ">=" if all(rel == ">=" for rel in between) else ">"
        lines.append((a, relation, b, *verdict(stats[a], stats[b], relation)))
    return lines


def report(rows):
    """The tables and ordering checks of ``rows``, one section per arch, as markdown."""
    parts = []
    for arch, stats in summarise(rows).items():
        seeds = sorted({r["seed"] for r in rows if r["arch"] == arch})
        parts.append(
            f"## {arch}\n\ntop-1 and top-5 (%) on the val split, mean ± sd over seeds {seeds}\n"
        )
        parts.append(table(stats))
        checks = ordering(stats)
        if checks:
            parts.append("\nThe paper's ordering:\n")
            parts += [f"- {a} {rel} {b}: **{word}** ({why})" for a, rel, b, word, why in checks]
        else:
            parts.append("\nThe paper's ordering: fewer than two of its rules ran.")
        parts.append("")
    return "\n".join(parts)


def main():
    from bio_detectron.core.rules import available_rules

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "alexnet"])
    parser.add_argument(
        "--rules", nargs="+", default=available_rules(),
        help="configs/ImageNet/<arch>_<rule>.yaml for each (default: every registered rule)",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--output-dir",
        default="output/classification_table",
        help="runs: DIR/<arch>/<rule>/seed<S>",
    )
    parser.add_argument("--rerun", action="store_true", help="train runs that already finished")
    parser.add_argument("opts", nargs="*", help="config options KEY VALUE after --, for every run")
    args = parser.parse_args()
    try:
        check_configs(args.archs, args.rules)
    except ValueError as e:
        parser.error(str(e))
    own = [k for k in args.opts[0::2] if k in OWN_KEYS]
    if own or len(args.opts) % 2:
        parser.error(f"options {args.opts}: KEY VALUE pairs, without {list(OWN_KEYS)} (set here)")

    rows = [
        run(arch, rule, seed, args.output_dir, args.opts, args.rerun)
        for arch in args.archs
        for rule in args.rules
        for seed in args.seeds
    ]
    os.makedirs(args.output_dir, exist_ok=True)
    record = os.path.join(args.output_dir, "classification.json")
    with open(record, "w") as f:
        json.dump({"opts": args.opts, "runs": rows}, f, indent=1)
    text = report(rows)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    print(f"Runs: {record}")


if __name__ == "__main__":
    sys.exit(main())

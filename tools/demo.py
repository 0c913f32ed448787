#!/usr/bin/env python
"""
``make demo``: train RetinaNet-R18 from scratch on the embedded shapes dataset with each given
learning rule, evaluate COCO bbox AP on its validation split and print one table.

Each rule runs ``tools/train_net.py`` in a process of its own, with
``configs/Shapes-Detection/retinanet_R_18_FPN_<rule>.yaml`` and ``OUTPUT_DIR <output-dir>/<rule>``
(detectron2's full log is ``log.txt`` there). One rule takes about 2.5 minutes on 2 idle CPU
cores (README "Speed"): 800 iterations of training, then COCO evaluation of the 200 validation
images; the first run also generates the dataset (a few seconds).

It ends by drawing the first validation images under every trained model, next to the ground
truth (tools/visualize.py), into one figure, ``<output-dir>/detections.png`` unless ``--figure``.

    python tools/demo.py                                      # sign_symmetry only
    python tools/demo.py --rules backprop sign_symmetry feedback_alignment
    python tools/demo.py --rules backprop -- SOLVER.MAX_ITER 20   # config options after "--"
    python tools/demo.py --configs configs/Textures-Detection --rules backprop kolen_pollack
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "Shapes-Detection")
CONFIG = "retinanet_R_18_FPN_{}.yaml"
HEADER = "| rule | bbox AP | AP50 | AP75 | training time | total time | iterations | output |"


# glibc returns large freed blocks to the system at once and maps them again at the next
# iteration: ~13 million page faults in a demo run. Keeping freed memory for reuse made an
# iteration 6 % faster (README "Speed"); set here for the training processes only.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
    "MALLOC_TOP_PAD_": str(256 << 20),
}


def train(rule, config, output_dir, opts):
    """Run train_net.py for one rule, echoing its progress lines; returns a row of the table."""
    os.makedirs(output_dir, exist_ok=True)
    metrics = os.path.join(output_dir, "metrics.json")
    if os.path.exists(metrics):  # detectron2 appends to it: a stale AP must not be read back
        os.remove(metrics)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py")]
    cmd += ["--config-file", config, "OUTPUT_DIR", output_dir, *opts]
    start, tail, train_time = time.perf_counter(), [], "?"
    pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {**os.environ, **{k: v for k, v in MALLOC_ENV.items() if k not in os.environ}}
    with subprocess.Popen(cmd, cwd=REPO, env=env, **pipe) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if " eta: " in line or "copypaste" in line:
                print(f"[{rule}] {line.split(']: ', 1)[-1]}", end="", flush=True)
            found = re.search(r"Total training time: (\S+)", line)
            train_time = found.group(1) if found else train_time
    total = time.perf_counter() - start
    results = []
    if os.path.exists(metrics):
        with open(metrics) as f:
            results = [r for r in map(json.loads, f) if "bbox/AP" in r]
    if proc.returncode != 0 or not results:
        sys.stdout.write("".join(tail))
        why = f"exit status {proc.returncode}" if proc.returncode else f"no bbox/AP in {metrics}"
        sys.exit(f"demo: training with rule {rule!r} failed ({why}); log: {output_dir}/log.txt")
    r = results[-1]
    shown = os.path.relpath(output_dir)
    return [rule, *(f"{r[k]:.1f}" for k in ("bbox/AP", "bbox/AP50", "bbox/AP75"))] + [
        train_time,
        f"{total / 60:.1f} min",
        str(r["iteration"]),
        output_dir if shown.startswith("..") else shown,
    ]


def draw(configs, labels, output_dirs, figure, opts):
    """The detections of each run's model on the first images of its test set, in one figure."""
    import yaml

    with open(os.path.join(output_dirs[0], "config.yaml")) as f:  # the run's merged config
        dataset = yaml.safe_load(f)["DATASETS"]["TEST"][0]
    cmd = [sys.executable, os.path.join(REPO, "tools", "visualize.py")]
    for config, output_dir in zip(configs, output_dirs):
        cmd += ["--config-file", config]
        cmd += ["--weights", os.path.join(output_dir, "model_final.pth")]
    cmd += ["--dataset", dataset, "--num", "4", "--ground-truth", "--scale", "2"]
    cmd += ["--labels", *labels]  # the configs' names: sign_symmetry_bm's rule is sign_symmetry
    cmd += ["--output", os.path.join(os.path.dirname(figure), "visualize"), "--grid", figure]
    result = subprocess.run(cmd + list(opts), cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stdout.write(result.stdout[-2000:] + result.stderr[-2000:])
        sys.exit(f"demo: drawing the detections failed (exit status {result.returncode})")
    return figure


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", nargs="+", default=["sign_symmetry"], help="rules to train")
    parser.add_argument("--output-dir", default="output/demo", help="runs write to DIR/<rule>")
    parser.add_argument(
        "--configs",
        default=CONFIGS,
        help=f"folder of the {CONFIG.format('<rule>')} files (default: configs/Shapes-Detection)",
    )
    parser.add_argument(
        "--figure", help="the detections figure (default: <output-dir>/detections.png)"
    )
    parser.add_argument("--no-figure", action="store_true", help="do not draw the detections")
    parser.add_argument("opts", nargs="*", help="config options KEY VALUE, passed to every run")
    args = parser.parse_args()
    config = os.path.join(os.path.abspath(args.configs), CONFIG)
    known = sorted(re.search(r"FPN_(\w+)\.yaml$", p)[1] for p in glob.glob(config.format("*")))
    unknown = [r for r in args.rules if r not in known]
    if unknown:
        parser.error(f"--rules {unknown}: no {config.format('<rule>')}; rules with one: {known}")

    output_dirs = [os.path.abspath(os.path.join(args.output_dir, r)) for r in args.rules]
    configs = [config.format(r) for r in args.rules]
    rows = [train(r, c, d, args.opts) for r, c, d in zip(args.rules, configs, output_dirs)]
    print(f"\n{HEADER}\n|" + "---|" * HEADER.count(" | ") + "---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if not args.no_figure:
        figure = os.path.abspath(args.figure or os.path.join(args.output_dir, "detections.png"))
        print(f"\nDetections on the first validation images: {draw(configs, args.rules, output_dirs, figure, args.opts)}")


if __name__ == "__main__":
    main()

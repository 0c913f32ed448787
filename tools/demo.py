#!/usr/bin/env python
"""
``make demo``: train RetinaNet-R18 from scratch on the embedded shapes dataset with each given
learning rule, evaluate COCO bbox AP on its validation split and print one table.

Each rule runs ``tools/train_net.py`` in a process of its own, with
``configs/Shapes-Detection/retinanet_R_18_FPN_<rule>.yaml`` and ``OUTPUT_DIR <output-dir>/<rule>``
(detectron2's full log is ``log.txt`` there). One rule takes about 2.5 minutes on 2 idle CPU
cores (docs/benchmarks.md, "The demo"): 800 iterations of training, then COCO evaluation of the
200 validation images; the first run also generates the dataset (a few seconds).

It ends by drawing the first validation images under every trained model, next to the ground
truth (tools/visualize.py), into one figure, ``<output-dir>/detections.png`` unless ``--figure``.

``--budgets N1 N2 ...`` trains every rule at every budget instead: ``SOLVER.MAX_ITER N``, so the
cosine schedule stretches to the budget, into ``<output-dir>/<rule>/iter<N>``. It writes
``<output-dir>/budgets.json`` (keeping the points of earlier sweeps into the same folder, so rules
and budgets can be added one sweep at a time) and draws AP against iterations, one line per rule,
``<output-dir>/budgets.png`` (tools/plot_budgets.py draws several datasets side by side). A run
whose folder already holds its final AP is reused, and says so (``--rerun`` trains it again), so
an interrupted sweep continues where it stopped.

``--seeds S1 S2 ...`` (with ``--budgets``) trains every point once per seed, ``SEED S``, into
``<output-dir>/<rule>/iter<N>_seed<S>``; the table and the figure give mean ± sample standard
deviation over the seeds, and the fraction of backprop's mean. One sweep writes a folder at a
time: sweeps run side by side go to folders of their own, and ``tools/plot_budgets.py`` counts
the folders of the same configs and options together.

    python tools/demo.py                                      # sign_symmetry only
    python tools/demo.py --rules backprop sign_symmetry feedback_alignment
    python tools/demo.py --rules backprop -- SOLVER.MAX_ITER 20   # config options after "--"
    python tools/demo.py --configs configs/Textures-Detection --rules backprop kolen_pollack
    python tools/demo.py --configs configs/Photos-Detection --rules backprop sign_symmetry \
        --budgets 800 1600 3200 --output-dir output/budgets/photos
    python tools/demo.py --configs configs/Photos-Detection --rules backprop kolen_pollack \
        --budgets 800 1600 --seeds 0 1 2 --output-dir output/seeds/photos
"""

import argparse
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "Shapes-Detection")
CONFIG = "retinanet_R_18_FPN_{}.yaml"
# Written into a run's folder once it finished: what trained it, so that --budgets reuses only runs
# of the same config file, config content and options.
COMMAND_FILE = "demo_command.json"
HEADER = "| rule | bbox AP | AP50 | AP75 | training time | total time | iterations | output |"


# glibc returns large freed blocks to the system at once and maps them again at the next
# iteration: ~13 million page faults in a demo run. Keeping freed memory for reuse made an
# iteration 6 % faster (docs/benchmarks.md, "The demo"); set here for the training processes only.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
    "MALLOC_TOP_PAD_": str(256 << 20),
}


def config_digest(config):
    """sha256 of a yacs config file and the files it inherits (``_BASE_``), in that order."""
    import yaml

    digest, path = hashlib.sha256(), os.path.abspath(config)
    while path:
        with open(path, "rb") as f:
            text = f.read()
        digest.update(text)
        base = (yaml.safe_load(text) or {}).get("_BASE_")
        path = os.path.normpath(os.path.join(os.path.dirname(path), base)) if base else None
    return digest.hexdigest()


def run_command(config, opts):
    """What trained a run: the config file, its content (so an edited config is not reused), the
    options, and the content of the file a ``MODEL.WEIGHTS`` option names (so a run started from
    a checkpoint that was trained again is not reused)."""
    opts = [str(o) for o in opts]
    command = {
        "config": os.path.abspath(config),
        "config_sha256": config_digest(config),
        "opts": opts,
    }
    keys = opts[0::2]
    if "MODEL.WEIGHTS" in keys:
        weights = opts[2 * keys.index("MODEL.WEIGHTS") + 1]
        if os.path.isfile(weights):
            digest = hashlib.sha256()
            with open(weights, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            command["weights_sha256"] = digest.hexdigest()
    return command


def final_result(output_dir, metric):
    """The last record of ``output_dir/metrics.json`` that holds ``metric``, or None."""
    metrics = os.path.join(output_dir, "metrics.json")
    if not os.path.exists(metrics):
        return None
    with open(metrics) as f:
        results = [r for r in map(json.loads, f) if metric in r]
    return results[-1] if results else None


def finished_result(output_dir, command, metric="bbox/AP"):
    """
    The final record (with ``metric``) of a run in ``output_dir`` that finished, wrote
    ``model_final.pth`` and was trained by the same ``command`` (config file and options, as
    :func:`run_tool` records it), or None.
    """
    recorded = os.path.join(output_dir, COMMAND_FILE)
    if not os.path.exists(recorded):
        return None
    with open(recorded) as f:
        if json.load(f) != command:
            return None
    if not os.path.exists(os.path.join(output_dir, "model_final.pth")):
        return None
    return final_result(output_dir, metric)


def finished_row(rule, output_dir, command):
    """The table row of a finished run (see :func:`finished_result`) of ``rule``, or None."""
    r = finished_result(output_dir, command)
    if r is None:
        return None
    return [rule, *(f"{r[k]:.1f}" for k in ("bbox/AP", "bbox/AP50", "bbox/AP75"))] + [
        "reused", "-", str(r["iteration"]), output_dir,
    ]  # fmt: skip


def run_tool(label, tool, config, output_dir, opts, metric="bbox/AP"):
    """
    Run ``tools/<tool>`` (train_net.py, train_imagenet.py) with ``config`` into ``output_dir``,
    echoing its progress lines prefixed with ``label``; exits naming the log when it fails or
    leaves no ``metric`` in metrics.json. Records what trained the run (:func:`run_command`).

    Returns:
        tuple: the last metrics.json record with ``metric``, the training time detectron2
        reports, the seconds the process took.
    """
    os.makedirs(output_dir, exist_ok=True)
    metrics = os.path.join(output_dir, "metrics.json")
    for stale in (metrics, os.path.join(output_dir, COMMAND_FILE)):
        if os.path.exists(stale):  # detectron2 appends to metrics.json: no stale result read back
            os.remove(stale)
    cmd = [sys.executable, os.path.join(REPO, "tools", tool)]
    cmd += ["--config-file", config, "OUTPUT_DIR", output_dir, *opts]
    start, tail, train_time = time.perf_counter(), [], "?"
    pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {**os.environ, **{k: v for k, v in MALLOC_ENV.items() if k not in os.environ}}
    with subprocess.Popen(cmd, cwd=REPO, env=env, **pipe) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if " eta: " in line or "copypaste" in line or "Evaluation on" in line:
                print(f"[{label}] {line.split(']: ', 1)[-1]}", end="", flush=True)
            found = re.search(r"Total training time: (\S+)", line)
            train_time = found.group(1) if found else train_time
    total = time.perf_counter() - start
    result = final_result(output_dir, metric)
    if proc.returncode != 0 or result is None:
        sys.stdout.write("".join(tail))
        why = f"exit status {proc.returncode}" if proc.returncode else f"no {metric} in {metrics}"
        sys.exit(f"demo: {tool} failed for {label!r} ({why}); log: {output_dir}/log.txt")
    with open(os.path.join(output_dir, COMMAND_FILE), "w") as f:
        json.dump(run_command(config, opts), f)
    return result, train_time, total


def train(rule, config, output_dir, opts):
    """Run train_net.py for one rule, echoing its progress lines; returns a row of the table."""
    r, train_time, total = run_tool(rule, "train_net.py", config, output_dir, opts)
    shown = os.path.relpath(output_dir)
    return [rule, *(f"{r[k]:.1f}" for k in ("bbox/AP", "bbox/AP50", "bbox/AP75"))] + [
        train_time,
        f"{total / 60:.1f} min",
        str(r["iteration"]),
        output_dir if shown.startswith("..") else shown,
    ]


def print_table(header, rows):
    """A markdown table: ``header`` ("| a | b |") and rows of cells."""
    print(f"\n{header}\n|" + "---|" * header.count(" | ") + "---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


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


def point_opts(opts, budget, seed):
    """The options that train one point of a sweep: the sweep's, its seed's, then its budget."""
    return [*opts, *([] if seed is None else ["SEED", str(seed)]), "SOLVER.MAX_ITER", str(budget)]


def earlier_runs(record, configs_folder, opts):
    """
    The runs that an earlier sweep into the same folder recorded and that :func:`finished_row`
    would still reuse with these options (same options, unchanged config files, run complete);
    the others are left out of the record, and named.
    """
    if not os.path.isfile(record):
        return []
    with open(record) as f:
        data = json.load(f)
    if data.get("configs") != configs_folder:
        sys.exit(f"demo: {record} holds runs of {data.get('configs')}, not of {configs_folder}")
    kept = []
    for r in data["runs"]:
        config = os.path.join(configs_folder, CONFIG.format(r["rule"]))
        command = run_command(config, point_opts(opts, r["iterations"], r.get("seed")))
        if os.path.isfile(config) and finished_row(r["rule"], r["output"], command) is not None:
            kept.append(r)
        else:
            print(
                f"demo: {r['output']} (options {r.get('opts')}) is not a finished run of "
                f"{config} with the options {opts}: left out"
            )
    return kept


def sweep(rules, configs, output_dir, budgets, opts, rerun, seeds=None):
    """
    Every rule at every budget (and every seed of ``seeds``; None: the config's own ``SEED``);
    writes budgets.json and budgets.png into ``output_dir`` and prints the folder's table.
    """
    from plot_budgets import plot_budgets, table  # tools/, next to this file

    opts, runs = [str(o) for o in opts], []
    for rule, config in zip(rules, configs):
        for budget in budgets:
            for seed in seeds or [None]:
                name = f"iter{budget}" + ("" if seed is None else f"_seed{seed}")
                folder = os.path.abspath(os.path.join(output_dir, rule, name))
                run_opts = point_opts(opts, budget, seed)
                row = None if rerun else finished_row(rule, folder, run_command(config, run_opts))
                label = f"{rule}@{budget}" + ("" if seed is None else f"/seed{seed}")
                if row is not None:
                    print(f"[{label}] reusing the finished run in {folder}")
                else:
                    row = train(label, config, folder, run_opts)
                    row[0] = rule
                runs.append({"rule": rule, "iterations": budget, "seed": seed,
                             "AP": float(row[1]), "AP50": float(row[2]), "AP75": float(row[3]),
                             "training_time": row[4], "output": folder, "opts": opts})  # fmt: skip
    os.makedirs(output_dir, exist_ok=True)
    record = os.path.join(output_dir, "budgets.json")
    folder = os.path.dirname(configs[0])
    new_points = {(r["rule"], r["iterations"], r["seed"]) for r in runs}
    kept = [
        r
        for r in earlier_runs(record, folder, opts)
        if (r["rule"], r["iterations"], r.get("seed")) not in new_points
    ]
    with open(record, "w") as f:
        json.dump({"configs": folder, "runs": kept + runs}, f, indent=1)
    print(f"\nbbox AP, every point of {record}\n{table(kept + runs)}")
    figure = os.path.join(output_dir, "budgets.png")
    plot_budgets([output_dir], figure)
    print(f"\nAP against the budget: {figure}")


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
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=int,
        metavar="N",
        help="train every rule at each of these numbers of iterations; AP against budget",
    )
    parser.add_argument(
        "--rerun", action="store_true", help="with --budgets: train runs that already finished"
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="S",
        help="with --budgets: train every point with each of these SEEDs; mean ± sd over them",
    )
    parser.add_argument("opts", nargs="*", help="config options KEY VALUE, passed to every run")
    args = parser.parse_args()
    config = os.path.join(os.path.abspath(args.configs), CONFIG)
    known = sorted(re.search(r"FPN_(\w+)\.yaml$", p)[1] for p in glob.glob(config.format("*")))
    unknown = [r for r in args.rules if r not in known]
    if unknown:
        parser.error(f"--rules {unknown}: no {config.format('<rule>')}; rules with one: {known}")

    output_dirs = [os.path.abspath(os.path.join(args.output_dir, r)) for r in args.rules]
    configs = [config.format(r) for r in args.rules]
    if args.budgets:
        if any(b < 1 for b in args.budgets) or "SOLVER.MAX_ITER" in args.opts:
            parser.error(
                "--budgets takes positive iteration counts and sets SOLVER.MAX_ITER itself"
            )
        if args.seeds and "SEED" in args.opts[0::2]:
            parser.error("--seeds sets SEED itself: give the seeds to --seeds, not as an option")
        seeds = sorted(set(args.seeds)) if args.seeds else None
        return sweep(
            args.rules, configs, args.output_dir, sorted(set(args.budgets)), args.opts,
            args.rerun, seeds,
        )  # fmt: skip
    if args.seeds:
        parser.error("--seeds goes with --budgets (e.g. --budgets 800 --seeds 0 1 2)")
    rows = [train(r, c, d, args.opts) for r, c, d in zip(args.rules, configs, output_dirs)]
    print_table(HEADER, rows)
    if not args.no_figure:
        figure = os.path.abspath(args.figure or os.path.join(args.output_dir, "detections.png"))
        print(
            "\nDetections on the first validation images: "
            + draw(configs, args.rules, output_dirs, figure, args.opts)
        )


if __name__ == "__main__":
    main()

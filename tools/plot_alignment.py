#!/usr/bin/env python
"""
Plot how learning rules learn, from training output folders.

    tools/plot_alignment.py OUTPUT_DIR [OUTPUT_DIR ...] [-o DIR] [--metric KEY] [--no-layers]

Reads each run's metrics.json (detectron2's JSONWriter: one JSON object per line) and config.yaml
(its MODEL.BIO.RULE labels the run; the folder name when there is none), and writes PNGs into the
first OUTPUT_DIR, or DIR:

* ``alignment_<run>.png`` per run: every converted layer's ``grad_angle``, ``weight_angle`` and
  ``grad_norm_ratio`` (the size of its update over backprop's, on a log scale) over iterations
  (logged with MODEL.BIO.ALIGNMENT.PERIOD > 0), as curves coloured from input to output, with the
  mean over layers, and as a layer x iteration heat map;
* ``curves_<run>[_vs_<run>...].png``: the training loss (``total_loss``) and the evaluation
  metric (``bbox/AP``, or top-1 accuracy for classification; ``--metric`` to choose) of all runs,
  side by side, each run labelled by its rule.
"""

import argparse
import json
import math
import os
import re
from collections import defaultdict

import numpy as np

from bio_detectron._extras import needs_extra
from bio_detectron.core.alignment import SUMMARIES, parse_scalar_name

with needs_extra("plot", "tools/plot_alignment.py"):
    import matplotlib
    import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (metric, title, unit, log scale, the value that means "as backprop's" or "unrelated")
LAYER_PLOTS = (
    ("grad_angle", "gradient angle to backprop (deg)", "degrees", False, 90.0),
    ("weight_angle", "angle W vs B (deg)", "degrees", False, 90.0),
    ("grad_norm_ratio", "update size / backprop's", "ratio", True, 1.0),
)
# Evaluation metrics looked for, in this order, when --metric is not given.
EVAL_METRICS = (
    r"bbox/AP",
    r"(^|/)top-?1(_acc(uracy)?)?$",
    r"(^|/)acc(uracy)?(@1|_top1)?$",
    r"/AP$",
)


class PlotError(Exception):
    pass


class Run:
    """One training output folder: its metrics.json records, name and label."""

    def __init__(self, folder):
        self.folder = folder
        self.name = os.path.basename(os.path.normpath(os.path.abspath(folder)))
        self.records = read_metrics(folder)
        self.label = run_label(folder, self.name)

    def series(self, key):
        """(iterations, values) of one scalar, in iteration order; a resumed run's later values
        of the same iteration win."""
        points = {}
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and "iteration" in r and math.isfinite(v):
                points[r["iteration"]] = float(v)
        iters = sorted(points)
        return np.array(iters, dtype=float), np.array([points[i] for i in iters], dtype=float)


def read_metrics(folder):
    """
    Returns:
        list[dict]: the records of ``folder/metrics.json``. A last line cut short (a run that was
        killed while writing) is left out; a bad line elsewhere is an error.
    """
    path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(path):
        raise PlotError(f"{folder}: no metrics.json there; is it a training OUTPUT_DIR?")
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                continue
            raise PlotError(f"{path}, line {i + 1}: not JSON ({e})") from e
    if not records:
        raise PlotError(f"{path} is empty: the run logged nothing yet")
    return records


def run_label(folder, default):
    """The run's learning rule (MODEL.BIO.RULE, with per-part overrides), else ``default``."""
    path = os.path.join(folder, "config.yaml")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        bio = cfg["MODEL"]["BIO"]
        rule = bio["RULE"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return default
    parts = bio.get("PARTS") or {}
    overrides = [f"{k.lower()}={v}" for k, v in sorted(parts.items()) if v and v != rule]
    return f"{rule} ({', '.join(overrides)})" if overrides else str(rule)


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layer_order(run):
    """
    Returns:
        list[str]: the layers with alignment scalars, from input to output: by their logged
        ``order`` (``named_modules()`` order), the ones without one last, by name.
    """
    order, layers = {}, set()
    for r in run.records:
        for key, value in r.items():
            parsed = parse_scalar_name(key)
            if parsed is None or parsed[0] in SUMMARIES:
                continue
            layers.add(parsed[0])
            if parsed[1] == "order" and parsed[0] not in order:
                order[parsed[0]] = value
    return sorted(layers, key=lambda n: (n not in order, order.get(n, 0), _natural_key(n)))


def _file_name(name):
    return re.sub(r"[^\w.+-]+", "_", name).strip("_") or "run"


def _markers(iters):
    # Sparse series (a short run, a long logging period) would be invisible as bare lines.
    return dict(marker="o", ms=3) if len(iters) < 25 else {}


def plot_layers(run, out_dir):
    """Writes ``alignment_<run>.png`` and returns its path."""
    layers = layer_order(run)
    if not layers:
        raise PlotError(
            f"{run.folder}: metrics.json has no alignment/<layer>/<metric> scalars; train with "
            "MODEL.BIO.ALIGNMENT.PERIOD > 0 (a multiple of the writer period, 20) to log them"
        )
    cmap = plt.get_cmap("viridis")
    colors = [cmap(i / max(len(layers) - 1, 1)) for i in range(len(layers))]
    fig, axes = plt.subplots(
        2,
        len(LAYER_PLOTS),
        figsize=(6.5 * len(LAYER_PLOTS), 8.5),
        gridspec_kw=dict(height_ratios=[1, 1.15]),
        squeeze=False,
    )
    for col, (metric, title, unit, log, reference) in enumerate(LAYER_PLOTS):
        ax, ax_map = axes[0][col], axes[1][col]
        series = [run.series(f"alignment/{name}/{metric}") for name in layers]
        if not any(len(it) for it, _ in series):
            for a in (ax, ax_map):
                a.text(0.5, 0.5, f"no {metric} logged", ha="center", va="center")
                a.set_axis_off()
            continue
        for (it, val), color in zip(series, colors):
            ax.plot(it, val, color=color, lw=0.9, alpha=0.85, **_markers(it))
        it, val = run.series(f"alignment/mean/{metric}")
        ax.plot(it, val, color="black", lw=2.2, ls="--", label="mean over layers", **_markers(it))
        ax.axhline(reference, color="grey", lw=0.6, ls=":")
        ax.set(title=title, xlabel="iteration", ylabel=unit)
        if log:
            ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize=8)
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(layers) - 1))
        bar = fig.colorbar(sm, ax=ax, pad=0.01)
        bar.set_label("layer (forward order)", fontsize=8)
        bar.set_ticks([0, len(layers) - 1])
        bar.set_ticklabels([layers[0], layers[-1]], fontsize=6)

        iters = sorted({i for it, _ in series for i in it})
        column = {i: k for k, i in enumerate(iters)}
        grid = np.full((len(layers), len(iters)), np.nan)
        for row, (it, val) in enumerate(series):
            grid[row, [column[i] for i in it]] = val
        if log:  # a ratio: 1 in the middle of the colours, as far below as above
            positive = grid[grid > 0]
            span = float(np.abs(np.log10(positive)).max()) if positive.size else 1.0
            span = max(span, 0.1)
            norm, colours = matplotlib.colors.LogNorm(10**-span, 10**span), "coolwarm"
            grid = np.where(grid > 0, grid, np.nan)
        else:
            norm = matplotlib.colors.Normalize(0, max(reference, float(np.nanmax(grid))))
            colours = "magma"
        image = ax_map.imshow(grid, aspect="auto", interpolation="nearest", cmap=colours, norm=norm)
        fig.colorbar(image, ax=ax_map, pad=0.01).set_label(unit, fontsize=8)
        step = max(1, math.ceil(len(layers) / 40))
        ax_map.set_yticks(range(0, len(layers), step))
        ax_map.set_yticklabels(layers[::step], fontsize=max(4, 8 - len(layers) // 15))
        ticks = np.unique(np.linspace(0, len(iters) - 1, min(len(iters), 8)).round().astype(int))
        ax_map.set_xticks(ticks)
        ax_map.set_xticklabels([str(int(iters[t])) for t in ticks], fontsize=7)
        ax_map.set(xlabel="iteration", title=f"{metric} per layer")
    fig.suptitle(f"{run.label}: alignment with backprop per layer ({run.name})")
    fig.tight_layout(w_pad=3)
    path = os.path.join(out_dir, f"alignment_{_file_name(run.name)}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def eval_metric(runs, metric=None):
    """The evaluation metric to compare: ``metric`` if given, else the first of
    :data:`EVAL_METRICS` found in any run; None when there is none."""
    keys = sorted({k for run in runs for r in run.records for k in r})
    if metric is not None:
        if metric not in keys:
            folders = ", ".join(run.folder for run in runs)
            raise PlotError(f"--metric {metric!r} is in no metrics.json of {folders}")
        return metric
    for pattern in EVAL_METRICS:
        found = [k for k in keys if re.search(pattern, k, flags=re.IGNORECASE)]
        if found:
            return found[0]
    return None


def plot_curves(runs, out_dir, metric=None):
    """Writes the loss and evaluation curves of all runs into one PNG and returns its path."""
    metric = eval_metric(runs, metric)
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("tab10")
    for k, run in enumerate(runs):
        color = colors(k % 10)
        it, val = run.series("total_loss")
        ax_loss.plot(it, val, color=color, lw=1.2, label=run.label, **_markers(it))
        if metric is not None:
            it, val = run.series(metric)
            ax_eval.plot(it, val, color=color, lw=1.5, marker="o", ms=3, label=run.label)
    ax_loss.set(title="training loss", xlabel="iteration", ylabel="total_loss")
    losses = np.concatenate([run.series("total_loss")[1] for run in runs])
    if len(losses) and losses.min() > 0 and losses.max() > 10 * losses.min():
        ax_loss.set_yscale("log")  # losses falling by orders of magnitude
    ax_loss.legend(fontsize=8)
    if metric is None:
        ax_eval.text(0.5, 0.5, "no evaluation results in metrics.json", ha="center", va="center")
        ax_eval.set_axis_off()
    else:
        ax_eval.set(title=f"evaluation: {metric}", xlabel="iteration", ylabel=metric)
        ax_eval.legend(fontsize=8)
    fig.tight_layout()
    name = "_vs_".join(_file_name(run.name) for run in runs)[:150]
    path = os.path.join(out_dir, f"curves_{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _unique_labels(runs):
    counts = defaultdict(int)
    for run in runs:
        counts[run.label] += 1
    for run in runs:
        if counts[run.label] > 1:
            run.label = f"{run.label} [{run.name}]"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Plot per-layer alignment with backprop, and loss/AP of several runs."
    )
    parser.add_argument("folders", nargs="+", metavar="OUTPUT_DIR", help="training output folders")
    parser.add_argument("-o", "--output", metavar="DIR", help="where to write (default: the first)")
    parser.add_argument("--metric", help="evaluation scalar to compare, e.g. bbox/AP50 or val/top1")
    parser.add_argument("--no-layers", action="store_true", help="only the loss/AP figure")
    args = parser.parse_args(argv)

    try:
        runs = [Run(folder) for folder in args.folders]
    except PlotError as e:
        raise SystemExit(f"plot_alignment: error: {e}")
    _unique_labels(runs)
    out_dir = args.output or args.folders[0]
    os.makedirs(out_dir, exist_ok=True)

    written, errors = [], []
    try:
        written.append(plot_curves(runs, out_dir, args.metric))
    except PlotError as e:
        errors.append(str(e))
    if not args.no_layers:
        for run in runs:
            try:
                written.append(plot_layers(run, out_dir))
            except PlotError as e:
                errors.append(str(e))
    for path in written:
        print(f"wrote {path}")
    if errors:
        raise SystemExit("plot_alignment: error: " + "\n".join(errors))
    return written


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""
Draw bbox AP against the training budget, one line per rule, one panel per dataset, from the
``budgets.json`` that ``tools/demo.py --budgets`` writes into its output folder, and print each
panel's table.

    python tools/plot_budgets.py output/budgets/shapes output/budgets/textures \\
        output/budgets/photos -o docs/figures/budgets.png

A panel is titled by its config folder (e.g. "Photos-Detection"); with ``--relative`` it shows
each rule's AP as a fraction of backprop's at the same budget.

Seeds: where a folder holds several seeds of a point (``tools/demo.py --seeds``), the line goes
through their mean with the sample standard deviation as an error bar, and the table gives
mean ± sd and the number of seeds. Folders of the same config folder and options (the seed apart)
are one panel: sweeps run side by side into folders of their own are drawn and counted together.
Folders with other options are panels of their own, titled with those options; the same seed of the
same point in two folders is refused (it would count twice).
"""

import argparse
import json
import os
import statistics
import sys
import textwrap

from bio_detectron._extras import needs_extra

with needs_extra("plot", "tools/plot_budgets.py"):
    import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# One colour per rule, the same in every panel and figure.
COLORS = {
    "backprop": "black",
    "sign_symmetry": "tab:blue",
    "sign_symmetry_bm": "tab:cyan",
    "kolen_pollack": "tab:green",
    "weight_mirror": "tab:purple",
    "feedback_alignment": "tab:red",
    "feedback_alignment_signed_init": "tab:orange",
    "sign_symmetry_random_magnitude": "tab:olive",
    "direct_feedback_alignment": "tab:brown",
}


def seed_of(run):
    """
    A recorded run's seed and its options without it: ``run["seed"]`` (``tools/demo.py --seeds``),
    else a ``SEED`` option, else None (the config's own ``SEED``).
    """
    opts, seed = [str(o) for o in run.get("opts", [])], run.get("seed")
    keys = opts[0::2]
    if "SEED" in keys:
        i = 2 * keys.index("SEED")
        opts, seed = opts[:i] + opts[i + 2 :], int(opts[i + 1])
    return seed, opts


def read_budgets(folder):
    """The config folder's name and the runs of ``folder/budgets.json``."""
    path = os.path.join(folder, "budgets.json")
    if not os.path.isfile(path):
        raise SystemExit(f"plot_budgets: {path} does not exist; run tools/demo.py --budgets first")
    with open(path) as f:
        data = json.load(f)
    title = os.path.basename(os.path.normpath(data.get("configs", folder)))
    return title, data["runs"]


def panels_of(folders):
    """
    The folders' runs grouped into panels: one per config folder and options (the seed apart).

    Returns:
        list[tuple[str, list[dict]]]: a title and its runs, in the order the folders came.
    """
    panels, seen = {}, {}
    for folder in folders:
        title, runs = read_budgets(folder)
        for run in runs:
            seed, opts = seed_of(run)
            panel = panels.setdefault((title, tuple(opts)), [])
            point = (title, tuple(opts), run["rule"], run["iterations"], seed)
            if point in seen:
                raise SystemExit(
                    f"plot_budgets: {run['rule']} at {run['iterations']} iterations, seed "
                    f"{'of the config' if seed is None else seed}, is in {seen[point]} and in "
                    f"{folder}: give one of the two folders"
                )
            seen[point] = folder
            panel.append(run)
    return [
        (title + (f" ({' '.join(opts)})" if opts else ""), runs)
        for (title, opts), runs in panels.items()
    ]


def summarize(runs):
    """
    Per rule and budget, the mean and sample standard deviation of bbox AP over the runs (seeds).

    Returns:
        dict: ``{rule: {iterations: (mean, sd, n)}}``, backprop first, then the rules in the
        order they first appear; sd is 0.0 for a single run.
    """
    aps = {"backprop": {}} if any(r["rule"] == "backprop" for r in runs) else {}
    for run in runs:
        aps.setdefault(run["rule"], {}).setdefault(run["iterations"], []).append(run["AP"])
    return {
        rule: {
            it: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for it, v in sorted(points.items())
        }
        for rule, points in aps.items()
    }


def table(runs):
    """Markdown table of :func:`summarize`: AP (mean ± sd, seeds), fraction of backprop's."""
    stats = summarize(runs)
    budgets = sorted({r["iterations"] for r in runs})
    base = stats.get("backprop", {})
    lines = ["| rule | " + " | ".join(f"{b} it." for b in budgets) + " |"]
    lines.append("|" + "---|" * (len(budgets) + 1))
    for rule, points in stats.items():
        cells = []
        for b in budgets:
            if b not in points:
                cells.append("–")
                continue
            mean, sd, n = points[b]
            cell = f"{mean:.1f}" + (f" ± {sd:.1f} ({n} seeds)" if n > 1 else "")
            if rule != "backprop" and b in base:
                cell += f" ({mean / base[b][0]:.2f}×)"
            cells.append(cell)
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_budgets(folders, figure, relative=False):
    """One panel per config folder and options (:func:`panels_of`), written to ``figure``."""
    panels = panels_of(folders)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels):
        stats = summarize(runs)
        base = {it: m for it, (m, _, _) in stats.get("backprop", {}).items()}
        for rule, points in stats.items():
            xs = [it for it in points if not relative or base.get(it)]
            scale = [base[it] if relative else 1.0 for it in xs]
            ys = [points[it][0] / s for it, s in zip(xs, scale)]
            errs = [points[it][1] / s for it, s in zip(xs, scale)]
            seeds = {points[it][2] for it in xs}
            label = rule + (f" ({seeds.pop()} seeds)" if len(seeds) == 1 and max(seeds) > 1 else "")
            ax.errorbar(xs, ys, yerr=errs, fmt="o-", capsize=3, label=label, color=COLORS.get(rule))
        budgets = sorted({r["iterations"] for r in runs})
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("iterations (cosine schedule of that length)")
        ax.set_ylabel("bbox AP / backprop's" if relative else "bbox AP")
        ax.set_title(
            textwrap.fill(title, 45, break_long_words=False),
            fontsize=9 if len(title) > 45 else None,
        )
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(figure)), exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    return figure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="output folders of tools/demo.py --budgets")
    parser.add_argument("-o", "--output", required=True, help="the figure to write (.png)")
    parser.add_argument("--relative", action="store_true", help="AP as a fraction of backprop's")
    args = parser.parse_args(argv)
    for title, runs in panels_of(args.folders):
        print(f"{title}, bbox AP\n{table(runs)}\n")
    print(plot_budgets(args.folders, args.output, args.relative))


if __name__ == "__main__":
    sys.exit(main())

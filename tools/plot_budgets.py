#!/usr/bin/env python
"""
Draw bbox AP against the training budget, one line per rule, one panel per dataset, from the
``budgets.json`` that ``tools/demo.py --budgets`` writes into its output folder.

    python tools/plot_budgets.py output/budgets/shapes output/budgets/textures \\
        output/budgets/photos -o docs/figures/budgets.png

A panel is titled by its config folder (e.g. "Photos-Detection"); with ``--relative`` it shows
each rule's AP as a fraction of backprop's at the same budget.
"""

import argparse
import json
import os
import sys

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
}


def read_budgets(folder):
    path = os.path.join(folder, "budgets.json")
    if not os.path.isfile(path):
        raise SystemExit(f"plot_budgets: {path} does not exist; run tools/demo.py --budgets first")
    with open(path) as f:
        data = json.load(f)
    title = os.path.basename(os.path.normpath(data.get("configs", folder)))
    return title, data["runs"]


def plot_budgets(folders, figure, relative=False):
    """One panel per folder (a ``tools/demo.py --budgets`` output), written to ``figure``."""
    panels = [read_budgets(f) for f in folders]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels):
        rules = list(dict.fromkeys(r["rule"] for r in runs))
        base = {r["iterations"]: r["AP"] for r in runs if r["rule"] == "backprop"}
        for rule in rules:
            points = sorted((r["iterations"], r["AP"]) for r in runs if r["rule"] == rule)
            if relative:
                points = [(i, ap / base[i]) for i, ap in points if base.get(i)]
            xs, ys = zip(*points) if points else ((), ())
            ax.plot(xs, ys, "o-", label=rule, color=COLORS.get(rule))
        budgets = sorted({r["iterations"] for r in runs})
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("iterations (cosine schedule of that length)")
        ax.set_ylabel("bbox AP / backprop's" if relative else "bbox AP")
        ax.set_title(title)
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
    print(plot_budgets(args.folders, args.output, args.relative))


if __name__ == "__main__":
    sys.exit(main())

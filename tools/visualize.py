#!/usr/bin/env python
"""
Draw the detections of one or more trained models with detectron2's ``Visualizer``.

    python tools/visualize.py --config-file CFG --weights PTH [--config-file CFG2 --weights PTH2]
        (--dataset NAME | --input IMAGE [IMAGE ...]) [--num N] [--output DIR] [--score-threshold T]
        [--labels L [L ...]] [--ground-truth] [--scale S] [--grid FILE] [KEY VALUE ...]

Writes ``DIR/<image stem>.png`` per image: one panel per model, side by side, each titled with
its label (its ``MODEL.BIO.RULE`` unless ``--labels``), after a "ground truth" panel with
``--ground-truth`` (``--dataset`` only). ``--grid FILE`` also stacks those rows into one figure,
titled once. Trailing ``KEY VALUE`` config options apply to every model. ``--dataset`` takes the
first N images of a registered dataset (its metadata names the classes); ``--input`` takes image
files (classes from the first config's ``DATASETS.TEST[0]``). The drawing is
``bio_detectron.visualize`` (``draw_detections``; ``figure`` for tools/demo.py).
"""

import argparse
import os
import re

import bio_detectron  # noqa: F401  (registers backbones, heads, meta-architectures, datasets)
from bio_detectron.visualize import VisualizeError, draw_detections

# A config key such as MODEL.DEVICE: where --input's file list ends and the config options begin.
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", action="append", required=True, metavar="FILE")
    parser.add_argument("--weights", action="append", required=True, metavar="PTH")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a registered dataset, e.g. shapes_val")
    source.add_argument("--input", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--num", type=int, default=4, help="first N images of --dataset")
    parser.add_argument("--output", default="output/visualize", metavar="DIR")
    parser.add_argument("--score-threshold", type=float, default=0.5, metavar="T")
    parser.add_argument("--labels", nargs="+", help="panel titles, one per model")
    parser.add_argument("--ground-truth", action="store_true", help="a panel of the annotations")
    parser.add_argument("--scale", type=float, default=1.0, help="panel size / image size")
    parser.add_argument("--grid", metavar="FILE", help="also write all images in one figure")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config options KEY VALUE")
    return parser


def check_args(args):
    """Move config options that argparse gave to --input or --labels (whichever came last) into
    opts, where they belong; refuse as many --config-file as --weights. ``draw_detections``
    checks the rest (files, --labels and --num, --ground-truth with --input)."""
    for name in ("input", "labels"):
        values = getattr(args, name) or []
        keys = [i for i, x in enumerate(values) if CONFIG_KEY.match(x) and not os.path.exists(x)]
        if keys:
            setattr(args, name, values[: keys[0]])
            args.opts = values[keys[0] :] + args.opts
    if len(args.config_file) != len(args.weights):
        raise VisualizeError(
            f"{len(args.config_file)} --config-file but {len(args.weights)} --weights: give one "
            f"--weights per --config-file, in the same order ({args.config_file} / {args.weights})"
        )


def main(args):
    """
    Returns:
        list[str]: the PNGs written, ``<output>/<image stem>.png`` per image (not the grid).
    """
    check_args(args)
    return draw_detections(
        list(zip(args.config_file, args.weights)),
        dataset=args.dataset,
        inputs=args.input,
        num=args.num,
        output=args.output,
        score_threshold=args.score_threshold,
        labels=args.labels,
        show_ground_truth=args.ground_truth,
        scale=args.scale,
        grid=args.grid,
        opts=args.opts,
    )


if __name__ == "__main__":
    try:
        main(argument_parser().parse_args())
    except VisualizeError as e:
        raise SystemExit(f"visualize: error: {e}")

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
files (classes from the first config's ``DATASETS.TEST[0]``). :func:`figure` makes one figure of
a dataset's first images under several models (``--grid``), for tools/demo.py.
"""

import argparse
import os
import re
import warnings

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import annotations_to_instances, read_image
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, Visualizer, VisImage
from PIL import Image

import bio_detectron  # noqa: F401  (registers backbones, heads, meta-architectures, datasets)
from bio_detectron.config import add_bio_config, fall_back_to_cpu
from bio_detectron.data import ensure_dataset_files
from bio_detectron.engine import BioTrainer

# Layout of a figure, in pixels whatever --scale: a title band above each column of panels, a
# white gap between panels (and between the rows of a --grid).
TITLE_HEIGHT = 20
GAP = 4
# A config key such as MODEL.DEVICE: where --input's file list ends and the config options begin.
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


class VisualizeError(Exception):
    pass


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


def setup(config_file, opts):
    """The config of one model, as tools/train_net.py makes it."""
    if not os.path.isfile(config_file):
        raise VisualizeError(f"--config-file {config_file}: no such file")
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    fall_back_to_cpu(cfg)
    cfg.freeze()
    return cfg


class KeepingCheckpointer(DetectionCheckpointer):
    """
    Keeps what ``load()`` only logs: the parameters the file lacks or has in another shape.
    ``_load_model`` is the seam detectron2's own checkpointer overrides to adjust them;
    tests/test_visualize.py fails if it stops being called.
    """

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_model(cfg, weights):
    """
    The project's trainer's model with ``weights`` loaded, in eval mode. Weights that leave
    parameters of the model unloaded are an error: the figure would show random weights.
    """
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise VisualizeError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: only RGB and BGR are drawn")
    model = BioTrainer.build_model(cfg)
    checkpointer = KeepingCheckpointer(model)
    checkpointer.load(weights)
    wrong = checkpointer.incompatible
    unloaded = sorted(set(wrong.missing_keys) | {k for k, *_ in wrong.incorrect_shapes})
    if unloaded:
        raise VisualizeError(
            f"--weights {weights} does not fit the model of its --config-file: it lacks "
            f"{len(unloaded)} of its parameters or has them in other shapes ({unloaded[0]}, ...)"
        )
    return model.eval()


def predict(cfg, model, image_rgb):
    """
    ``DefaultPredictor.__call__`` for an RGB image: detectron2's test-time resize, then the model.

    Returns:
        Instances: on the CPU, in the coordinates of ``image_rgb`` (H, W, 3).
    """
    image = image_rgb if cfg.INPUT.FORMAT == "RGB" else image_rgb[:, :, ::-1]
    height, width = image.shape[:2]
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
    with torch.no_grad():
        outputs = model([{"image": tensor, "height": height, "width": width}])[0]
    return outputs["instances"].to("cpu")


def read_rgb(path):
    if not os.path.isfile(path):
        raise VisualizeError(f"image {path}: no such file")
    try:
        return read_image(path, format="RGB")
    except OSError as e:  # PIL's errors, UnidentifiedImageError included, are OSErrors
        raise VisualizeError(f"cannot read image {path}: {e}") from e


def title_band(text, width):
    """A white band of ``TITLE_HEIGHT`` x ``width`` pixels with ``text`` centred."""
    band = VisImage(np.full((TITLE_HEIGHT, width, 3), 255, np.uint8))
    # The largest font up to 13 px whose text fits (a sans-serif letter is ~0.6 em wide), in
    # points, as matplotlib wants it.
    pixels = min(13, 0.95 * width / (0.6 * max(len(text), 1)))
    size = pixels * 72 / band.dpi
    band.ax.text(width / 2, TITLE_HEIGHT / 2, text, size=size, ha="center", va="center")
    return band.get_image()


def join(images, axis):
    """Concatenate along ``axis`` (0: rows, 1: columns) with ``GAP`` white pixels between, the
    images padded white at the end of the other axis to the largest."""
    other = 1 - axis
    size = max(x.shape[other] for x in images)
    padded = []
    for i, x in enumerate(images):
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[axis], pad[other] = (GAP if i else 0, 0), (0, size - x.shape[other])
        padded.append(np.pad(x, pad, constant_values=255))
    return np.concatenate(padded, axis=axis)


def compose(rows, titles):
    """
    One figure: a title band above each column, then the rows of panels; ``GAP`` white pixels
    between panels and between rows.

    Args:
        rows: list of rows, each a list of panels (H, W, 3) uint8 RGB, one per title.
        titles: one per column.

    Returns:
        ndarray: (TITLE_HEIGHT + sum of row heights + GAP * (rows - 1),
        sum of panel widths + GAP * (columns - 1), 3) uint8 RGB, for panels of one size per
        column.
    """
    header = join([title_band(t, p.shape[1]) for t, p in zip(titles, rows[0])], axis=1)
    body = join([join(row, axis=1) for row in rows], axis=0)
    header = np.pad(
        header, ((0, 0), (0, body.shape[1] - header.shape[1]), (0, 0)), constant_values=255
    )
    return np.concatenate([header, body], axis=0)


def class_colors(metadata):
    """
    A copy of ``metadata`` with a fixed colour per class (detectron2's palette, unless it has
    ``thing_colors``), so that a class looks the same in every panel; ``metadata`` itself when it
    names no classes (then ``Visualizer`` picks a random colour per instance).
    """
    classes = metadata.get("thing_classes", None)
    if classes is None or metadata.get("thing_colors", None) is not None:
        return metadata
    palette = colormap(rgb=True, maximum=255).tolist()
    colors = [palette[i % len(palette)] for i in range(len(classes))]
    return Metadata(**{**metadata.as_dict(), "thing_colors": colors})


def ground_truth(record, masks):
    """
    The annotations of a dataset dict (crowd regions left out) as the fields of Instances that
    ``Visualizer.draw_instance_predictions`` draws, so that they are drawn like detections; with
    their masks only when ``masks`` (when some model predicts masks: next to box-only detections,
    opaque masks would hide the objects).
    """
    annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    size = (record["height"], record["width"])
    gt = annotations_to_instances(annotations, size, mask_format="bitmask")
    instances = Instances(size, pred_boxes=gt.gt_boxes, pred_classes=gt.gt_classes)
    if masks and gt.has("gt_masks"):
        instances.pred_masks = gt.gt_masks.tensor
    return instances


def draw(image, instances, metadata, scale):
    """One panel: (H * scale, W * scale, 3) uint8 RGB."""
    mode = ColorMode.SEGMENTATION if metadata.get("thing_colors", None) else ColorMode.IMAGE
    visualizer = Visualizer(image, metadata, scale=scale, instance_mode=mode)
    return visualizer.draw_instance_predictions(instances, jittering=False).get_image()


def write_png(image, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def load_images(args, cfg):
    """
    Returns:
        list[(str, ndarray, dict or None)]: per image its PNG name (the image's file stem), the
            image (H, W, 3) RGB and its dataset dict (``--dataset``);
        Metadata: names the classes (``--dataset``'s, else ``cfg.DATASETS.TEST[0]``'s).
    """
    if args.dataset is not None:
        if args.dataset not in DatasetCatalog.list():
            raise VisualizeError(
                f"--dataset {args.dataset!r} is not registered; registered: "
                f"{sorted(DatasetCatalog.list())}"
            )
        ensure_dataset_files(args.dataset)
        records = DatasetCatalog.get(args.dataset)[: args.num]
        metadata = MetadataCatalog.get(args.dataset)
    else:
        records = [None] * len(args.input)
        test = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
        if test in DatasetCatalog.list():
            metadata = MetadataCatalog.get(test)
        else:
            warnings.warn(
                f"DATASETS.TEST={tuple(cfg.DATASETS.TEST)} of {args.config_file[0]} names no "
                "registered dataset: the panels show class indices instead of class names"
            )
            metadata = Metadata()
    paths = args.input or [r["file_name"] for r in records]
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise VisualizeError(
            f"several images are named {twice}: each would overwrite the other's PNG"
        )
    return [(s, read_rgb(p), r) for s, p, r in zip(stems, paths, records)], metadata


def check_args(args):
    """Move config options that argparse gave to --input or --labels (whichever came last) into
    opts, where they belong; refuse bad combinations."""
    for name in ("input", "labels"):
        values = getattr(args, name) or []
        keys = [i for i, x in enumerate(values) if CONFIG_KEY.match(x) and not os.path.exists(x)]
        if keys:
            setattr(args, name, values[: keys[0]])
            args.opts = values[keys[0] :] + args.opts
    if args.input is not None:
        if not args.input:
            raise VisualizeError("--input names no image file")
        if args.ground_truth:
            raise VisualizeError("--ground-truth needs --dataset (image files have no annotations)")
    if len(args.config_file) != len(args.weights):
        raise VisualizeError(
            f"{len(args.config_file)} --config-file but {len(args.weights)} --weights: give one "
            f"--weights per --config-file, in the same order ({args.config_file} / {args.weights})"
        )
    for weights in args.weights:
        if "://" not in weights and not os.path.isfile(weights):  # detectron2:// URLs are fine
            raise VisualizeError(f"--weights {weights}: no such file")
    if args.labels is not None and len(args.labels) != len(args.config_file):
        raise VisualizeError(
            f"--labels {args.labels}: {len(args.labels)} labels for {len(args.config_file)} models"
        )
    if args.num < 1:
        raise VisualizeError(f"--num {args.num}: must be at least 1")


def main(args):
    """
    Returns:
        list[str]: the PNGs written, ``<output>/<image stem>.png`` per image (not the grid).
    """
    check_args(args)
    cfgs = [setup(f, args.opts) for f in args.config_file]
    images, metadata = load_images(args, cfgs[0])
    metadata = class_colors(metadata)
    models = [load_model(cfg, w) for cfg, w in zip(cfgs, args.weights)]
    titles = args.labels or [cfg.MODEL.BIO.RULE for cfg in cfgs]
    titles = (["ground truth"] if args.ground_truth else []) + list(titles)

    masks = any(cfg.MODEL.MASK_ON for cfg in cfgs)
    rows, written = [], []
    for stem, image, record in images:
        row = []
        if args.ground_truth:
            row.append(draw(image, ground_truth(record, masks), metadata, args.scale))
        for cfg, model in zip(cfgs, models):
            instances = predict(cfg, model, image)
            instances = instances[instances.scores >= args.score_threshold]
            row.append(draw(image, instances, metadata, args.scale))
        rows.append(row)
        written.append(write_png(compose([row], titles), os.path.join(args.output, stem + ".png")))
        print(written[-1])
    if args.grid:
        print(write_png(compose(rows, titles), args.grid))
    return written


def figure(
    models, grid, dataset="shapes_val", num=4, scale=2.0, output="output/visualize", opts=()
):
    """
    One figure of the first ``num`` images of ``dataset``: the ground truth, then each model's
    detections, titled with its ``MODEL.BIO.RULE``; panels twice the image size by default (the
    shapes images are 160 px). The per-image PNGs go to ``output``.

    Args:
        models: list of (config file, weights file).
        grid: the PNG to write, e.g. "docs/figures/detections_backprop_vs_sign_symmetry.png".
        opts: config options KEY VALUE for every model.

    Returns:
        str: ``grid``.
    """
    argv = [
        x for config, weights in models for x in ("--config-file", config, "--weights", weights)
    ]
    argv += ["--dataset", dataset, "--num", str(num), "--ground-truth", "--scale", str(scale)]
    main(argument_parser().parse_args(argv + ["--output", output, "--grid", grid, *opts]))
    return grid


if __name__ == "__main__":
    try:
        main(argument_parser().parse_args())
    except VisualizeError as e:
        raise SystemExit(f"visualize: error: {e}")

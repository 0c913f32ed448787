"""
Detections of several trained models side by side, drawn with Detectron2's ``Visualizer``: the
library behind ``tools/visualize.py`` and the demo's figure.

One figure per image: a panel per model, each titled with its label (its ``MODEL.BIO.RULE`` by
default), after a "ground truth" panel when asked; one colour per class in every panel. A grid
stacks those rows into one figure, titled once. :func:`draw_detections` does what the command line
does; :func:`figure` is its preset for the first images of a dataset, ground truth first.

Loading the models and images and predicting are here; the layout and drawing are in
:mod:`bio_detectron.visualize.drawing`. Not imported by ``import bio_detectron`` (drawing imports
matplotlib, which training does not need). Errors in what is asked for raise
:class:`VisualizeError`, named in the command line's terms (``--weights``, ``--dataset``, ...).
"""

import os
import warnings

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from ..config import add_bio_config, check_model_device
from ..data import ensure_dataset_files
from .drawing import class_colors, compose, draw, ground_truth, write_png

__all__ = [
    "VisualizeError",
    "KeepingCheckpointer",
    "draw_detections",
    "figure",
    "load_images",
    "load_model",
    "predict",
    "read_rgb",
    "setup_cfg",
]


class VisualizeError(Exception):
    """A bad request: a missing file, weights that do not fit, a bad combination of arguments."""


def setup_cfg(config_file, opts):
    """
    The config of one model, as ``tools/train_net.py`` makes it (without ``default_setup``).

    Args:
        config_file (str): a yacs config file.
        opts (list[str]): config options KEY VALUE, merged after the file.

    Returns:
        CfgNode: frozen.

    Raises:
        ValueError: ``MODEL.DEVICE`` names CUDA on a machine without it (the error says how to
            choose the CPU).
    """
    if not os.path.isfile(config_file):
        raise VisualizeError(f"--config-file {config_file}: no such file")
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    check_model_device(cfg)
    cfg.freeze()
    return cfg


class KeepingCheckpointer(DetectionCheckpointer):
    """
    Keeps what ``load()`` only logs, in ``self.incompatible``: the parameters the file lacks or
    has in another shape. ``_load_model`` is private, but it is the seam detectron2's own
    checkpointer overrides to adjust them; tests/test_upstream_internals.py fails if ``load()``
    stops calling it.
    """

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_model(cfg, weights):
    """
    The model of ``cfg`` with ``weights`` loaded, in eval mode. Weights that leave
    parameters of the model unloaded are an error: the figure would show random weights.

    Args:
        cfg (CfgNode): the model's config; ``INPUT.FORMAT`` "RGB" or "BGR".
        weights (str): a checkpoint file or a URL detectron2's checkpointer opens.

    Returns:
        nn.Module: detectron2's ``build_model(cfg)`` (``import bio_detectron`` registered this
        package's architectures), loaded, in eval mode.
    """
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise VisualizeError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: only RGB and BGR are drawn")
    model = build_model(cfg)
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

    Args:
        cfg (CfgNode): the model's config (``INPUT.FORMAT``, ``INPUT.{MIN,MAX}_SIZE_TEST``).
        model (nn.Module): from :func:`load_model`.
        image_rgb (ndarray): (H, W, 3) uint8 RGB.

    Returns:
        Instances: on the CPU, in the coordinates of ``image_rgb``.
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
    """
    Returns:
        ndarray: the image file ``path`` as (H, W, 3) uint8 RGB.
    """
    if not os.path.isfile(path):
        raise VisualizeError(f"image {path}: no such file")
    try:
        return read_image(path, format="RGB")
    except OSError as e:  # PIL's errors, UnidentifiedImageError included, are OSErrors
        raise VisualizeError(f"cannot read image {path}: {e}") from e


def load_images(cfg, config_file, dataset=None, inputs=None, num=4):
    """
    The images to draw: the first ``num`` of a registered ``dataset``, or the files ``inputs``.

    Args:
        cfg (CfgNode): the first model's config; its ``DATASETS.TEST[0]`` names the classes of
            ``inputs``.
        config_file (str): its file, named in the warning when that dataset is not registered.
        dataset (str): a registered dataset; or
        inputs (list[str]): image files.
        num (int): how many of ``dataset``'s images.

    Returns:
        list[(str, ndarray, dict or None)]: per image its PNG name (the image's file stem), the
            image (H, W, 3) RGB and its dataset dict (``dataset`` only);
        Metadata: names the classes (``dataset``'s, else ``cfg.DATASETS.TEST[0]``'s).
    """
    if dataset is not None:
        if dataset not in DatasetCatalog.list():
            raise VisualizeError(
                f"--dataset {dataset!r} is not registered; registered: "
                f"{sorted(DatasetCatalog.list())}"
            )
        ensure_dataset_files(dataset)
        records = DatasetCatalog.get(dataset)[:num]
        metadata = MetadataCatalog.get(dataset)
    else:
        records = [None] * len(inputs)
        test = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
        if test in DatasetCatalog.list():
            metadata = MetadataCatalog.get(test)
        else:
            warnings.warn(
                f"DATASETS.TEST={tuple(cfg.DATASETS.TEST)} of {config_file} names no "
                "registered dataset: the panels show class indices instead of class names"
            )
            metadata = Metadata()
    paths = inputs or [r["file_name"] for r in records]
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise VisualizeError(
            f"several images are named {twice}: each would overwrite the other's PNG"
        )
    return [(s, read_rgb(p), r) for s, p, r in zip(stems, paths, records)], metadata


def _check_request(models, dataset, inputs, labels, num, show_ground_truth):
    if (dataset is None) == (inputs is None):
        raise VisualizeError(f"give a dataset or image files, not {dataset=!r} and {inputs=!r}")
    if inputs is not None:
        if not inputs:
            raise VisualizeError("--input names no image file")
        if show_ground_truth:
            raise VisualizeError("--ground-truth needs --dataset (image files have no annotations)")
    if not models:
        raise VisualizeError("no model to draw: give one (config file, weights file) at least")
    for _, weights in models:
        if "://" not in weights and not os.path.isfile(weights):  # detectron2:// URLs are fine
            raise VisualizeError(f"--weights {weights}: no such file")
    if labels is not None and len(labels) != len(models):
        raise VisualizeError(f"--labels {labels}: {len(labels)} labels for {len(models)} models")
    if num < 1:
        raise VisualizeError(f"--num {num}: must be at least 1")


def draw_detections(
    models,
    *,
    dataset=None,
    inputs=None,
    num=4,
    output="output/visualize",
    score_threshold=0.5,
    labels=None,
    show_ground_truth=False,
    scale=1.0,
    grid=None,
    opts=(),
):
    """
    Draw the detections of ``models`` on each image, side by side, and write one PNG per image
    (printing each path as it is written).

    Args:
        models: list of (config file, weights file), one panel each, in this order.
        dataset (str): the first ``num`` images of this registered dataset, whose metadata names
            the classes; or
        inputs (list[str]): image files, with classes from the first config's
            ``DATASETS.TEST[0]``.
        num (int): how many of ``dataset``'s images.
        output (str): the folder of the PNGs, ``<image stem>.png`` each.
        score_threshold (float): detections scoring less are not drawn.
        labels (list[str]): panel titles, one per model; default: each model's ``MODEL.BIO.RULE``.
        show_ground_truth (bool): a "ground truth" panel first (``dataset`` only).
        scale (float): panel size / image size.
        grid (str): if given, also write all rows into this one PNG, titled once.
        opts (list[str]): config options KEY VALUE for every model.

    Returns:
        list[str]: the PNGs written, ``<output>/<image stem>.png`` per image (not the grid).
    """
    _check_request(models, dataset, inputs, labels, num, show_ground_truth)
    cfgs = [setup_cfg(config, opts) for config, _ in models]
    images, metadata = load_images(cfgs[0], models[0][0], dataset, inputs, num)
    metadata = class_colors(metadata)
    nets = [load_model(cfg, weights) for cfg, (_, weights) in zip(cfgs, models)]
    titles = labels or [cfg.MODEL.BIO.RULE for cfg in cfgs]
    titles = (["ground truth"] if show_ground_truth else []) + list(titles)

    masks = any(cfg.MODEL.MASK_ON for cfg in cfgs)
    rows, written = [], []
    for stem, image, record in images:
        row = []
        if show_ground_truth:
            row.append(draw(image, ground_truth(record, masks), metadata, scale))
        for cfg, net in zip(cfgs, nets):
            instances = predict(cfg, net, image)
            instances = instances[instances.scores >= score_threshold]
            row.append(draw(image, instances, metadata, scale))
        rows.append(row)
        written.append(write_png(compose([row], titles), os.path.join(output, stem + ".png")))
        print(written[-1])
    if grid:
        print(write_png(compose(rows, titles), grid))
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
        grid: the PNG to write, e.g. "docs/figures/detections_shapes.png".
        opts: config options KEY VALUE for every model.

    Returns:
        str: ``grid``.
    """
    draw_detections(
        models,
        dataset=dataset,
        num=num,
        output=output,
        show_ground_truth=True,
        scale=scale,
        grid=grid,
        opts=opts,
    )
    return grid

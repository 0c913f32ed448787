"""
The layout and drawing of detection figures: panels titled and joined into rows and grids, one
colour per class, detections and ground truth drawn with Detectron2's ``Visualizer``.
"""

import os

import numpy as np
from detectron2.data import Metadata
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer
from PIL import Image

__all__ = [
    "GAP",
    "TITLE_HEIGHT",
    "class_colors",
    "compose",
    "draw",
    "ground_truth",
    "title_band",
    "write_png",
]

# Layout of a figure, in pixels whatever the scale: a title band above each column of panels, a
# white gap between panels (and between the rows of a grid).
TITLE_HEIGHT = 20
GAP = 4


def title_band(text, width):
    """
    Returns:
        ndarray: (TITLE_HEIGHT, width, 3) uint8 RGB, white with ``text`` centred.
    """
    band = VisImage(np.full((TITLE_HEIGHT, width, 3), 255, np.uint8))
    # The largest font up to 13 px whose text fits (a sans-serif letter is ~0.6 em wide), in
    # points, as matplotlib wants it.
    pixels = min(13, 0.95 * width / (0.6 * max(len(text), 1)))
    size = pixels * 72 / band.dpi
    band.ax.text(width / 2, TITLE_HEIGHT / 2, text, size=size, ha="center", va="center")
    return band.get_image()


def _join(images, axis):
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
    header = _join([title_band(t, p.shape[1]) for t, p in zip(titles, rows[0])], axis=1)
    body = _join([_join(row, axis=1) for row in rows], axis=0)
    header = np.pad(
        header, ((0, 0), (0, body.shape[1] - header.shape[1]), (0, 0)), constant_values=255
    )
    return np.concatenate([header, body], axis=0)


def class_colors(metadata):
    """
    A fixed colour per class, so that a class looks the same in every panel.

    Args:
        metadata (Metadata): may name ``thing_classes`` and ``thing_colors``.

    Returns:
        Metadata: a copy of ``metadata`` with ``thing_colors`` from detectron2's palette, unless
        it has them; ``metadata`` itself when it names no classes (then ``Visualizer`` picks a
        random colour per instance).
    """
    classes = metadata.get("thing_classes", None)
    if classes is None or metadata.get("thing_colors", None) is not None:
        return metadata
    palette = colormap(rgb=True, maximum=255).tolist()
    colors = [palette[i % len(palette)] for i in range(len(classes))]
    return Metadata(**{**metadata.as_dict(), "thing_colors": colors})


def ground_truth(record, masks):
    """
    The annotations of a dataset dict, so that they are drawn like detections.

    Args:
        record (dict): a dataset dict with ``height``, ``width`` and ``annotations``; crowd
            regions are left out.
        masks (bool): with the annotations' masks, if they have any. Give it when some model
            predicts masks: next to box-only detections, opaque masks would hide the objects.

    Returns:
        Instances: ``pred_boxes``, ``pred_classes`` and with ``masks`` ``pred_masks``
        (N, H, W) bool: the fields ``Visualizer.draw_instance_predictions`` draws.
    """
    annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    size = (record["height"], record["width"])
    gt = annotations_to_instances(annotations, size, mask_format="bitmask")
    instances = Instances(size, pred_boxes=gt.gt_boxes, pred_classes=gt.gt_classes)
    if masks and gt.has("gt_masks"):
        instances.pred_masks = gt.gt_masks.tensor
    return instances


def draw(image, instances, metadata, scale):
    """
    One panel.

    Args:
        image (ndarray): (H, W, 3) uint8 RGB.
        instances (Instances): detections, or :func:`ground_truth`.
        metadata (Metadata): from :func:`class_colors`: with ``thing_colors`` every instance is
            drawn in its class's colour.
        scale (float): panel size / image size.

    Returns:
        ndarray: (H * scale, W * scale, 3) uint8 RGB.
    """
    mode = ColorMode.SEGMENTATION if metadata.get("thing_colors", None) else ColorMode.IMAGE
    visualizer = Visualizer(image, metadata, scale=scale, instance_mode=mode)
    return visualizer.draw_instance_predictions(instances, jittering=False).get_image()


def write_png(image, path):
    """Write ``image`` (H, W, 3) uint8 RGB to ``path``, making its folder; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)
    return path

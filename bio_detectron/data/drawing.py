"""Drawing helpers shared by the dataset generators: random colours and polygon masks."""

import colorsys
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = ["Layout", "box_intersection", "finish", "hsv_color", "place_objects", "polygon_mask"]


def hsv_color(
    rng: np.random.Generator, sat: Tuple[float, float], val: Tuple[float, float]
) -> Tuple[int, int, int]:
    """A random RGB colour (0-255) of any hue, with saturation and value drawn from the ranges."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def polygon_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """
    The pixels inside a polygon, rasterised by pycocotools: the same code that turns a COCO json's
    polygons into training masks (detectron2's ``polygons_to_bitmask``), so that a generator that
    paints exactly these pixels teaches exactly the mask it writes.

    Args:
        poly: (N, 2) vertices in COCO pixel coordinates (pixel (i, j) covers [i, i+1)).

    Returns:
        ndarray: bool (height, width).
    """
    rle = mask_utils.frPyObjects([poly.reshape(-1).tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


def box_intersection(a, b) -> float:
    """The area two boxes ``[x0, y0, x1, y1]`` share."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


@dataclass(frozen=True)
class Layout:
    """
    How a generator places objects in a detection image.

    Attributes:
        num_objects: (fewest, most) objects per image; an image gets a number drawn uniformly in
            this range, fewer when they do not fit.
        scale_range: the objects' size as a fraction of the image side, drawn log-uniformly (small
            and large objects equally common); what "size" is (a diameter, a side) is the
            generator's.
        max_occlusion: the largest fraction of an earlier object's box a later one may cover, so
            every object stays mostly visible.
    """

    num_objects: Tuple[int, int]
    scale_range: Tuple[float, float]
    max_occlusion: float


def place_objects(
    rng: np.random.Generator,
    layout: Layout,
    num_classes: int,
    place: Callable[[int, float, List[Dict]], Optional[Dict]],
) -> List[Dict]:
    """
    The objects of one image, with bounded retries (a crowded image keeps fewer). Each try draws a
    class and a size (see :class:`Layout`) and calls ``place(category, fraction, objects so
    far)``, which draws the object and returns its dict, or returns None where it does not fit.
    """
    wanted = int(rng.integers(layout.num_objects[0], layout.num_objects[1] + 1))
    objects: List[Dict] = []
    log_lo, log_hi = math.log(layout.scale_range[0]), math.log(layout.scale_range[1])
    for _ in range(wanted * 10):
        if len(objects) == wanted:
            break
        category = int(rng.integers(num_classes))
        placed = place(category, math.exp(rng.uniform(log_lo, log_hi)), objects)
        if placed is not None:
            objects.append(placed)
    return objects


def finish(pixels: np.ndarray, rng: np.random.Generator, noise_std: float) -> Image.Image:
    """Fine pixel noise over a float (H, W, 3) image, so that nothing is a perfectly flat colour."""
    pixels = pixels + rng.normal(0.0, noise_std, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")

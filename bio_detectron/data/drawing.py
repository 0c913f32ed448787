"""Drawing helpers shared by the dataset generators: random colours and polygon masks."""

import colorsys
from typing import Tuple

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["hsv_color", "polygon_mask"]


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

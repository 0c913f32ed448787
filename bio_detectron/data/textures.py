"""
Embedded "textures" detection dataset: objects told apart by their texture alone.

A second generated detection set of another kind than :mod:`bio_detectron.data.shapes`: there,
the class is an object's outline; here every object is a random blob (a smooth, irregular closed
curve), a polygon or an ellipse whatever its class, in two random colours whatever its class, and
the class is the pattern it is filled with (:data:`TEXTURE_CLASSES`: stripes, checkerboard, dots,
crosshatch, concentric rings, speckle), at a random scale and orientation. Backgrounds are cloudy
noise, which none of the classes is. A detector must learn local, repetitive structure instead of
shape and colour, with twice as many classes.

Like the shapes dataset it is written by :mod:`bio_detectron.data.generated`: deterministically,
once, into the same cache, as COCO-format JSON (boxes, areas, polygon masks) and JPEG images.
"""

import math
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from .drawing import Layout, box_intersection, finish, hsv_color, place_objects, polygon_mask

__all__ = ["TEXTURE_CLASSES", "render_textures_image"]

# Bump whenever the generator's output changes: it is part of the cache folder's name.
GENERATOR_VERSION = 1
# The COCO supercategory of every class.
SUPERCATEGORY = "texture"

# Category ids in the COCO json are 1-based positions in this tuple.
TEXTURE_CLASSES = ("stripes", "checkerboard", "dots", "crosshatch", "rings", "speckle")


def _rotated_coords(size: int, center, angle: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coords relative to ``center``, rotated by ``angle``: (u, v), each (H, W)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    xs, ys = xs - center[0], ys - center[1]
    c, s = math.cos(angle), math.sin(angle)
    return c * xs + s * ys, -s * xs + c * ys


def _texture(kind: str, rng: np.random.Generator, size: int, center, scale: float) -> np.ndarray:
    """
    A binary pattern over the whole image, as floats in [0, 1] (1: the pattern's colour).

    Args:
        kind: one of :data:`TEXTURE_CLASSES`.
        center: the object's centre, for patterns that have one (rings) and as the origin.
        scale: the pattern's period in pixels.
    """
    u, v = _rotated_coords(size, center, rng.uniform(0, math.pi))
    phase = rng.uniform(0, 1)
    if kind == "stripes":
        return ((u / scale + phase) % 1.0 < 0.5).astype(np.float32)
    if kind == "checkerboard":
        a = np.floor(u / scale + phase) + np.floor(v / scale + phase)
        return (a % 2 == 0).astype(np.float32)
    if kind == "dots":
        du = (u / scale + phase) % 1.0 - 0.5
        dv = (v / scale + phase) % 1.0 - 0.5
        return (du * du + dv * dv < 0.3**2).astype(np.float32)
    if kind == "crosshatch":
        line = 0.22
        return (((u / scale + phase) % 1.0 < line) | ((v / scale + phase) % 1.0 < line)).astype(
            np.float32
        )
    if kind == "rings":
        r = np.sqrt(u * u + v * v)
        return ((r / scale + phase) % 1.0 < 0.5).astype(np.float32)
    if kind == "speckle":
        # Random cells of about a third of the period, each on or off.
        cell = max(1.0, scale / 3.0)
        n = int(math.ceil(size / cell)) + 2
        grid = rng.random((n, n)) < 0.5
        ys, xs = np.mgrid[0:size, 0:size]
        return grid[(ys / cell).astype(int), (xs / cell).astype(int)].astype(np.float32)
    raise ValueError(f"Unknown texture {kind!r}; allowed: {TEXTURE_CLASSES}")


def _outline(rng: np.random.Generator, center, radius: float) -> np.ndarray:
    """
    A random outline of circumradius ``radius`` around ``center``, of no class: a smooth blob,
    an ellipse or a polygon of 3-8 vertices, randomly rotated. Returns (N, 2) vertices.
    """
    kind = rng.integers(3)
    n = 48
    t = 2 * math.pi * np.arange(n) / n
    if kind == 0:  # blob: a circle whose radius wobbles with a few low harmonics
        r = np.ones(n)
        for k in (2, 3, 4):
            r += rng.uniform(-0.12, 0.12) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1) / r.max()
    elif kind == 1:  # ellipse
        pts = np.stack([np.cos(t), rng.uniform(0.55, 1.0) * np.sin(t)], axis=1)
    else:  # polygon
        k = int(rng.integers(3, 9))
        t = 2 * math.pi * np.arange(k) / k
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    a = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return np.round(pts @ rot * radius + np.asarray(center, dtype=np.float64), 2)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cloudy noise: random fields at three coarse scales, upsampled, summed; (H, W, 3) floats."""
    image = np.zeros((size, size, 3), dtype=np.float32)
    base = np.array(hsv_color(rng, (0.0, 0.4), (0.25, 0.75)), dtype=np.float32)
    for cells, amplitude in ((3, 40.0), (6, 25.0), (12, 12.0)):
        coarse = rng.normal(0.0, amplitude, size=(cells, cells, 3)).astype(np.float32)
        for ch in range(3):
            field = Image.fromarray(coarse[..., ch], mode="F").resize((size, size), Image.BICUBIC)
            image[..., ch] += np.asarray(field)
    return image + base


# 1-4 objects of 20-50 % of the image side (circumscribed diameter), none covering more than 20 %
# of the smaller of its own and an earlier one's box.
LAYOUT = Layout(num_objects=(1, 4), scale_range=(0.2, 0.5), max_occlusion=0.2)


def render_textures_image(
    rng: np.random.Generator, image_size: int = 160, layout: Layout = LAYOUT
) -> Tuple[Image.Image, List[Dict]]:
    """
    Draw one image of textured objects.

    Args:
        rng: the random generator of this image.
        image_size: side of the square image, in pixels.
        layout: how many objects, of which size (their circumscribed diameter), how much overlap;
            (log-uniform); the texture's period is 1/10-1/4 of it, and at least 5 px.
        max_occlusion: largest fraction of an earlier object's box that a later one may cover.

    Returns:
        (image, objects): the RGB image and a list of dicts with "category" (an index into
        :data:`TEXTURE_CLASSES`), "polygon" ((N, 2) array, COCO pixel coordinates) and "bbox"
        ([x0, y0, x1, y1]).
    """
    size = image_size
    image = _background(rng, size)

    def place(category, fraction, objects):
        nonlocal image
        radius = 0.5 * size * fraction
        center = rng.uniform(radius, size - radius, size=2)
        outline = _outline(rng, center, radius)
        box = [*outline.min(axis=0).tolist(), *outline.max(axis=0).tolist()]
        area = (box[2] - box[0]) * (box[3] - box[1])
        if any(
            box_intersection(box, o["bbox"]) > layout.max_occlusion * min(area, o["box_area"])
            for o in objects
        ):
            return None
        period = max(5.0, 2 * radius * rng.uniform(0.1, 0.25))
        pattern = _texture(TEXTURE_CLASSES[category], rng, size, center, period)[..., None]
        c0 = np.array(hsv_color(rng, (0.3, 1.0), (0.2, 1.0)), dtype=np.float32)
        c1 = np.array(hsv_color(rng, (0.3, 1.0), (0.2, 1.0)), dtype=np.float32)
        if np.abs(c0 - c1).sum() < 150:  # keep the pattern visible: push the colours apart
            c1 = 255.0 - c0
        fill = c0 * pattern + c1 * (1.0 - pattern)
        mask = polygon_mask(outline, size, size)[..., None]
        image = np.where(mask, fill, image)
        return {"category": category, "polygon": outline, "bbox": box, "box_area": area}

    objects = place_objects(rng, layout, len(TEXTURE_CLASSES), place)
    for o in objects:
        del o["box_area"]
    return finish(image, rng, noise_std=4.0), objects

"""
Embedded "textures" detection dataset: objects told apart by their texture alone.

A second generated detection set of another kind than :mod:`bio_detectron.data.shapes`: there,
the class is an object's outline; here every object is a random blob (a smooth, irregular closed
curve), a polygon or an ellipse whatever its class, in two random colours whatever its class, and
the class is the pattern it is filled with (:data:`TEXTURE_CLASSES`: stripes, checkerboard, dots,
crosshatch, concentric rings, speckle), at a random scale and orientation. Backgrounds are cloudy
noise, which none of the classes is. A detector must learn local, repetitive structure instead of
shape and colour, with twice as many classes.

Like the shapes dataset it is a deterministic function of its parameters and seed, generated once
into the same cache (``$BIO_DETECTRON_DATASETS`` or ``~/.cache/bio_detectron``), atomically, as
COCO-format JSON (boxes, areas, polygon masks) and JPEG images.
"""

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from .coco_writer import split_paths, write_coco_dataset
from .cache import check_sizes, dataset_dir, generate_once
from .drawing import hsv_color, polygon_mask

__all__ = [
    "TEXTURE_CLASSES",
    "ensure_textures_dataset",
    "generate_textures_detection",
    "render_textures_image",
    "textures_dataset_paths",
]

# Bump whenever the generator's output changes: it is part of the cache folder's name.
GENERATOR_VERSION = 1

# Category ids in the COCO json are 1-based positions in this tuple.
TEXTURE_CLASSES = ("stripes", "checkerboard", "dots", "crosshatch", "rings", "speckle")

# Each split draws from its own random stream (not those of the shapes datasets).
_STREAMS = {"train": 10, "val": 11}


def _rotated_coords(size: int, center, angle: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates relative to ``center``, rotated by ``angle``: (u, v), each (H, W)."""
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
    """Cloudy noise: random fields at three coarse scales, upsampled and summed; (H, W, 3) floats."""
    image = np.zeros((size, size, 3), dtype=np.float32)
    base = np.array(hsv_color(rng, (0.0, 0.4), (0.25, 0.75)), dtype=np.float32)
    for cells, amplitude in ((3, 40.0), (6, 25.0), (12, 12.0)):
        coarse = rng.normal(0.0, amplitude, size=(cells, cells, 3)).astype(np.float32)
        for ch in range(3):
            field = Image.fromarray(coarse[..., ch], mode="F").resize((size, size), Image.BICUBIC)
            image[..., ch] += np.asarray(field)
    return image + base


def render_textures_image(
    rng: np.random.Generator,
    image_size: int = 160,
    max_objects: int = 4,
    scale_range: Tuple[float, float] = (0.2, 0.5),
    max_occlusion: float = 0.2,
) -> Tuple[Image.Image, List[Dict]]:
    """
    Draw one image of textured objects.

    Args:
        rng: the random generator of this image.
        image_size: side of the square image, in pixels.
        max_objects: each image gets between 1 and this many objects (fewer if they do not fit).
        scale_range: range of the objects' circumscribed diameter as a fraction of the image side
            (log-uniform); the texture's period is 1/10-1/4 of it, and at least 5 px.
        max_occlusion: largest fraction of an earlier object's box that a later one may cover.

    Returns:
        (image, objects): the RGB image and a list of dicts with "category" (an index into
        :data:`TEXTURE_CLASSES`), "polygon" ((N, 2) array, COCO pixel coordinates) and "bbox"
        ([x0, y0, x1, y1]).
    """
    size = image_size
    image = _background(rng, size)
    objects: List[Dict] = []
    wanted = int(rng.integers(1, max_objects + 1))
    log_lo, log_hi = math.log(scale_range[0]), math.log(scale_range[1])
    for _ in range(wanted * 10):  # bounded retries: a crowded image keeps fewer objects
        if len(objects) == wanted:
            break
        category = int(rng.integers(len(TEXTURE_CLASSES)))
        radius = 0.5 * size * math.exp(rng.uniform(log_lo, log_hi))
        center = rng.uniform(radius, size - radius, size=2)
        outline = _outline(rng, center, radius)
        box = [*outline.min(axis=0).tolist(), *outline.max(axis=0).tolist()]
        area = (box[2] - box[0]) * (box[3] - box[1])
        if any(
            _overlap(box, o["bbox"]) > max_occlusion * min(area, o["box_area"]) for o in objects
        ):
            continue
        period = max(5.0, 2 * radius * rng.uniform(0.1, 0.25))
        pattern = _texture(TEXTURE_CLASSES[category], rng, size, center, period)[..., None]
        c0 = np.array(hsv_color(rng, (0.3, 1.0), (0.2, 1.0)), dtype=np.float32)
        c1 = np.array(hsv_color(rng, (0.3, 1.0), (0.2, 1.0)), dtype=np.float32)
        if np.abs(c0 - c1).sum() < 150:  # keep the pattern visible: push the colours apart
            c1 = 255.0 - c0
        fill = c0 * pattern + c1 * (1.0 - pattern)
        mask = polygon_mask(outline, size, size)[..., None]
        image = np.where(mask, fill, image)
        objects.append({"category": category, "polygon": outline, "bbox": box, "box_area": area})
    for o in objects:
        del o["box_area"]
    pixels = image + rng.normal(0.0, 4.0, size=image.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB"), objects


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def generate_textures_detection(
    output_dir: str, image_size: int = 160, num_train: int = 1000, num_val: int = 200, seed: int = 0
) -> None:
    """
    Write the textures dataset into ``output_dir`` (not atomic: see
    :func:`ensure_textures_dataset`). Layout: ``{train,val}/<index>.jpg`` and
    ``annotations/instances_{train,val}.json``.
    """
    write_coco_dataset(
        output_dir,
        {"train": num_train, "val": num_val},
        image_size,
        render=render_textures_image,
        image_rng=lambda split, index: np.random.default_rng([seed, _STREAMS[split], index]),
        class_names=TEXTURE_CLASSES,
        supercategory="texture",
        name="textures",
        version=GENERATOR_VERSION,
    )


def textures_dataset_paths(
    split: str,
    root: Optional[str] = None,
    image_size: int = 160,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
) -> Tuple[str, str]:
    """(json_file, image_root) of a split of the textures dataset, without generating it."""
    folder = dataset_dir("textures", GENERATOR_VERSION, root, image_size, num_train, num_val, seed)
    return split_paths(folder, split)


def ensure_textures_dataset(
    split: str = "train",
    root: Optional[str] = None,
    image_size: int = 160,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
) -> Tuple[str, str]:
    """
    Make sure the textures dataset exists, generating both splits on first use, into
    ``<root>/textures_v<version>_<size>px_train<n>_val<m>_seed<seed>/``.

    Args:
        split: "train" or "val".
        root: cache folder; see :func:`bio_detectron.data.cache.datasets_root`.
        image_size: side of the square images, in pixels (>= 32).
        num_train, num_val: number of images per split.
        seed: seed of the random streams.

    Returns:
        (json_file, image_root) of the split.
    """
    paths = textures_dataset_paths(split, root, image_size, num_train, num_val, seed)
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    check_sizes(image_size, {"num_train": num_train, "num_val": num_val})
    generate_once(
        dataset_dir("textures", GENERATOR_VERSION, root, image_size, num_train, num_val, seed),
        lambda out: generate_textures_detection(out, image_size, num_train, num_val, seed),
    )
    return paths

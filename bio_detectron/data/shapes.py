"""
The "shapes" images: coloured geometric shapes on cluttered backgrounds, drawn on the machine
instead of downloaded, so that detection and classification runs (demo, tests, CI) need no network
and no dataset licence.

Two renderers of the same family: a **detection** image (several shapes of 3 classes, with their
polygons and boxes) and a **classification** image (one shape of 10 classes).
:mod:`bio_detectron.data.generated` writes them as a COCO-format detection set and an
ImageNet-style folder, deterministically and once.
"""

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .drawing import Layout, box_intersection, finish, hsv_color, place_objects, polygon_mask

__all__ = [
    "CLASSIFICATION_CLASSES",
    "DETECTION_CLASSES",
    "color_field",
    "render_classification_image",
    "render_detection_image",
]

# Bump whenever the generator's output changes: it is part of every cache folder's name.
GENERATOR_VERSION = 1
# The COCO supercategory of every class.
SUPERCATEGORY = "shape"

# Category ids in the COCO json are 1-based positions in this tuple.
DETECTION_CLASSES = ("circle", "square", "triangle")
CLASSIFICATION_CLASSES = (
    "circle",
    "square",
    "triangle",
    "pentagon",
    "hexagon",
    "star",
    "cross",
    "ring",
    "ellipse",
    "diamond",
)

# Vertices used to approximate round shapes. The same polygon is drawn and written as the
# segmentation, so that the mask a model learns from is exactly what is in the image.
_ROUND_VERTICES = 48


# ------------------------------------------------------------------------------------------------
# Geometry: every shape is an outer polygon (plus holes for the ring) of circumradius 1 at the
# origin.
# ------------------------------------------------------------------------------------------------


def _regular_polygon(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    # The default phase puts a vertex at the top, so that an unrotated triangle points up.
    angles = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    angles = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(arm: float = 0.35) -> np.ndarray:
    # A plus sign whose arm tips lie on the unit circle.
    a, b = arm, math.sqrt(1.0 - arm * arm)
    return np.array(
        [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a]]
        + [[-b, -a], [-a, -a]]
    )


def _unit_shape(kind: str, rng: np.random.Generator) -> Tuple[np.ndarray, List[np.ndarray]]:
    """
    Returns:
        (outer, holes): outer is a (N, 2) float array of vertices of a shape with circumradius 1
        centred at the origin; holes is a list of such arrays cut out of it.
    """
    if kind == "circle":
        return _regular_polygon(_ROUND_VERTICES), []
    if kind == "square":
        return _regular_polygon(4, phase=math.pi / 4), []
    if kind == "triangle":
        return _regular_polygon(3), []
    if kind == "pentagon":
        return _regular_polygon(5), []
    if kind == "hexagon":
        return _regular_polygon(6), []
    if kind == "star":
        return _star(), []
    if kind == "cross":
        return _cross(), []
    if kind == "ring":
        return _regular_polygon(_ROUND_VERTICES), [_regular_polygon(_ROUND_VERTICES, 0.55)]
    if kind == "ellipse":
        # Flat enough to never be mistaken for a circle.
        circle = _regular_polygon(_ROUND_VERTICES)
        return circle * np.array([1.0, rng.uniform(0.45, 0.65)]), []
    if kind == "diamond":
        # A rhombus narrower than it is tall, so that it is not a rotated square.
        return _regular_polygon(4) * np.array([rng.uniform(0.5, 0.65), 1.0]), []
    raise ValueError(f"Unknown shape kind {kind!r}; allowed: {CLASSIFICATION_CLASSES}")


# Largest random rotation, in degrees. Squares, crosses and diamonds stay near upright so that each
# keeps one name (a square at 45 degrees reads as a diamond); the others may turn freely.
_MAX_ROTATION = {"square": 15.0, "cross": 15.0, "diamond": 15.0}


def _place_shape(
    kind: str, rng: np.random.Generator, center: Sequence[float], radius: float
) -> Tuple[np.ndarray, List[np.ndarray]]:
    """
    Scale, rotate and move a unit shape.

    Returns:
        (outer, holes) in image coordinates, COCO convention: pixel (i, j) covers [i, i+1).
    """
    outer, holes = _unit_shape(kind, rng)
    max_angle = math.radians(_MAX_ROTATION.get(kind, 180.0))
    angle = rng.uniform(-max_angle, max_angle)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    offset = np.asarray(center, dtype=np.float64)
    # Round here, once, so that what is drawn and what is written to the json are the same numbers.
    return (
        np.round(outer @ rot * radius + offset, 2),
        [np.round(h @ rot * radius + offset, 2) for h in holes],
    )


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _object_color(rng: np.random.Generator) -> Tuple[int, int, int]:
    # Saturated and bright, while the background is greyish: the shapes stand out without being
    # separable by brightness alone.
    return hsv_color(rng, (0.55, 1.0), (0.55, 1.0))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth two-colour gradient plus low-frequency noise, with thin lines and small blobs."""
    c0 = np.array(hsv_color(rng, (0.0, 0.3), (0.15, 0.85)), dtype=np.float32)
    c1 = np.array(hsv_color(rng, (0.0, 0.3), (0.15, 0.85)), dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    t = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]

    # Low-frequency noise: a 4x4 random field upsampled bilinearly (per channel).
    coarse = rng.normal(0.0, 18.0, size=(4, 4, 3)).astype(np.float32)
    for ch in range(3):
        field = Image.fromarray(coarse[..., ch], mode="F").resize((size, size), Image.BILINEAR)
        image[..., ch] += np.asarray(field)
    img = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="RGB")

    # Clutter that is not an object: thin lines and blobs far smaller than the smallest object.
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 7)):
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        draw.line([(x0, y0), (x1, y1)], fill=hsv_color(rng, (0.0, 1.0), (0.2, 1.0)), width=1)
    for _ in range(rng.integers(2, 9)):
        r = max(1.0, rng.uniform(0.006, 0.02) * size)
        x, y = rng.uniform(0, size, size=2)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=hsv_color(rng, (0.0, 1.0), (0.2, 1.0)))
    return img


def _draw_shape(img: Image.Image, outer: np.ndarray, holes: List[np.ndarray], color) -> None:
    # Rasterize with pycocotools, the same code that turns the json's polygons into training masks
    # (detectron2's polygons_to_bitmask), so that the mask a model is taught is exactly the pixels
    # that were painted. PIL's own polygon fill rounds vertices and includes the right edge; it
    # disagreed with the decoded masks on 4% of all object pixels and on up to half of a small one.
    width, height = img.size
    mask = polygon_mask(outer, height, width)
    for hole in holes:
        mask &= ~polygon_mask(hole, height, width)
    img.paste(color, (0, 0, width, height), Image.fromarray(mask.astype(np.uint8) * 255, mode="L"))


def _finish(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return finish(np.asarray(img, dtype=np.float32), rng, noise_std=4.0)


# 1-5 shapes of 10-50 % of the image side (circumscribed diameter), none covering more than 30 %
# of an earlier one's box, nor 30 % of its own by a later one.
LAYOUT = Layout(num_objects=(1, 5), scale_range=(0.1, 0.5), max_occlusion=0.3)


def render_detection_image(
    rng: np.random.Generator, image_size: int = 160, layout: Layout = LAYOUT
) -> Tuple[Image.Image, List[Dict]]:
    """
    Draw one detection image.

    Objects are placed one after another on top of each other; a placement is rejected when it
    would cover more than ``max_occlusion`` of an earlier object's box, so every object stays
    mostly visible. The annotations are amodal (the full shape, also where it is covered).

    Args:
        rng: the random generator of this image.
        image_size: side of the square image, in pixels.
        layout: how many shapes, of which size (their circumscribed diameter), how much overlap:
            sampled log-uniformly so that small and large objects are equally common.
        max_occlusion: largest fraction of an earlier object's box that a later one may cover.

    Returns:
        (image, objects): the RGB image and a list of dicts with "category" (an index into
        :data:`DETECTION_CLASSES`), "polygon" ((N, 2) array, COCO pixel coordinates), "bbox"
        ([x0, y0, x1, y1]) and "color" ((r, g, b) as drawn, before noise and JPEG).
    """
    img = _background(rng, image_size)

    def place(category, fraction, objects):
        radius = 0.5 * image_size * fraction
        # The circumscribed circle stays inside the image, so no shape is cut by the border.
        center = rng.uniform(radius, image_size - radius, size=2)
        outer, holes = _place_shape(DETECTION_CLASSES[category], rng, center, radius)
        box = [*outer.min(axis=0).tolist(), *outer.max(axis=0).tolist()]
        area = (box[2] - box[0]) * (box[3] - box[1])
        if any(
            box_intersection(box, o["bbox"]) > layout.max_occlusion * o["box_area"]
            or box_intersection(box, o["bbox"]) > layout.max_occlusion * area
            for o in objects
        ):
            return None
        color = _object_color(rng)
        _draw_shape(img, outer, holes, color)
        return {
            "category": category,
            "polygon": outer,
            "bbox": box,
            "box_area": area,
            "color": color,
        }

    objects = place_objects(rng, layout, len(DETECTION_CLASSES), place)
    for o in objects:
        del o["box_area"]
    return _finish(img, rng), objects


def render_classification_image(
    rng: np.random.Generator,
    kind: str,
    image_size: int = 64,
    scale_range: Tuple[float, float] = (0.45, 0.9),
) -> Image.Image:
    """
    Draw one classification image: a single shape of the given kind on a cluttered background.

    Args:
        rng: the random generator of this image.
        kind: one of :data:`CLASSIFICATION_CLASSES`.
        image_size: side of the square image, in pixels.
        scale_range: range of the shape's circumscribed diameter as a fraction of the image side.
            Larger than for detection, so that a pentagon still differs from a hexagon at 64 px.

    Returns:
        PIL.Image.Image: the RGB image.
    """
    img = _background(rng, image_size)
    radius = 0.5 * image_size * rng.uniform(*scale_range)
    center = rng.uniform(radius, image_size - radius, size=2)
    outer, holes = _place_shape(kind, rng, center, radius)
    _draw_shape(img, outer, holes, _object_color(rng))
    return _finish(img, rng)


def color_field(obj: Dict) -> Dict:
    """The drawn colour of an object, as an annotation field beyond COCO's (for tests and visual
    checks of the generator)."""
    return {"color": list(obj["color"])}

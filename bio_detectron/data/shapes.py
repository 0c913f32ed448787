"""
Embedded "shapes" datasets: images of coloured geometric shapes on cluttered backgrounds, generated
on the machine instead of downloaded, so that detection and classification runs (demo, tests, CI)
need no network and no dataset licence.

Two datasets of the same family are generated here:

* a COCO-format **detection** dataset (JPEG files + ``instances_<split>.json`` with boxes, areas
  and polygon masks), registered with detectron2 by :mod:`bio_detectron.data.datasets`;
* an ImageNet-style **classification** folder (``<split>/<class>/*.JPEG``, one shape per image).

Both are deterministic functions of their parameters and seed (same seed -> byte-identical JSON and
images), generated once into a cache folder whose name encodes every parameter and the generator
version, so that a changed generator never reuses stale files. Generation is atomic: it writes into
a temporary folder next to the target and renames it, so several processes may start at once.
"""

import functools
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .cache import check_sizes, dataset_dir, datasets_root, generate_once
from .coco_writer import save_jpeg, split_paths, write_coco_dataset
from .drawing import hsv_color, polygon_mask

__all__ = [
    "DETECTION_CLASSES",
    "CLASSIFICATION_CLASSES",
    "shapes_dataset_paths",
    "ensure_shapes_dataset",
    "shapes_classification_dir",
    "ensure_shapes_classification",
    "generate_shapes_detection",
    "generate_shapes_classification",
    "render_detection_image",
    "render_classification_image",
]

# Bump whenever the generator's output changes: it is part of every cache folder's name.
GENERATOR_VERSION = 1

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

# Each split draws from its own random stream, so that e.g. val never repeats train images.
_STREAMS = {"train": 0, "val": 1, "cls_train": 2, "cls_val": 3}

# Vertices used to approximate round shapes. The same polygon is drawn and written as the
# segmentation, so that the mask a model learns from is exactly what is in the image.
_ROUND_VERTICES = 48


# ------------------------------------------------------------------------------------------------
# Geometry: every shape is an outer polygon (plus holes for the ring) of circumradius 1 at the origin.
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
    # Fine pixel noise over everything, so that no object is a perfectly flat colour.
    pixels = np.asarray(img, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, 4.0, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def _box_intersection(a: Sequence[float], b: Sequence[float]) -> float:
    # Boxes as [x0, y0, x1, y1].
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def render_detection_image(
    rng: np.random.Generator,
    image_size: int = 160,
    max_objects: int = 5,
    scale_range: Tuple[float, float] = (0.1, 0.5),
    max_occlusion: float = 0.3,
) -> Tuple[Image.Image, List[Dict]]:
    """
    Draw one detection image.

    Objects are placed one after another on top of each other; a placement is rejected when it
    would cover more than ``max_occlusion`` of an earlier object's box, so every object stays
    mostly visible. The annotations are amodal (the full shape, also where it is covered).

    Args:
        rng: the random generator of this image.
        image_size: side of the square image, in pixels.
        max_objects: each image gets between 1 and this many objects (fewer if they do not fit).
        scale_range: range of the shapes' circumscribed diameter as a fraction of the image side,
            sampled log-uniformly so that small and large objects are equally common.
        max_occlusion: largest fraction of an earlier object's box that a later one may cover.

    Returns:
        (image, objects): the RGB image and a list of dicts with "category" (an index into
        :data:`DETECTION_CLASSES`), "polygon" ((N, 2) array, COCO pixel coordinates), "bbox"
        ([x0, y0, x1, y1]) and "color" ((r, g, b) as drawn, before noise and JPEG).
    """
    img = _background(rng, image_size)
    objects: List[Dict] = []
    wanted = int(rng.integers(1, max_objects + 1))
    log_lo, log_hi = math.log(scale_range[0]), math.log(scale_range[1])
    # Bounded retries: a crowded image keeps fewer objects instead of looping.
    for _ in range(wanted * 10):
        if len(objects) == wanted:
            break
        category = int(rng.integers(len(DETECTION_CLASSES)))
        radius = 0.5 * image_size * math.exp(rng.uniform(log_lo, log_hi))
        # The circumscribed circle stays inside the image, so no shape is cut by the border.
        center = rng.uniform(radius, image_size - radius, size=2)
        outer, holes = _place_shape(DETECTION_CLASSES[category], rng, center, radius)
        box = [*outer.min(axis=0).tolist(), *outer.max(axis=0).tolist()]
        area = (box[2] - box[0]) * (box[3] - box[1])
        if any(
            _box_intersection(box, o["bbox"]) > max_occlusion * o["box_area"]
            or _box_intersection(box, o["bbox"]) > max_occlusion * area
            for o in objects
        ):
            continue
        color = _object_color(rng)
        _draw_shape(img, outer, holes, color)
        objects.append(
            {"category": category, "polygon": outer, "bbox": box, "box_area": area, "color": color}
        )
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


# ------------------------------------------------------------------------------------------------
# Writing datasets to disk
# ------------------------------------------------------------------------------------------------


def _image_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    # One independent generator per image: the content of an image does not depend on how many
    # images were generated before it, and the splits never share a stream.
    return np.random.default_rng([seed, _STREAMS[stream], index])


def _color_field(obj: Dict) -> Dict:
    # Not part of COCO; kept for tests and visual checks of the generator.
    return {"color": list(obj["color"])}


def generate_shapes_detection(
    output_dir: str, image_size: int = 160, num_train: int = 1000, num_val: int = 200, seed: int = 0
) -> None:
    """
    Write the detection dataset into ``output_dir`` (not atomic: see :func:`ensure_shapes_dataset`).

    Layout: ``{train,val}/<index>.jpg`` and ``annotations/instances_{train,val}.json``.

    Args:
        output_dir: an existing folder to write into.
        image_size: side of the square images, in pixels.
        num_train: number of training images.
        num_val: number of validation images.
        seed: seed of the random streams; train and val draw from different streams of it.
    """
    write_coco_dataset(
        output_dir,
        {"train": num_train, "val": num_val},
        image_size,
        render=render_detection_image,
        image_rng=functools.partial(_image_rng, seed),
        class_names=DETECTION_CLASSES,
        supercategory="shape",
        name="shapes",
        version=GENERATOR_VERSION,
        extra_fields=_color_field,
    )


def generate_shapes_classification(
    output_dir: str,
    image_size: int = 64,
    num_train_per_class: int = 100,
    num_val_per_class: int = 20,
    seed: int = 0,
) -> None:
    """
    Write the classification dataset into ``output_dir`` (not atomic: see
    :func:`ensure_shapes_classification`).

    Layout: ``{train,val}/<class_name>/<class_name>_<index>.JPEG``, one folder per name in
    :data:`CLASSIFICATION_CLASSES`, as torchvision's ``ImageFolder`` expects.

    Args:
        output_dir: an existing folder to write into.
        image_size: side of the square images, in pixels.
        num_train_per_class: training images per class.
        num_val_per_class: validation images per class.
        seed: seed of the random streams; train and val draw from different streams of it.
    """
    num_classes = len(CLASSIFICATION_CLASSES)
    for split, per_class in (("train", num_train_per_class), ("val", num_val_per_class)):
        for label, kind in enumerate(CLASSIFICATION_CLASSES):
            class_dir = os.path.join(output_dir, split, kind)
            os.makedirs(class_dir, exist_ok=True)
            for index in range(per_class):
                # Interleave the classes in one stream so that adding a class changes no index.
                rng = _image_rng(seed, "cls_" + split, index * num_classes + label)
                img = render_classification_image(rng, kind, image_size)
                save_jpeg(img, os.path.join(class_dir, f"{kind}_{index:05d}.JPEG"))


def shapes_dataset_paths(
    split: str,
    root: Optional[str] = None,
    image_size: int = 160,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
) -> Tuple[str, str]:
    """
    Where a split of the detection dataset lives, without generating it.

    Args: as :func:`ensure_shapes_dataset`.

    Returns:
        (json_file, image_root) of the split.
    """
    folder = dataset_dir("shapes", GENERATOR_VERSION, root, image_size, num_train, num_val, seed)
    return split_paths(folder, split)


def ensure_shapes_dataset(
    split: str = "train",
    root: Optional[str] = None,
    image_size: int = 160,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
) -> Tuple[str, str]:
    """
    Make sure the detection dataset exists, generating both splits on first use.

    Cache layout: ``<root>/shapes_v<version>_<size>px_train<n>_val<m>_seed<seed>/`` holding
    ``{train,val}/*.jpg`` and ``annotations/instances_{train,val}.json``.

    Args:
        split: "train" or "val".
        root: cache folder; see :func:`bio_detectron.data.cache.datasets_root`.
        image_size: side of the square images, in pixels.
        num_train: number of training images.
        num_val: number of validation images.
        seed: seed of the random streams.

    Returns:
        (json_file, image_root) of the split, ready for ``load_coco_json``.
    """
    paths = shapes_dataset_paths(split, root, image_size, num_train, num_val, seed)
    check_sizes(image_size, {"num_train": num_train, "num_val": num_val})
    generate_once(
        dataset_dir("shapes", GENERATOR_VERSION, root, image_size, num_train, num_val, seed),
        lambda out: generate_shapes_detection(out, image_size, num_train, num_val, seed),
    )
    return paths


def shapes_classification_dir(
    root: Optional[str] = None,
    image_size: int = 64,
    num_train_per_class: int = 100,
    num_val_per_class: int = 20,
    seed: int = 0,
) -> str:
    """
    Where the classification dataset lives, without generating it.

    Args: as :func:`ensure_shapes_classification`.

    Returns:
        str: the dataset folder, holding ``train/`` and ``val/``.
    """
    name = (
        f"shapes_cls_v{GENERATOR_VERSION}_{image_size}px"
        f"_train{num_train_per_class}_val{num_val_per_class}_seed{seed}"
    )
    return os.path.join(datasets_root(root), name)


def ensure_shapes_classification(
    root: Optional[str] = None,
    image_size: int = 64,
    num_train_per_class: int = 100,
    num_val_per_class: int = 20,
    seed: int = 0,
) -> str:
    """
    Make sure the classification dataset exists, generating it on first use.

    Cache layout: ``<root>/shapes_cls_v<version>_<size>px_train<n>_val<m>_seed<seed>/`` holding
    ``{train,val}/<class_name>/*.JPEG`` for the 10 names in :data:`CLASSIFICATION_CLASSES`.

    Args:
        root: cache folder; see :func:`bio_detectron.data.cache.datasets_root`.
        image_size: side of the square images, in pixels.
        num_train_per_class: training images per class.
        num_val_per_class: validation images per class.
        seed: seed of the random streams.

    Returns:
        str: the dataset folder; ``<it>/train`` and ``<it>/val`` are ``ImageFolder`` roots.
    """
    check_sizes(
        image_size,
        {"num_train_per_class": num_train_per_class, "num_val_per_class": num_val_per_class},
    )
    target = shapes_classification_dir(
        root, image_size, num_train_per_class, num_val_per_class, seed
    )
    return generate_once(
        target,
        lambda out: generate_shapes_classification(
            out, image_size, num_train_per_class, num_val_per_class, seed
        ),
    )

"""
Embedded "photos" detection dataset: objects cut from real photographs, pasted on real photographs.

The third generated detection set, of real image content rather than drawn shapes or textures.
Every pixel comes from a photograph that an installed package ships (scikit-image's
``skimage.data`` and scikit-learn's sample images; their licences are in ``docs/DATASETS.md``):

* **objects** (:data:`PHOTO_CLASSES`, 10 classes): a region of a photograph, cut along an ellipse
  or a box: the astronaut's face, helmet and the model shuttle behind her, Chelsea the cat, a
  coffee cup, the Falcon 9 rocket, a dahlia, the pagoda of the Summer Palace, a retina, and 24
  Greek coins (one class, 24 instances). Each placement jitters the region (position, size,
  aspect), mirrors it at random, turns it by up to 20 degrees (10 for the upright ones) and
  changes its brightness, contrast and saturation.
* **backgrounds**: a random crop of a photograph of texture or of a scene without those objects
  (brick, grass, gravel, the moon, printed text, tissue, the Hubble deep field, the lake beside
  the pagoda, the wooden table under the cup, ...), mirrored, grey ones tinted.

Images are 128 px with 2-5 objects of 18-64 px (the side of their box), placed so that none
covers more than 30 % of an earlier one's box. Annotations are COCO boxes, areas and the polygon of
each cut (the mask that was pasted). Like shapes and textures, the set is a deterministic function
of its parameters and seed, generated once into the same cache, through the same COCO writer.

A classification folder of the same content (one object per image, :func:`ensure_photos_classification`)
lets ``tools/train_imagenet.py`` pre-train a backbone on it (``DATASETS.GENERATED_CLASSIFICATION``).
"""

import functools
import hashlib
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .cache import check_sizes, dataset_dir, datasets_root, generate_once
from .coco_writer import save_jpeg, split_paths, write_coco_dataset
from .drawing import polygon_mask

__all__ = [
    "PHOTO_CLASSES",
    "ensure_photos_classification",
    "ensure_photos_dataset",
    "generate_photos_detection",
    "photos_classification_dir",
    "photos_dataset_paths",
    "render_photos_image",
    "source_photo",
]

logger = logging.getLogger(__name__)

# Bump whenever the generator's output changes: it is part of the cache folder's name.
GENERATOR_VERSION = 1

# Category ids in the COCO json are 1-based positions in this tuple.
PHOTO_CLASSES = (
    "face",
    "cat",
    "coffee_cup",
    "rocket",
    "shuttle",
    "helmet",
    "flower",
    "pagoda",
    "retina",
    "coin",
)

# The 24 coins of skimage.data.coins(), (x0, y0, x1, y1): the regions of a watershed segmentation
# (Sobel edges, markers below 30 and above 150, holes filled), as in scikit-image's own gallery.
_COINS = (
    (305, 16, 365, 72), (132, 28, 179, 74), (192, 30, 240, 73), (255, 34, 297, 72),
    (22, 35, 67, 74), (81, 39, 120, 74), (245, 95, 296, 144), (25, 104, 67, 145),
    (186, 105, 226, 144), (317, 106, 356, 145), (84, 108, 122, 145), (134, 110, 173, 145),
    (315, 156, 380, 218), (189, 170, 237, 217), (251, 172, 297, 217), (80, 175, 124, 217),
    (26, 179, 63, 217), (135, 179, 174, 217), (18, 233, 75, 288), (144, 236, 201, 288),
    (276, 239, 326, 289), (220, 240, 269, 288), (93, 245, 136, 287), (336, 248, 382, 289),
)  # fmt: skip

# class -> (photograph, regions (x0, y0, x1, y1) in its pixels, outline of the cut, largest turn
# in degrees).
_OBJECTS = {
    "face": ("astronaut", ((178, 18, 302, 172),), "ellipse", 20.0),
    "cat": ("chelsea", ((50, 10, 410, 300),), "ellipse", 20.0),
    "coffee_cup": ("coffee", ((70, 55, 420, 390),), "ellipse", 20.0),
    "rocket": ("rocket", ((236, 100, 276, 330),), "box", 10.0),
    "shuttle": ("astronaut", ((345, 25, 455, 265),), "box", 10.0),
    "helmet": ("astronaut", ((275, 340, 505, 510),), "ellipse", 20.0),
    "flower": ("flower", ((160, 78, 428, 330),), "ellipse", 20.0),
    "pagoda": ("china", ((75, 20, 290, 360),), "box", 10.0),
    "retina": ("retina", ((45, 45, 1366, 1366),), "ellipse", 20.0),
    "coin": ("coins", _COINS, "ellipse", 20.0),
}

# Backgrounds: (photograph, region or None for all of it). None of them shows an object class.
_BACKGROUNDS = (
    ("brick", None),
    ("grass", None),
    ("gravel", None),
    ("moon", None),
    ("page", None),
    ("text", None),
    ("immunohistochemistry", None),
    ("hubble_deep_field", None),
    ("camera", (330, 260, 512, 512)),  # the lawn right of the cameraman
    ("china", (350, 150, 640, 427)),  # the lake and trees right of the pagoda
    ("flower", (0, 0, 150, 427)),  # the dark leaves left of the dahlia
    ("coffee", (430, 0, 600, 400)),  # the wooden table right of the cup
    ("rocket", (40, 0, 225, 280)),  # the evening sky and a tower left of the rocket
)

# SHA-1 of each photograph's pixels as this generator was written against (scikit-image 0.26,
# scikit-learn 1.9): another version's photographs give another dataset, which is said by warning.
_DIGESTS = {
    "astronaut": "9cea59d5",
    "brick": "0a5f4a92",
    "camera": "dbb7da01",
    "chelsea": "5fc145ab",
    "china": "e0ecc385",
    "coffee": "4124caf9",
    "coins": "61410204",
    "flower": "f97c9f3b",
    "grass": "2fff6996",
    "gravel": "4a0c5e5b",
    "hubble_deep_field": "432687f8",
    "immunohistochemistry": "8ef8c05e",
    "moon": "0889f3e8",
    "page": "2475895b",
    "retina": "df9344a0",
    "rocket": "81d3b8a1",
    "text": "bc1f9f2d",
}

# Each split draws from its own random stream (not those of shapes or textures).
_STREAMS = {"train": 20, "val": 21, "cls_train": 22, "cls_val": 23}

_MISSING = (
    "The photos dataset is cut from photographs that scikit-image and scikit-learn ship; install "
    "them (`pip install scikit-image scikit-learn`; `make install` does): {error}"
)


@functools.lru_cache(maxsize=None)
def source_photo(name: str) -> np.ndarray:
    """
    A photograph the dataset is made from, as RGB uint8 (H, W, 3): ``skimage.data.<name>()``, or
    scikit-learn's sample image ``<name>.jpg`` for "china" and "flower". Grey photographs are
    repeated over three channels.
    """
    try:
        if name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            pixels = load_sample_image(f"{name}.jpg")
        else:
            import skimage.data

            pixels = getattr(skimage.data, name)()
    except ImportError as e:
        raise ImportError(_MISSING.format(error=e)) from e
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    pixels = np.ascontiguousarray(pixels[..., :3].astype(np.uint8))
    digest = hashlib.sha1(pixels.tobytes()).hexdigest()[:8]
    if _DIGESTS.get(name) not in (None, digest):
        logger.warning(
            f"The photograph {name!r} installed here differs from the one the photos dataset was "
            f"made with (SHA-1 {digest}, not {_DIGESTS[name]}): the generated images differ from "
            "those the documented results were measured on"
        )
    return pixels


@functools.lru_cache(maxsize=None)
def _photo_image(name: str) -> Image.Image:
    return Image.fromarray(source_photo(name), mode="RGB")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of a background photograph, mirrored at random, grey ones tinted."""
    name, region = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    photo = _photo_image(name)
    x0, y0, x1, y1 = region or (0, 0, *photo.size)
    side = min(x1 - x0, y1 - y0) * rng.uniform(0.3, 1.0)
    left = x0 + rng.uniform(0, x1 - x0 - side)
    top = y0 + rng.uniform(0, y1 - y0 - side)
    crop = photo.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    pixels = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    if np.ptp(pixels.reshape(-1, 3).mean(axis=0)) < 1.0:  # a grey photograph: tint it
        tint = rng.uniform(0.55, 1.0, size=3).astype(np.float32)
        pixels = pixels * tint / tint.max()
    return pixels * rng.uniform(0.75, 1.15)


def _outline(kind: str, width: float, height: float) -> np.ndarray:
    """The cut's outline in the cut's own coordinates ([0, width] x [0, height]), (N, 2)."""
    if kind == "box":
        return np.array([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])
    t = 2 * math.pi * np.arange(32) / 32
    return np.stack([(1 + np.cos(t)) * width / 2, (1 + np.sin(t)) * height / 2], axis=1)


def _jitter_region(rng, region, photo_size) -> Tuple[float, float, float, float]:
    """The region moved by up to 6 % and resized by 0.92-1.08 per side, inside the photograph."""
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.uniform(-0.06, 0.06) * w
    cy = (y0 + y1) / 2 + rng.uniform(-0.06, 0.06) * h
    w, h = w * rng.uniform(0.92, 1.08), h * rng.uniform(0.92, 1.08)
    pw, ph = photo_size
    x0, y0 = max(0.0, cx - w / 2), max(0.0, cy - h / 2)
    return x0, y0, min(float(pw), x0 + w), min(float(ph), y0 + h)


def _photometric(rng, pixels: np.ndarray) -> np.ndarray:
    """Brightness and contrast 0.75-1.25x, saturation 0.7-1.3x, of a float RGB patch."""
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + (pixels - grey) * rng.uniform(0.7, 1.3)
    mean = pixels.mean()
    return (mean + (pixels - mean) * rng.uniform(0.75, 1.25)) * rng.uniform(0.75, 1.25)


def _cut(rng, category: int, length: float):
    """
    One object of class ``category`` whose longer side is ``length`` px: a jittered region of its
    photograph, resized, mirrored at random and turned.

    Returns:
        (patch, outline, affine): ``patch`` the region resized to twice the object's size (float
        RGB), ``outline`` the cut in the patch's coordinates, and the map of patch coordinates
        (centred) to the object's (centred, in image pixels): a 2x2 matrix.
    """
    name, regions, kind, max_turn = _OBJECTS[PHOTO_CLASSES[category]]
    photo = _photo_image(name)
    box = _jitter_region(rng, regions[int(rng.integers(len(regions)))], photo.size)
    w, h = box[2] - box[0], box[3] - box[1]
    factor = length / max(w, h)
    # Resampled twice: to twice the object's size with antialiasing, then by the affine map.
    size = (max(2, round(2 * w * factor)), max(2, round(2 * h * factor)))
    patch = np.asarray(photo.resize(size, Image.BICUBIC, box=box), dtype=np.float32)
    patch = _photometric(rng, patch)
    angle = math.radians(rng.uniform(-max_turn, max_turn))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    c, s = math.cos(angle), math.sin(angle)
    affine = 0.5 * np.array([[c * flip, -s], [s * flip, c]])
    return patch, _outline(kind, *size), affine


def _paste(image: np.ndarray, patch: np.ndarray, polygon: np.ndarray, inverse) -> None:
    """Paint ``patch`` into ``image`` inside ``polygon``, sampling the patch through ``inverse``."""
    h, w = image.shape[:2]
    mask = polygon_mask(polygon, h, w)
    ys, xs = np.nonzero(mask)
    # Pixel centres of the image -> patch coordinates; bilinear sampling, clamped at the border.
    u = inverse[0, 0] * (xs + 0.5) + inverse[0, 1] * (ys + 0.5) + inverse[0, 2] - 0.5
    v = inverse[1, 0] * (xs + 0.5) + inverse[1, 1] * (ys + 0.5) + inverse[1, 2] - 0.5
    ph, pw = patch.shape[:2]
    u, v = np.clip(u, 0, pw - 1), np.clip(v, 0, ph - 1)
    u0, v0 = np.minimum(u.astype(int), pw - 2), np.minimum(v.astype(int), ph - 2)
    du, dv = (u - u0)[:, None], (v - v0)[:, None]
    image[ys, xs] = (
        patch[v0, u0] * (1 - du) * (1 - dv)
        + patch[v0, u0 + 1] * du * (1 - dv)
        + patch[v0 + 1, u0] * (1 - du) * dv
        + patch[v0 + 1, u0 + 1] * du * dv
    )


def _place(rng, image, category, length, boxes, max_occlusion) -> Optional[Dict]:
    """Cut an object and paste it where it covers at most ``max_occlusion`` of earlier boxes."""
    size = image.shape[0]
    patch, outline, affine = _cut(rng, category, length)
    ph, pw = patch.shape[:2]
    centred = (outline - [pw / 2, ph / 2]) @ affine.T  # object coordinates around its centre
    lo, hi = centred.min(axis=0), centred.max(axis=0)
    if np.any(hi - lo > size):
        return None
    center = rng.uniform(-lo, size - hi)
    polygon = np.round(centred + center, 2)
    box = [*polygon.min(axis=0).tolist(), *polygon.max(axis=0).tolist()]
    area = (box[2] - box[0]) * (box[3] - box[1])
    for other in boxes:
        inter = _intersection(box, other)
        if inter > max_occlusion * min(area, (other[2] - other[0]) * (other[3] - other[1])):
            return None
    inv = np.linalg.inv(affine)
    # image (x, y) -> patch (u, v): inv @ ((x, y) - center) + patch centre
    inverse = np.concatenate([inv, (np.array([pw / 2, ph / 2]) - inv @ center)[:, None]], axis=1)
    _paste(image, patch, polygon, inverse)
    return {"category": category, "polygon": polygon, "bbox": box}


def _intersection(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _finish(rng, image: np.ndarray) -> Image.Image:
    pixels = image + rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def render_photos_image(
    rng: np.random.Generator,
    image_size: int = 128,
    num_objects: Tuple[int, int] = (2, 5),
    scale_range: Tuple[float, float] = (0.14, 0.5),
    max_occlusion: float = 0.3,
) -> Tuple[Image.Image, List[Dict]]:
    """
    Draw one image of objects cut from photographs on a photograph.

    Args:
        rng: the random generator of this image.
        image_size: side of the square image, in pixels.
        num_objects: the range of objects per image (fewer when they do not fit).
        scale_range: range of the longer side of an object's cut as a fraction of the image side
            (log-uniform; 18-64 px at 128 px).
        max_occlusion: largest fraction of an earlier object's box that a later one may cover.

    Returns:
        (image, objects): the RGB image and a list of dicts with "category" (an index into
        :data:`PHOTO_CLASSES`), "polygon" ((N, 2) array, COCO pixel coordinates: the cut) and
        "bbox" ([x0, y0, x1, y1]).
    """
    image = _background(rng, image_size)
    objects: List[Dict] = []
    wanted = int(rng.integers(num_objects[0], num_objects[1] + 1))
    log_lo, log_hi = math.log(scale_range[0]), math.log(scale_range[1])
    for _ in range(wanted * 10):  # bounded retries: a crowded image keeps fewer objects
        if len(objects) == wanted:
            break
        category = int(rng.integers(len(PHOTO_CLASSES)))
        length = image_size * math.exp(rng.uniform(log_lo, log_hi))
        placed = _place(rng, image, category, length, [o["bbox"] for o in objects], max_occlusion)
        if placed is not None:
            objects.append(placed)
    return _finish(rng, image), objects


def render_photos_classification_image(
    rng: np.random.Generator,
    kind: str,
    image_size: int = 64,
    scale_range: Tuple[float, float] = (0.5, 0.9),
) -> Image.Image:
    """One object of class ``kind`` (a name in :data:`PHOTO_CLASSES`) on a background photograph."""
    image = _background(rng, image_size)
    length = image_size * rng.uniform(*scale_range)
    while _place(rng, image, PHOTO_CLASSES.index(kind), length, [], 1.0) is None:
        length *= 0.9  # turned, it did not fit
    return _finish(rng, image)


def _image_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], index])


def generate_photos_detection(
    output_dir: str, image_size: int = 128, num_train: int = 1000, num_val: int = 200, seed: int = 0
) -> None:
    """
    Write the photos dataset into ``output_dir`` (not atomic: see :func:`ensure_photos_dataset`).
    Layout: ``{train,val}/<index>.jpg`` and ``annotations/instances_{train,val}.json``.
    """
    write_coco_dataset(
        output_dir,
        {"train": num_train, "val": num_val},
        image_size,
        render=render_photos_image,
        image_rng=functools.partial(_image_rng, seed),
        class_names=PHOTO_CLASSES,
        supercategory="photo",
        name="photos",
        version=GENERATOR_VERSION,
    )


def photos_dataset_paths(
    split: str,
    root: Optional[str] = None,
    image_size: int = 128,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
) -> Tuple[str, str]:
    """(json_file, image_root) of a split of the photos dataset, without generating it."""
    folder = dataset_dir("photos", GENERATOR_VERSION, root, image_size, num_train, num_val, seed)
    return split_paths(folder, split)


def ensure_photos_dataset(
    split: str = "train",
    root: Optional[str] = None,
    image_size: int = 128,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
) -> Tuple[str, str]:
    """
    Make sure the photos dataset exists, generating both splits on first use, into
    ``<root>/photos_v<version>_<size>px_train<n>_val<m>_seed<seed>/``.

    Args:
        split: "train" or "val".
        root: cache folder; see :func:`bio_detectron.data.cache.datasets_root`.
        image_size: side of the square images, in pixels (>= 64).
        num_train, num_val: number of images per split.
        seed: seed of the random streams.

    Returns:
        (json_file, image_root) of the split.
    """
    paths = photos_dataset_paths(split, root, image_size, num_train, num_val, seed)
    check_sizes(image_size, {"num_train": num_train, "num_val": num_val}, minimum=64)
    generate_once(
        dataset_dir("photos", GENERATOR_VERSION, root, image_size, num_train, num_val, seed),
        lambda out: generate_photos_detection(out, image_size, num_train, num_val, seed),
    )
    return paths


def photos_classification_dir(
    root: Optional[str] = None,
    image_size: int = 64,
    num_train_per_class: int = 100,
    num_val_per_class: int = 20,
    seed: int = 0,
) -> str:
    """Where the photos classification folder lives, without generating it."""
    name = (
        f"photos_cls_v{GENERATOR_VERSION}_{image_size}px"
        f"_train{num_train_per_class}_val{num_val_per_class}_seed{seed}"
    )
    return os.path.join(datasets_root(root), name)


def ensure_photos_classification(
    root: Optional[str] = None,
    image_size: int = 64,
    num_train_per_class: int = 100,
    num_val_per_class: int = 20,
    seed: int = 0,
) -> str:
    """
    Make sure the photos classification folder exists, generating it on first use:
    ``{train,val}/<class>/<class>_<index>.JPEG`` for the 10 classes of :data:`PHOTO_CLASSES`, one
    object per image, as torchvision's ``ImageFolder`` reads it.

    Returns:
        str: the dataset folder.
    """
    check_sizes(
        image_size,
        {"num_train_per_class": num_train_per_class, "num_val_per_class": num_val_per_class},
        minimum=32,
    )
    target = photos_classification_dir(
        root, image_size, num_train_per_class, num_val_per_class, seed
    )

    def generate(out):
        counts = (("train", num_train_per_class), ("val", num_val_per_class))
        _write_classification(out, counts, image_size, seed)

    return generate_once(target, generate)


def _write_classification(output_dir: str, counts: Sequence, image_size: int, seed: int) -> None:
    n = len(PHOTO_CLASSES)
    for split, per_class in counts:
        for label, kind in enumerate(PHOTO_CLASSES):
            class_dir = os.path.join(output_dir, split, kind)
            os.makedirs(class_dir, exist_ok=True)
            for index in range(per_class):
                # Interleave the classes in one stream so that adding a class changes no index.
                rng = _image_rng(seed, "cls_" + split, index * n + label)
                img = render_photos_classification_image(rng, kind, image_size)
                save_jpeg(img, os.path.join(class_dir, f"{kind}_{index:05d}.JPEG"))

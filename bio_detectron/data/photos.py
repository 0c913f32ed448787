"""
Embedded "photos" detection dataset: objects cut from real photographs, pasted on real photographs.

The third generated detection set, of real image content rather than drawn shapes or textures.
Every pixel comes from a photograph that an installed package ships (scikit-image's
``skimage.data`` and scikit-learn's sample images; their licences are in docs/datasets.md,
"Licences of the photographs"):

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
each cut (the mask that was pasted). Like shapes and textures, the set is written by
:mod:`bio_detectron.data.generated`: deterministically, once, into the same cache, through the same
COCO writer; so is a classification folder of the same content (one object per image), on which
``tools/train_imagenet.py`` can pre-train a backbone (``DATASETS.GENERATED_CLASSIFICATION``).
"""

import functools
import hashlib
import logging
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter

from .._extras import needs_extra
from .drawing import Layout, box_intersection, finish, place_objects, polygon_mask

__all__ = [
    "PHOTO_CLASSES",
    "background_crop",
    "render_photos_classification_image",
    "render_photos_image",
    "source_photo",
]

logger = logging.getLogger(__name__)

# Bump whenever the generator's output changes: it is part of the cache folder's name.
# 2: partial views, stronger colour changes, blur, smaller objects and unlabelled distractors.
GENERATOR_VERSION = 2
# The COCO supercategory of every class.
SUPERCATEGORY = "photo"

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


@functools.lru_cache(maxsize=None)
def source_photo(name: str) -> np.ndarray:
    """
    A photograph the dataset is made from, as RGB uint8 (H, W, 3): ``skimage.data.<name>()``, or
    scikit-learn's sample image ``<name>.jpg`` for "china" and "flower". Grey photographs are
    repeated over three channels.
    """
    with needs_extra("datasets", "The photos dataset (cut from their sample photographs)"):
        if name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            pixels = load_sample_image(f"{name}.jpg")
        else:
            import skimage.data

            pixels = getattr(skimage.data, name)()
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


def background_crop(rng: np.random.Generator, size: int) -> np.ndarray:
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


def _view(rng, region, photo_size) -> Tuple[float, float, float, float]:
    """
    A view of a region: moved by up to 6 % and resized by 0.92-1.08 per side, then a part of it,
    60-100 % of its width and of its height, anywhere in it; inside the photograph.
    """
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.uniform(-0.06, 0.06) * w
    cy = (y0 + y1) / 2 + rng.uniform(-0.06, 0.06) * h
    w, h = w * rng.uniform(0.92, 1.08), h * rng.uniform(0.92, 1.08)
    part_w, part_h = w * rng.uniform(0.6, 1.0), h * rng.uniform(0.6, 1.0)
    cx += rng.uniform(-0.5, 0.5) * (w - part_w)
    cy += rng.uniform(-0.5, 0.5) * (h - part_h)
    pw, ph = photo_size
    x0, y0 = max(0.0, cx - part_w / 2), max(0.0, cy - part_h / 2)
    return x0, y0, min(float(pw), x0 + part_w), min(float(ph), y0 + part_h)


def _hue_rotation(angle: float) -> np.ndarray:
    """The RGB matrix that turns colours by ``angle`` (radians) about the grey axis."""
    k = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    c, s = math.cos(angle), math.sin(angle)
    return c * np.eye(3) + (1 - c) * np.outer(k, k) + s * cross


def _photometric(rng, pixels: np.ndarray) -> np.ndarray:
    """
    A float RGB patch with its hue turned by up to 20 degrees, its saturation 0.4-1.5x (grey with
    probability 0.15), contrast 0.6-1.4x and brightness 0.6-1.4x.
    """
    pixels = pixels @ _hue_rotation(math.radians(rng.uniform(-20, 20))).T.astype(np.float32)
    grey = pixels.mean(axis=2, keepdims=True)
    saturation = 0.0 if rng.random() < 0.15 else rng.uniform(0.4, 1.5)
    pixels = grey + (pixels - grey) * saturation
    mean = pixels.mean()
    return (mean + (pixels - mean) * rng.uniform(0.6, 1.4)) * rng.uniform(0.6, 1.4)


def _cut(rng, category: Optional[int], length: float):
    """
    One object of class ``category`` whose longer side is ``length`` px: a view of its region of
    its photograph (:func:`_view`), resized, blurred with probability 0.25, its colours changed
    (:func:`_photometric`), mirrored at random and turned. With ``category`` None, a distractor:
    a cut of a random background photograph.

    Returns:
        (patch, outline, affine): ``patch`` the region resized to twice the object's size (float
        RGB), ``outline`` the cut in the patch's coordinates, and the map of patch coordinates
        (centred) to the object's (centred, in image pixels): a 2x2 matrix.
    """
    if category is None:
        name, region = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
        kind = ("ellipse", "box")[int(rng.integers(2))]
        photo, max_turn = _photo_image(name), 20.0
        region = region or (0, 0, *photo.size)
        w, h = 0.3 * (region[2] - region[0]), 0.3 * (region[3] - region[1])
        x0, y0 = rng.uniform(region[0], region[2] - w), rng.uniform(region[1], region[3] - h)
        box = _view(rng, (x0, y0, x0 + w, y0 + h), photo.size)
    else:
        name, regions, kind, max_turn = _OBJECTS[PHOTO_CLASSES[category]]
        photo = _photo_image(name)
        box = _view(rng, regions[int(rng.integers(len(regions)))], photo.size)
    w, h = box[2] - box[0], box[3] - box[1]
    factor = length / max(w, h)
    # Resampled twice: to twice the object's size with antialiasing, then by the affine map.
    size = (max(2, round(2 * w * factor)), max(2, round(2 * h * factor)))
    patch = photo.resize(size, Image.BICUBIC, box=box)
    if rng.random() < 0.25:
        patch = patch.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    patch = _photometric(rng, np.asarray(patch, dtype=np.float32))
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
    """
    Cut an object (a distractor for ``category`` None) and paste it where it covers at most
    ``max_occlusion`` of earlier boxes.
    """
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
        inter = box_intersection(box, other)
        if inter > max_occlusion * min(area, (other[2] - other[0]) * (other[3] - other[1])):
            return None
    inv = np.linalg.inv(affine)
    # image (x, y) -> patch (u, v): inv @ ((x, y) - center) + patch centre
    inverse = np.concatenate([inv, (np.array([pw / 2, ph / 2]) - inv @ center)[:, None]], axis=1)
    _paste(image, patch, polygon, inverse)
    return {"category": category, "polygon": polygon, "bbox": box}


# 2-5 objects whose cut's longer side is 10-45 % of the image side (13-58 px at 128 px), none
# covering more than 30 % of the smaller of its own and an earlier one's box.
LAYOUT = Layout(num_objects=(2, 5), scale_range=(0.1, 0.45), max_occlusion=0.3)


def render_photos_image(
    rng: np.random.Generator, image_size: int = 128, layout: Layout = LAYOUT
) -> Tuple[Image.Image, List[Dict]]:
    """
    Draw one image of objects cut from photographs on a photograph.

    Args:
        rng: the random generator of this image.
        image_size: side of the square image, in pixels.
        layout: how many objects, of which size (the longer side of the cut), how much overlap.

    Returns:
        (image, objects): the RGB image and a list of dicts with "category" (an index into
        :data:`PHOTO_CLASSES`), "polygon" ((N, 2) array, COCO pixel coordinates: the cut) and
        "bbox" ([x0, y0, x1, y1]).
    """
    image = background_crop(rng, image_size)
    # Unlabelled distractors first, under the objects: cuts of the background photographs, which
    # a detector must learn are none of the classes.
    for _ in range(int(rng.integers(0, 4))):
        length = image_size * rng.uniform(0.1, 0.4)
        _place(rng, image, None, length, [], 1.0)

    def place(category, fraction, objects):
        boxes = [o["bbox"] for o in objects]
        return _place(rng, image, category, image_size * fraction, boxes, layout.max_occlusion)

    objects = place_objects(rng, layout, len(PHOTO_CLASSES), place)
    return finish(image, rng, noise_std=3.0), objects


def render_photos_classification_image(rng, kind: str, image_size: int = 64) -> Image.Image:
    """
    One object of class ``kind`` (a name in :data:`PHOTO_CLASSES`) on a background photograph,
    its cut's longer side 50-90 % of the image side.
    """
    image = background_crop(rng, image_size)
    length = image_size * rng.uniform(0.5, 0.9)
    while _place(rng, image, PHOTO_CLASSES.index(kind), length, [], 1.0) is None:
        length *= 0.9  # turned, it did not fit
    return finish(image, rng, noise_std=3.0)

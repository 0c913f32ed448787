"""
The image writers of the miniatures (:mod:`.miniatures`) in Pascal VOC's and ADE20K's layouts,
and what every miniature shares: its images, drawn by the shapes generator (:mod:`.shapes`), and
the names its shapes take in each dataset.
"""

import math
import os
import xml.etree.ElementTree as ET
from typing import Dict, List

import numpy as np
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from PIL import Image

from bio_detectron.data import shapes
from bio_detectron.data.coco_writer import save_jpeg
from bio_detectron.data.drawing import polygon_mask

__all__ = [
    "ADE20K_BACKGROUND",
    "ADE20K_CLASSES",
    "COCO_BACKGROUND",
    "COCO_THINGS",
    "VOC_CLASSES",
    "render_image",
    "shape_name",
    "write_ade20k",
    "write_voc",
]

# The shapes' names in each set (shapes.DETECTION_CLASSES -> a class of the set); the set's other
# classes have no objects. The background is one stuff class in the segmentation sets.
VOC_CLASSES = {"circle": "bicycle", "square": "tvmonitor", "triangle": "boat"}
COCO_THINGS = {"circle": "sports ball", "square": "tv", "triangle": "kite"}
COCO_BACKGROUND = "wall-other-merged"
ADE20K_CLASSES = {"circle": "ball", "square": "screen", "triangle": "tent"}
ADE20K_BACKGROUND = "wall"

# The random stream of each layout's images (the shapes detection sets use 0-3).
_STREAMS = {"voc2007": 100, "voc2012": 101, "coco": 102, "ade20k": 103}
# VOC: boxes this small (px, either side) are "difficult", as VOC marks hard objects.
_DIFFICULT_BELOW = 10


def render_image(seed: int, layout: str, index: int, image_size: int):
    """
    One image of a miniature: a shapes detection image (:func:`.shapes.render_detection_image`)
    from the random stream of (``seed``, the layout, ``index``), its objects with their full
    "mask" and their "visible" mask (later objects are drawn over earlier ones).
    """
    rng = np.random.default_rng([seed, _STREAMS[layout], index])
    img, objects = shapes.render_detection_image(rng, image_size)
    covered = np.zeros((image_size, image_size), dtype=bool)
    for obj in reversed(objects):
        mask = polygon_mask(obj["polygon"], image_size, image_size)
        obj["mask"] = mask
        obj["visible"] = mask & ~covered
        covered |= mask
    return img, objects


def shape_name(obj) -> str:
    """The shapes class ("circle", "square" or "triangle") of an object of :func:`render_image`."""
    return shapes.DETECTION_CLASSES[obj["category"]]


# ------------------------------------------------------------------------------------------------
# Pascal VOC
# ------------------------------------------------------------------------------------------------
def _voc_xml(file_id: str, year: int, size: int, objects) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = f"VOC{year}"
    ET.SubElement(root, "filename").text = f"{file_id}.jpg"
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "bio_detectron miniature"
    dims = ET.SubElement(root, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(dims, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        x0, y0, x1, y1 = obj["bbox"]
        # VOC boxes are 1-based inclusive pixel indices (detectron2 subtracts 1 from the minima).
        box = (
            max(1, math.floor(x0) + 1),
            max(1, math.floor(y0) + 1),
            min(size, math.ceil(x1)),
            min(size, math.ceil(y1)),
        )
        difficult = min(box[2] - box[0], box[3] - box[1]) + 1 < _DIFFICULT_BELOW
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = VOC_CLASSES[shape_name(obj)]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, key).text = str(value)
    return ET.ElementTree(root)


def write_voc(folder: str, year: int, counts: Dict[str, int], image_size: int, seed: int) -> None:
    """
    Write ``VOC<year>``'s layout into ``folder``: ``counts["train"]`` and ``counts["val"]``
    images in the train and val splits (trainval: both), and for 2007 ``counts["val"]`` more in
    test. Image ids are VOC's: ``000001`` (2007), ``2012_000001`` (2012).
    """
    if year not in (2007, 2012):
        raise ValueError(f"year must be 2007 or 2012 (detectron2's VOC years), got {year}")
    splits = {"train": counts["train"], "val": counts["val"]}
    if year == 2007:
        splits["test"] = counts["val"]
    for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    ids: Dict[str, List[str]] = {}
    index = 0
    for split, count in splits.items():
        ids[split] = []
        for _ in range(count):
            file_id = f"{index + 1:06d}" if year == 2007 else f"{year}_{index + 1:06d}"
            img, objects = render_image(seed, f"voc{year}", index, image_size)
            save_jpeg(img, os.path.join(folder, "JPEGImages", f"{file_id}.jpg"))
            xml = _voc_xml(file_id, year, image_size, objects)
            xml.write(os.path.join(folder, "Annotations", f"{file_id}.xml"))
            ids[split].append(file_id)
            index += 1
    ids["trainval"] = ids["train"] + ids["val"]
    for split, names in ids.items():
        with open(os.path.join(folder, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(f"{name}\n" for name in names))


# ------------------------------------------------------------------------------------------------
# ADE20K (semantic segmentation, detectron2's converted labels)
# ------------------------------------------------------------------------------------------------
def write_ade20k(folder: str, counts: Dict[str, int], image_size: int, seed: int) -> None:
    """
    Write ``ADEChallengeData2016``'s layout as detectron2 reads it into ``folder``:
    ``images/{training,validation}/ADE_*.jpg`` and ``annotations_detectron2/...`` PNGs of
    labels 0-149 (ADE20K's 150 classes; 255 would be ignored).
    """
    label = {shape: ADE20K_SEM_SEG_CATEGORIES.index(n) for shape, n in ADE20K_CLASSES.items()}
    background = ADE20K_SEM_SEG_CATEGORIES.index(ADE20K_BACKGROUND)
    index = 0
    for split, dirname in (("train", "training"), ("val", "validation")):
        image_dir = os.path.join(folder, "images", dirname)
        label_dir = os.path.join(folder, "annotations_detectron2", dirname)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for k in range(counts[split]):
            stem = f"ADE_{split}_{k + 1:08d}"
            img, objects = render_image(seed, "ade20k", index, image_size)
            labels = np.full((image_size, image_size), background, dtype=np.uint8)
            for obj in objects:
                labels[obj["visible"]] = label[shape_name(obj)]
            save_jpeg(img, os.path.join(image_dir, f"{stem}.jpg"))
            Image.fromarray(labels).save(os.path.join(label_dir, f"{stem}.png"))
            index += 1

"""
Writing a generated detection dataset in COCO format: the one writer that the shapes and textures
generators share, and the folder layout it writes.

Layout of a dataset folder: ``<split>/<index:06d>.jpg`` and
``annotations/instances_<split>.json`` for every split. The json is written compactly, with keys
in a fixed order, so that the same images and objects always give byte-identical files (the
generated datasets are cached by name and generator version, and a test checks determinism).
"""

import json
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["save_jpeg", "split_paths", "write_coco_dataset"]

# JPEG quality: high enough that colours and edges survive, low enough to keep files small. The
# colour is kept at full resolution (4:4:4): with the usual 4:2:0 subsampling, shapes of 10 px lose
# a visible part of their colour to the background.
_JPEG_QUALITY = 90


def save_jpeg(img: Image.Image, path: str) -> None:
    """Save a generated image as the datasets store them (quality 90, no chroma subsampling)."""
    img.save(path, format="JPEG", quality=_JPEG_QUALITY, subsampling=0)


def split_paths(folder: str, split: str) -> Tuple[str, str]:
    """
    Where a split of a dataset written by :func:`write_coco_dataset` lives.

    Args:
        folder: the dataset folder.
        split: "train" or "val".

    Returns:
        (json_file, image_root) of the split.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return (
        os.path.join(folder, "annotations", f"instances_{split}.json"),
        os.path.join(folder, split),
    )


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def write_coco_dataset(
    output_dir: str,
    num_images: Mapping[str, int],
    image_size: int,
    render: Callable[[np.random.Generator, int], Tuple[Image.Image, List[Dict]]],
    image_rng: Callable[[str, int], np.random.Generator],
    class_names: Sequence[str],
    supercategory: str,
    name: str,
    version: int,
    extra_fields: Optional[Callable[[Dict], Dict]] = None,
) -> None:
    """
    Render every image of every split and write it with its COCO instances json.

    Args:
        output_dir: an existing folder to write into.
        num_images: split name -> number of images, e.g. ``{"train": 1000, "val": 200}``.
        image_size: side of the square images, in pixels.
        render: ``render(rng, image_size) -> (image, objects)``; each object is a dict with
            "category" (an index into ``class_names``), "polygon" ((N, 2) array of COCO pixel
            coordinates) and "bbox" ([x0, y0, x1, y1]).
        image_rng: ``image_rng(split, index)``, the random generator of one image. One per image,
            so that an image does not depend on how many were generated before it.
        class_names: the categories; category ids in the json are 1-based positions here.
        supercategory: the "supercategory" of every category.
        name: the dataset's name in the json's description ("bio_detectron generated <name>").
        version: the generator version, written to the json's "info".
        extra_fields: ``extra_fields(object) -> dict`` of fields to add to its annotation after
            the COCO ones (e.g. a colour kept for tests), or None.
    """
    categories = [
        {"id": i + 1, "name": class_name, "supercategory": supercategory}
        for i, class_name in enumerate(class_names)
    ]
    for split, count in num_images.items():
        description = f"bio_detectron generated {name}, {split} split"
        info = {"description": description, "version": str(version)}
        _write_split(
            output_dir, split, count, image_size, render, image_rng, categories, info, extra_fields
        )


def _write_split(
    output_dir, split, num_images, image_size, render, image_rng, categories, info, extra_fields
) -> None:
    image_dir = os.path.join(output_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        img, objects = render(image_rng(split, index), image_size)
        file_name = f"{index:06d}.jpg"
        save_jpeg(img, os.path.join(image_dir, file_name))
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for obj in objects:
            x0, y0, x1, y1 = obj["bbox"]
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": obj["category"] + 1,
                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round(_polygon_area(obj["polygon"]), 2),
                "iscrowd": 0,
                "segmentation": [obj["polygon"].reshape(-1).tolist()],
            }
            if extra_fields is not None:
                extra = extra_fields(obj)
                clash = sorted(set(extra) & set(annotation))
                if clash:
                    raise ValueError(f"extra_fields may not replace the COCO field(s) {clash}")
                annotation.update(extra)
            annotations.append(annotation)
    coco = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    json_file, _ = split_paths(output_dir, split)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    with open(json_file, "w") as f:
        json.dump(coco, f, separators=(",", ":"))

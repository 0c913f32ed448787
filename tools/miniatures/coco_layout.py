"""
The COCO miniature (:mod:`.miniatures`) in COCO 2017's layout: images, the instances json, the
person-keypoints json, and the panoptic json with its PNGs and the "separated" semantic PNGs.
"""

import json
import math
import os
from typing import Dict, List

import numpy as np
from detectron2.data.datasets.builtin_meta import (
    COCO_CATEGORIES,
    COCO_PERSON_KEYPOINT_NAMES,
    _get_builtin_metadata,
)
from PIL import Image

from bio_detectron.data.coco_writer import _polygon_area, save_jpeg

from .layouts import COCO_BACKGROUND, COCO_THINGS, render_image, shape_name

__all__ = ["write_coco"]

# Person keypoints: the nose on the upward ray from a shape's centre, the i-th (left, right) pair
# 20 * i degrees to either side of it.
_KEYPOINT_STEP_DEG = 20.0


def _ray_exit(poly: np.ndarray, centre: np.ndarray, angle: float) -> np.ndarray:
    """Where the ray from ``centre`` (inside the convex ``poly``) at ``angle`` leaves it."""
    d = np.array([math.cos(angle), math.sin(angle)])
    best = None
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        e = b - a
        denom = d[0] * e[1] - d[1] * e[0]
        if abs(denom) < 1e-12:
            continue
        w = a - centre
        t = (w[0] * e[1] - w[1] * e[0]) / denom  # along the ray
        s = (w[0] * d[1] - w[1] * d[0]) / denom  # along the edge
        if t > 0 and -1e-9 <= s <= 1 + 1e-9 and (best is None or t < best):
            best = t
    return centre + best * d


def _keypoints(obj, size: int) -> List[float]:
    """17 COCO keypoints (x, y, v) on the shape's outline; v 1 where a later shape covers it."""
    centre = obj["polygon"].mean(axis=0)
    angles = [-90.0]
    for i in range(1, 9):  # (left, right) pairs: eyes, ears, shoulders, ..., ankles
        angles += [-90.0 + _KEYPOINT_STEP_DEG * i, -90.0 - _KEYPOINT_STEP_DEG * i]
    values: List[float] = []
    for angle in angles:
        x, y = _ray_exit(obj["polygon"], centre, math.radians(angle))
        # The pixel just inside the outline, to ask whether the shape is seen there.
        px = min(size - 1, max(0, int(centre[0] + 0.95 * (x - centre[0]))))
        py = min(size - 1, max(0, int(centre[1] + 0.95 * (y - centre[1]))))
        seen = obj["visible"][py, px] or not obj["mask"][py, px]
        values += [round(float(x), 2), round(float(y), 2), 2 if seen else 1]
    return values


def _id2rgb(segment_ids: np.ndarray) -> np.ndarray:
    """COCO panoptic's colour encoding of segment ids: id = R + 256 G + 256^2 B."""
    return np.stack([(segment_ids >> (8 * c)) & 255 for c in range(3)], axis=-1).astype(np.uint8)


def _box_of(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def write_coco(folder: str, counts: Dict[str, int], image_size: int, seed: int) -> None:
    """
    Write ``coco/``'s layout into ``folder``: ``{train,val}2017`` images and, for both splits,
    the instances json (boxes, polygons), the person-keypoints json, the panoptic json with its
    PNGs and the "separated" semantic PNGs (things 0, stuff 1-53, as
    ``register_coco_panoptic_separated`` expects). Categories are all of COCO's, with COCO's ids.
    """
    categories, keypoint_names = COCO_CATEGORIES, COCO_PERSON_KEYPOINT_NAMES
    id_of = {c["name"]: c["id"] for c in categories}
    things = [c for c in categories if c["isthing"]]
    background = id_of[COCO_BACKGROUND]
    stuff_contiguous = _get_builtin_metadata("coco_panoptic_separated")[
        "stuff_dataset_id_to_contiguous_id"
    ]
    person = {"id": 1, "name": "person", "supercategory": "person"}
    os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
    index = 0
    for split, count in counts.items():
        sub = f"{split}2017"
        for name in (sub, f"panoptic_{sub}", f"panoptic_stuff_{sub}"):
            os.makedirs(os.path.join(folder, name), exist_ok=True)
        images, instances, people, panoptic = [], [], [], []
        for _ in range(count):
            image_id = index + 1
            stem = f"{image_id:012d}"
            img, objects = render_image(seed, "coco", index, image_size)
            save_jpeg(img, os.path.join(folder, sub, f"{stem}.jpg"))
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{stem}.jpg",
                    "width": image_size,
                    "height": image_size,
                }
            )
            segment_ids = np.full((image_size, image_size), len(objects) + 1, dtype=np.int64)
            semantic = np.full((image_size, image_size), stuff_contiguous[background], np.uint8)
            segments = []
            for k, obj in enumerate(objects):
                x0, y0, x1, y1 = obj["bbox"]
                annotation = {
                    "image_id": image_id,
                    "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                    "area": round(_polygon_area(obj["polygon"]), 2),
                    "iscrowd": 0,
                    "segmentation": [obj["polygon"].reshape(-1).tolist()],
                }
                category = id_of[COCO_THINGS[shape_name(obj)]]
                instances.append({"id": len(instances) + 1, "category_id": category, **annotation})
                keypoints = _keypoints(obj, image_size)
                people.append(
                    {
                        "id": len(people) + 1,
                        "category_id": 1,
                        **annotation,
                        "keypoints": keypoints,
                        "num_keypoints": sum(v > 0 for v in keypoints[2::3]),
                    }
                )
                if obj["visible"].any():
                    segment_ids[obj["visible"]] = k + 1
                    semantic[obj["visible"]] = 0  # things are 0 in the separated semantic PNG
                    segments.append(
                        {
                            "id": k + 1,
                            "category_id": category,
                            "iscrowd": 0,
                            "bbox": _box_of(obj["visible"]),
                            "area": int(obj["visible"].sum()),
                        }
                    )
            stuff = segment_ids == len(objects) + 1
            segments.append(
                {
                    "id": len(objects) + 1,
                    "category_id": background,
                    "iscrowd": 0,
                    "bbox": _box_of(stuff),
                    "area": int(stuff.sum()),
                }
            )
            Image.fromarray(_id2rgb(segment_ids)).save(
                os.path.join(folder, f"panoptic_{sub}", f"{stem}.png")
            )
            Image.fromarray(semantic).save(
                os.path.join(folder, f"panoptic_stuff_{sub}", f"{stem}.png")
            )
            panoptic.append(
                {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments}
            )
            index += 1
        info = {"description": f"bio_detectron miniature of COCO 2017, {split}", "version": "1"}
        thing_categories = [
            {"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in things
        ]
        person_category = {**person, "keypoints": list(keypoint_names), "skeleton": []}
        files = {
            f"instances_{sub}.json": (instances, thing_categories),
            f"person_keypoints_{sub}.json": (people, [person_category]),
            f"panoptic_{sub}.json": (panoptic, categories),
        }
        for file_name, (annotations, cats) in files.items():
            content = {
                "info": info,
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": cats,
            }
            with open(os.path.join(folder, "annotations", file_name), "w") as f:
                json.dump(content, f, separators=(",", ":"))

#!/usr/bin/env python
"""
Train a detection config on a held-out set of real images that no recipe was chosen on:
scikit-learn's handwritten digits (1797 scans of 8x8 pixels, 10 classes, from the UCI "Optical
Recognition of Handwritten Digits" set) pasted, tinted, onto crops of the photos set's background
photographs, 128 px, 1000 training and 200 validation images of 1-4 digits each.

The configs' recipes were chosen on the shapes and photos sets; this set only checks whether they
carry over. It is generated once into the datasets cache (``$BIO_DETECTRON_DATASETS`` or
``~/.cache/bio_detectron``), registered as ``heldout_digits_train`` and ``heldout_digits_val``
(COCO evaluation), and the config trains on it with only its dataset keys swapped, as a user
would train on their own COCO-format set::

    python tools/heldout_digits.py \\
        --config-file configs/Photos-Detection/retinanet_R_18_FPN_sign_symmetry.yaml \\
        SOLVER.MAX_ITER 1600 OUTPUT_DIR output/heldout/sign_symmetry_1600

Every other argument is ``tools/train_net.py``'s. The digits of the two splits come from disjoint
parts of the scans (75 % / 25 %, shuffled with the seed).
"""

import json
import os
import sys

import numpy as np
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import default_argument_parser
from PIL import Image

from bio_detectron.data.cache import dataset_dir, generate_once
from bio_detectron.data.photos import background_crop
from bio_detectron.engine.launcher import launch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_net  # noqa: E402  (tools/train_net.py, beside this file)

VERSION = 1
IMAGE_SIZE = 128
SPLITS = {"train": 1000, "val": 200}
# A digit's square spans 20-56 px of the 128 px image; its box is the tight box of its strokes.
DIGIT_SIDES = (20, 57)
# Pixels of the upscaled scan above this ink level count as the digit's strokes for its box.
INK = 0.25


def _place(rng, side, size, boxes, tries=20):
    """Top-left corner of a ``side`` square that overlaps none of ``boxes``, or None."""
    for _ in range(tries):
        x0, y0 = (int(v) for v in rng.integers(0, size - side, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
            return box
    return None


def generate(out_dir, seed=0):
    """
    Write ``{train,val}/<index>.jpg`` and ``{train,val}.json`` (COCO instances) under ``out_dir``.

    Args:
        out_dir: an empty folder.
        seed: the shuffle of the scans into the two splits and the images' random stream.
    """
    from sklearn.datasets import load_digits  # the "datasets" extra

    digits = load_digits()
    scans, labels = digits.images / 16.0, digits.target
    order = np.random.default_rng(seed).permutation(len(labels))
    split_at = int(0.75 * len(order))
    pools = {"train": order[:split_at], "val": order[split_at:]}
    categories = [{"id": i + 1, "name": str(i), "supercategory": "digit"} for i in range(10)]
    for stream, (split, count) in enumerate(SPLITS.items(), start=1):
        rng = np.random.default_rng([seed, stream])
        os.makedirs(os.path.join(out_dir, split))
        images, annotations = [], []
        for index in range(count):
            canvas = background_crop(rng, IMAGE_SIZE)
            boxes = []
            for _ in range(int(rng.integers(1, 5))):
                side = int(rng.integers(*DIGIT_SIDES))
                box = _place(rng, side, IMAGE_SIZE, boxes)
                if box is None:
                    continue
                scan = int(pools[split][rng.integers(len(pools[split]))])
                ink = Image.fromarray((scans[scan] * 255).astype(np.uint8))
                alpha = np.asarray(ink.resize((side, side), Image.BILINEAR), np.float32) / 255.0
                ys, xs = np.nonzero(alpha > INK)
                if len(xs) == 0:
                    continue
                color = rng.uniform(0, 255, size=3)
                x0, y0 = box[:2]
                region = canvas[y0 : y0 + side, x0 : x0 + side]
                a = alpha[..., None]
                canvas[y0 : y0 + side, x0 : x0 + side] = region * (1 - a) + color * a
                boxes.append(box)
                bx0, by0 = x0 + int(xs.min()), y0 + int(ys.min())
                w, h = int(xs.max()) + 1 - int(xs.min()), int(ys.max()) + 1 - int(ys.min())
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": int(labels[scan]) + 1,
                        "bbox": [float(bx0), float(by0), float(w), float(h)],
                        "area": float(w * h),
                        "iscrowd": 0,
                    }
                )
            name = f"{split}/{index}.jpg"
            pixels = np.clip(canvas, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(out_dir, name), quality=92)
            images.append(
                {"id": index + 1, "file_name": name, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
            )
        coco = {"images": images, "annotations": annotations, "categories": categories}
        with open(os.path.join(out_dir, f"{split}.json"), "w") as f:
            json.dump(coco, f)


def heldout_digits_dir(root=None, seed=0):
    """The set's folder, generated on first use."""
    folder = dataset_dir("heldout_digits", VERSION, root, IMAGE_SIZE, *SPLITS.values(), seed)
    return generate_once(folder, lambda out: generate(out, seed))


def register(folder):
    """Register ``heldout_digits_{train,val}`` (COCO) from ``folder``; a no-op when registered."""
    from detectron2.data import DatasetCatalog

    for split in SPLITS:
        name = f"heldout_digits_{split}"
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, os.path.join(folder, f"{split}.json"), folder)


def main(args, folder):
    register(folder)  # again in every process that launch() starts
    return train_net.main(args)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    args.opts += ["DATASETS.TRAIN", "('heldout_digits_train',)"]
    args.opts += ["DATASETS.TEST", "('heldout_digits_val',)"]
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, heldout_digits_dir()),
    )

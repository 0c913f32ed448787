"""The embedded textures detection dataset: generation, content, registration, and its configs."""

import glob
import json
import os

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from bio_detectron.config import add_bio_config
from bio_detectron.data import (
    TEXTURE_CLASSES,
    generated_dataset,
    register_generated_dataset,
)
from bio_detectron.data.drawing import polygon_mask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=96, num_train=12, num_val=4, seed=3)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    generated_dataset("textures", "train", root=root, **TINY)
    return root


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_generation_is_deterministic(tiny_root, tmp_path):
    generated_dataset("textures", "val", root=str(tmp_path), **TINY)
    for split in ("train", "val"):
        a_json, a_images = generated_dataset(
            "textures", split, generate=False, root=tiny_root, **TINY
        )
        b_json, b_images = generated_dataset(
            "textures", split, generate=False, root=str(tmp_path), **TINY
        )
        assert _read(a_json) == _read(b_json)
        names = sorted(os.listdir(a_images))
        assert names == sorted(os.listdir(b_images)) and len(names) == TINY[f"num_{split}"]
        for name in names:
            assert _read(os.path.join(a_images, name)) == _read(os.path.join(b_images, name))


def test_annotations_fit_the_objects_and_objects_are_textured(tiny_root):
    json_file, image_root = generated_dataset(
        "textures", "train", generate=False, root=tiny_root, **TINY
    )
    with open(json_file) as f:
        coco = json.load(f)
    assert [c["name"] for c in coco["categories"]] == list(TEXTURE_CLASSES)
    by_image = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    assert all(by_image.values())  # every image has an object
    assert len({a["category_id"] for a in coco["annotations"]}) >= 5
    inside, outside = [], []
    for img in coco["images"]:
        with Image.open(os.path.join(image_root, img["file_name"])) as image:
            pixels = np.asarray(image, np.float32)
        edges = np.abs(np.diff(pixels, axis=1)).sum(-1)  # horizontal gradient, (H, W - 1)
        union = np.zeros(pixels.shape[:2], bool)
        for ann in by_image[img["id"]]:
            poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose(
                [x, y, x + w, y + h], [*poly.min(0), *poly.max(0)], atol=0.02
            )
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
            assert 0 < ann["area"] <= w * h
            union |= polygon_mask(poly, img["height"], img["width"])
        inside.append(edges[union[:, 1:]].mean())
        outside.append(edges[~union[:, 1:]].mean())
    # Textures are high-frequency, the cloudy background is not.
    assert np.mean(inside) > 3 * np.mean(outside), (np.mean(inside), np.mean(outside))


def test_registered_like_shapes(tiny_root):
    name = "textures_test_tiny_val"
    if name not in DatasetCatalog.list():
        register_generated_dataset(name, "textures", "val", root=tiny_root, **TINY)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == TINY["num_val"] and all(d["annotations"] for d in dicts)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == list(TEXTURE_CLASSES) and meta.evaluator_type == "coco"
    for builtin in ("textures_train", "textures_val", "textures_train_mini", "textures_val_mini"):
        assert builtin in DatasetCatalog.list()
        assert MetadataCatalog.get(builtin).thing_classes == list(TEXTURE_CLASSES)
    with pytest.raises(ValueError, match="image_size must be at least 32"):
        generated_dataset("textures", "train", root=tiny_root, image_size=16)


def _load(path):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def test_textures_configs_differ_from_shapes_ones_only_in_dataset_keys():
    shapes = sorted(glob.glob(os.path.join(REPO, "configs/Shapes-Detection/retinanet_*.yaml")))
    textures = sorted(glob.glob(os.path.join(REPO, "configs/Textures-Detection/retinanet_*.yaml")))
    assert [os.path.basename(p) for p in shapes] == [os.path.basename(p) for p in textures]
    assert len(shapes) >= 6
    for s, t in zip(shapes, textures):
        a, b = _load(s), _load(t)
        assert b.DATASETS.TRAIN == ("textures_train",) and b.DATASETS.TEST == ("textures_val",)
        assert b.MODEL.RETINANET.NUM_CLASSES == len(TEXTURE_CLASSES)
        for cfg in (a, b):
            cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()
            cfg.MODEL.RETINANET.NUM_CLASSES = 0
            cfg.OUTPUT_DIR = ""
        assert a == b, t

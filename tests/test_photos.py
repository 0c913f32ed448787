"""The embedded photos detection dataset: real photographs, deterministic generation, annotations
that are the pasted cuts, registration, the classification folder, and its configs."""

import glob
import json
import logging
import os
import sys

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from bio_detectron.config import add_bio_config
from bio_detectron.data import (
    PHOTO_CLASSES,
    classification_folder,
    generated_dataset,
    photos,
)
from bio_detectron.data.drawing import polygon_mask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=96, num_train=16, num_val=4, seed=5)


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    generated_dataset("photos", "train", root=root, **TINY)
    return root


def _coco(root, split="train"):
    json_file, image_root = generated_dataset("photos", split, generate=False, root=root, **TINY)
    with open(json_file) as f:
        return json.load(f), image_root


def test_source_photographs_are_the_ones_the_set_was_made_from(caplog):
    # The digests the generator records are those of the installed photographs (scikit-image
    # 0.26, scikit-learn 1.9); a different photograph is named in a warning.
    names = {region[0] for region in photos._OBJECTS.values()}
    names |= {name for name, _ in photos._BACKGROUNDS}
    assert names == set(photos._DIGESTS)
    with caplog.at_level(logging.WARNING, logger=photos.__name__):
        photos.source_photo.cache_clear()
        for name in sorted(names):
            pixels = photos.source_photo(name)
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert "differs from the one" not in caplog.text
    photos.source_photo.cache_clear()
    original = photos._DIGESTS["coins"]
    photos._DIGESTS["coins"] = "00000000"
    try:
        with caplog.at_level(logging.WARNING, logger=photos.__name__):
            photos.source_photo("coins")
        assert "'coins' installed here differs" in caplog.text
    finally:
        photos._DIGESTS["coins"] = original
        photos.source_photo.cache_clear()


@pytest.mark.parametrize("module, photo", [("skimage", "coins"), ("sklearn", "china")])
def test_without_the_datasets_extra_the_error_names_it(monkeypatch, module, photo):
    # What Python does for a package that is not installed; its submodules are dropped too.
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)
    photos.source_photo.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match=r"pip install 'bio_detectron\[datasets\]'"):
            photos.source_photo(photo)
    finally:
        photos.source_photo.cache_clear()


def test_generation_is_deterministic(tiny_root, tmp_path):
    generated_dataset("photos", "val", root=str(tmp_path), **TINY)
    for split in ("train", "val"):
        a_json, a_images = generated_dataset(
            "photos", split, generate=False, root=tiny_root, **TINY
        )
        b_json, b_images = generated_dataset(
            "photos", split, generate=False, root=str(tmp_path), **TINY
        )
        assert _bytes(a_json) == _bytes(b_json)
        names = sorted(os.listdir(a_images))
        assert len(names) == TINY[f"num_{split}"]
        for name in names:
            a, b = os.path.join(a_images, name), os.path.join(b_images, name)
            assert _bytes(a) == _bytes(b)


def test_annotations_are_the_pasted_cuts(tiny_root):
    coco, image_root = _coco(tiny_root)
    assert [c["name"] for c in coco["categories"]] == list(PHOTO_CLASSES)
    assert len(PHOTO_CLASSES) >= 8
    counts = {}
    for ann in coco["annotations"]:
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
    assert set(counts) == {img["id"] for img in coco["images"]}
    assert min(counts.values()) >= 1 and max(counts.values()) <= 5
    assert len({a["category_id"] for a in coco["annotations"]}) >= 8
    size = TINY["image_size"]
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= size + 1e-6 and y + h <= size + 1e-6
        # The cut's longer side is 10-45 % of the image side; turned, its box is up to sqrt(2)
        # times that.
        assert 0.09 * size <= max(w, h) <= 0.45 * 1.42 * size
        poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
        assert np.allclose([poly[:, 0].min(), poly[:, 1].min()], [x, y], atol=0.02)


def test_a_cut_paints_exactly_its_polygon_with_the_patch_it_maps_from():
    # _paste paints the pixels of the annotation's polygon (pycocotools' rasterisation, as
    # training masks are made) and nothing else, each from the patch position the inverse map
    # gives: here a shift by (10, 20), so pixel (x, y) shows patch pixel (x - 10, y - 20).
    patch = np.stack([*np.meshgrid(np.arange(40.0), np.arange(30.0)), np.zeros((30, 40))], -1)
    polygon = np.array([[12.0, 21.0], [45.0, 24.0], [38.0, 47.0], [15.0, 44.0]])
    inverse = np.array([[1.0, 0.0, -10.0], [0.0, 1.0, -20.0]])
    image = np.full((64, 64, 3), -1.0)
    photos._paste(image, patch, polygon, inverse)
    mask = polygon_mask(polygon, 64, 64)
    assert mask.sum() > 400 and np.array_equal(image[..., 2] == 0, mask)
    ys, xs = np.nonzero(mask)
    assert np.allclose(image[ys, xs, 0], xs - 10) and np.allclose(image[ys, xs, 1], ys - 20)


def test_registered_with_coco_metadata_and_mini_copies():
    for name, (n, size) in {
        "photos_train_mini": (32, 96),
        "photos_val_mini": (16, 96),
    }.items():
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(PHOTO_CLASSES) and meta.evaluator_type == "coco"
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == n and {d["height"] for d in dicts} == {size}
    assert MetadataCatalog.get("photos_train").thing_classes == list(PHOTO_CLASSES)
    folder = f"photos_v{photos.GENERATOR_VERSION}_128px_train1000_val200_seed0"
    assert folder in MetadataCatalog.get("photos_val").json_file


def test_image_size_too_small_is_refused(tmp_path):
    with pytest.raises(ValueError, match="image_size must be at least 64 pixels, got 32"):
        generated_dataset("photos", "train", root=str(tmp_path), image_size=32)


def test_classification_folder_has_one_object_of_each_class(tmp_path):
    root = classification_folder(
        "photos", root=str(tmp_path), image_size=48, num_train_per_class=2, num_val_per_class=1
    )
    for split, n in (("train", 2), ("val", 1)):
        classes = sorted(os.listdir(os.path.join(root, split)))
        assert classes == sorted(PHOTO_CLASSES)
        for c in classes:
            files = os.listdir(os.path.join(root, split, c))
            assert len(files) == n
            with Image.open(os.path.join(root, split, c, files[0])) as image:
                assert image.size == (48, 48)


def _load(path):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def test_photos_configs_differ_from_shapes_ones_only_in_dataset_keys_and_schedule_length():
    shapes = sorted(glob.glob(os.path.join(REPO, "configs/Shapes-Detection/retinanet_*.yaml")))
    ours = sorted(glob.glob(os.path.join(REPO, "configs/Photos-Detection/retinanet_*.yaml")))
    assert [os.path.basename(p) for p in shapes] == [os.path.basename(p) for p in ours]
    assert len(ours) >= 6
    for s, p in zip(shapes, ours):
        a, b = _load(s), _load(p)
        assert b.DATASETS.TRAIN == ("photos_train",) and b.DATASETS.TEST == ("photos_val",)
        assert b.MODEL.RETINANET.NUM_CLASSES == len(PHOTO_CLASSES)
        assert b.INPUT.MIN_SIZE_TEST == b.INPUT.MAX_SIZE_TEST == 128
        for cfg in (a, b):
            cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()
            cfg.MODEL.RETINANET.NUM_CLASSES = 0
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (0,), 0
            cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 0
            cfg.SOLVER.MAX_ITER = 0
            cfg.OUTPUT_DIR = ""
        assert a == b, p

"""Tests of the embedded shapes datasets: generation, caching, detectron2 registration, errors."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
)
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.structures import Boxes, BoxMode, Instances, polygons_to_bitmask
from PIL import Image
from pycocotools.coco import COCO

from bio_detectron.data import (
    CLASSIFICATION_CLASSES,
    DETECTION_CLASSES,
    CheckedDatasetMapper,
    classification_folder,
    datasets_root,
    ensure_dataset_files,
    generated_dataset,
    load_coco_dataset,
    register_generated_dataset,
)
from bio_detectron.data.cache import generate_once

# Small but not trivial: enough images that an isolated circle and overlaps occur.
TINY = dict(image_size=96, num_train=12, num_val=8, seed=3)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    generated_dataset("shapes", "train", root=root, **TINY)
    return root


@pytest.fixture(scope="module")
def tiny_val(tiny_root):
    """The tiny val split registered through the same function as shapes_val."""
    name = "shapes_test_tiny_val"
    if name not in DatasetCatalog.list():
        register_generated_dataset(name, "shapes", "val", root=tiny_root, **TINY)
    return name


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BIO_DETECTRON_DATASETS", str(tmp_path))
    assert datasets_root() == str(tmp_path)
    json_file, image_root = generated_dataset(
        "shapes", "val", image_size=64, num_train=1, num_val=2
    )
    assert json_file.startswith(str(tmp_path)) and os.path.isfile(json_file)
    assert sorted(os.listdir(image_root)) == ["000000.jpg", "000001.jpg"]
    monkeypatch.delenv("BIO_DETECTRON_DATASETS")
    assert datasets_root() == os.path.expanduser(os.path.join("~", ".cache", "bio_detectron"))


def test_deterministic_and_seed_dependent(tmp_path, tiny_root):
    json_a, images_a = generated_dataset("shapes", "train", root=tiny_root, **TINY)
    json_b, images_b = generated_dataset("shapes", "train", root=str(tmp_path / "b"), **TINY)
    assert _read(json_a) == _read(json_b)
    names = sorted(os.listdir(images_a))
    assert names == sorted(os.listdir(images_b)) and len(names) == TINY["num_train"]
    for name in names:
        assert _read(os.path.join(images_a, name)) == _read(os.path.join(images_b, name))

    other_seed = dict(TINY, seed=TINY["seed"] + 1)
    json_c, _ = generated_dataset("shapes", "train", root=str(tmp_path / "c"), **other_seed)
    assert _read(json_c) != _read(json_a)
    # Train and val draw from different streams: no image is shared.
    _, val_images = generated_dataset("shapes", "val", generate=False, root=tiny_root, **TINY)
    assert _read(os.path.join(val_images, names[0])) != _read(os.path.join(images_a, names[0]))


def test_json_is_valid_coco(tiny_root):
    json_file, image_root = generated_dataset(
        "shapes", "train", generate=False, root=tiny_root, **TINY
    )
    coco = COCO(json_file)
    size = TINY["image_size"]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(DETECTION_CLASSES)
    assert len(coco.getImgIds()) == TINY["num_train"]
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        assert 1 <= len(anns) <= 5
        img = coco.loadImgs([img_id])[0]
        with Image.open(os.path.join(image_root, img["file_name"])) as image:
            assert image.size == (size, size)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= size and y + h <= size
            assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h
            # The box is the tight box of the polygon mask.
            poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
            np.testing.assert_allclose(
                [poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max()],
                [x, y, x + w, y + h],
                atol=0.011,
            )
            # Objects span roughly 10% to 50% of the image side.
            assert 0.05 * size <= max(w, h) <= 0.5 * size + 0.01


def _isolated(anns, ann):
    def xyxy(a):
        x, y, w, h = a["bbox"]
        return x, y, x + w, y + h

    ax0, ay0, ax1, ay1 = xyxy(ann)
    for other in anns:
        if other is ann:
            continue
        bx0, by0, bx1, by1 = xyxy(other)
        if min(ax1, bx1) > max(ax0, bx0) and min(ay1, by1) > max(ay0, by0):
            return False
    return True


def test_boxes_match_drawn_shapes(tiny_root):
    json_file, image_root = generated_dataset(
        "shapes", "train", generate=False, root=tiny_root, **TINY
    )
    coco = COCO(json_file)
    circle_id = DETECTION_CLASSES.index("circle") + 1
    checked = 0
    for img in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        with Image.open(os.path.join(image_root, img["file_name"])) as image:
            pixels = np.asarray(image, np.float32)
        for ann in anns:
            color = np.array(ann["color"], np.float32)
            # The mask has the object's colour (up to noise and JPEG) for every shape whose box
            # no other object touches. Eroded by a pixel: JPEG smears colour across edges.
            if _isolated(anns, ann):
                mask = coco.annToMask(ann).astype(bool)
                inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                inner &= mask[1:-1, :-2] & mask[1:-1, 2:]
                assert np.abs(pixels[1:-1, 1:-1][inner].mean(axis=0) - color).max() < 12, ann
            if ann["category_id"] != circle_id or not _isolated(anns, ann):
                continue
            x, y, w, h = ann["bbox"]
            cx, cy = int(x + w / 2), int(y + h / 2)
            centre = pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(axis=0)
            assert np.abs(centre - color).max() < 20
            # The pixels of the circle's colour around the box span the box itself: a box that
            # is too large, too small or misplaced would not.
            x0, y0 = max(int(x) - 3, 0), max(int(y) - 3, 0)
            window = pixels[y0 : int(y + h) + 4, x0 : int(x + w) + 4]
            ys, xs = np.nonzero(np.abs(window - color).max(axis=2) < 40)
            drawn = [xs.min() + x0, ys.min() + y0, xs.max() + x0 + 1, ys.max() + y0 + 1]
            np.testing.assert_allclose(drawn, [x, y, x + w, y + h], atol=1.5)
            checked += 1
    assert checked >= 1, "the tiny dataset should hold an isolated circle"


def test_builtin_registration():
    for split in ("train", "val"):
        name = f"shapes_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco"
        assert meta.thing_classes == list(DETECTION_CLASSES)
        assert (meta.json_file, meta.image_root) == generated_dataset(
            "shapes", split, generate=False
        )


def test_catalog_returns_real_files(tiny_val):
    dicts = DatasetCatalog.get(tiny_val)
    assert len(dicts) == TINY["num_val"]
    for d in dicts:
        assert os.path.isfile(d["file_name"])
        assert (d["height"], d["width"]) == (TINY["image_size"],) * 2
        for ann in d["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= ann["category_id"] < len(DETECTION_CLASSES)
            assert len(ann["segmentation"][0]) >= 6
    # The train mapper turns polygons into masks and boxes that detectron2 models consume.
    mapped = DatasetMapper(
        is_train=True, augmentations=[], image_format="BGR", use_instance_mask=True
    )(dicts[0])
    assert mapped["image"].shape == (3, TINY["image_size"], TINY["image_size"])
    inst = mapped["instances"]
    assert len(inst) == len(dicts[0]["annotations"]) and inst.gt_masks.polygons


def test_coco_evaluator_gives_100_ap_for_ground_truth(tiny_val):
    ensure_dataset_files(tiny_val)
    dicts = DatasetCatalog.get(tiny_val)
    gt = {d["image_id"]: d["annotations"] for d in dicts}

    class GroundTruthModel(torch.nn.Module):
        def forward(self, batched_inputs):
            outputs = []
            for inp in batched_inputs:
                anns = gt[inp["image_id"]]
                inst = Instances((inp["height"], inp["width"]))
                boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
                inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
                inst.scores = torch.ones(len(anns))
                inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
                masks = [polygons_to_bitmask(a["segmentation"], *inst.image_size) for a in anns]
                inst.pred_masks = torch.from_numpy(np.stack(masks))
                outputs.append({"instances": inst})
            return outputs

    mapper = CheckedDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    loader = build_detection_test_loader(dicts, mapper=mapper, num_workers=0)
    evaluator = COCOEvaluator(tiny_val, tasks=("bbox", "segm"), distributed=False)
    results = inference_on_dataset(GroundTruthModel(), loader, evaluator)
    assert results["bbox"]["AP"] == pytest.approx(100.0, abs=0.01)
    assert results["segm"]["AP"] == pytest.approx(100.0, abs=0.01)


def _write_json(path, content):
    with open(path, "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_missing_json_is_named(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_dataset(path, str(tmp_path))


def test_malformed_json_is_named(tmp_path):
    path = _write_json(tmp_path / "broken.json", '{"images": [')
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_coco_dataset(path, str(tmp_path))
    path = _write_json(tmp_path / "partial.json", {"images": [], "categories": []})
    with pytest.raises(ValueError, match="partial.json.*'annotations'"):
        load_coco_dataset(path, str(tmp_path))


def test_missing_images_are_named(tmp_path):
    images = [{"id": i, "file_name": f"img{i}.jpg", "height": 8, "width": 8} for i in range(8)]
    Image.new("RGB", (8, 8)).save(tmp_path / "img0.jpg")
    coco = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    path = _write_json(tmp_path / "instances.json", coco)
    with pytest.raises(FileNotFoundError) as info:
        load_coco_dataset(path, str(tmp_path))
    message = str(info.value)
    assert "7 of 8 images" in message and "instances.json" in message
    assert os.path.join(str(tmp_path), "img1.jpg") in message and "2 more" in message


@pytest.mark.parametrize("corruption", ["not_an_image", "truncated"])
def test_corrupt_image_is_named(tiny_val, tmp_path, corruption):
    record = dict(DatasetCatalog.get(tiny_val)[0])
    data = _read(record["file_name"])
    bad = str(tmp_path / f"{corruption}.jpg")
    with open(bad, "wb") as f:
        f.write(b"this is not a jpeg" if corruption == "not_an_image" else data[: len(data) // 2])
    record["file_name"] = bad
    mapper = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        mapper(record)


def test_classification_folders(tmp_path):
    root = classification_folder(
        "shapes", root=str(tmp_path), image_size=32, num_train_per_class=3, num_val_per_class=2
    )
    for split, count in (("train", 3), ("val", 2)):
        classes = sorted(os.listdir(os.path.join(root, split)))
        assert classes == sorted(CLASSIFICATION_CLASSES) and len(classes) >= 10
        for name in classes:
            files = sorted(os.listdir(os.path.join(root, split, name)))
            assert len(files) == count and all(f.endswith(".JPEG") for f in files)
            with Image.open(os.path.join(root, split, name, files[0])) as image:
                assert image.size == (32, 32)
    # A second call reuses the cache instead of generating again.
    stamp = os.stat(os.path.join(root, "train", "circle", "circle_00000.JPEG")).st_mtime_ns
    assert (
        classification_folder(
            "shapes", root=str(tmp_path), image_size=32, num_train_per_class=3, num_val_per_class=2
        )
        == root
    )
    assert os.stat(os.path.join(root, "train", "circle", "circle_00000.JPEG")).st_mtime_ns == stamp


def test_generation_race_uses_the_winner(tmp_path):
    target = str(tmp_path / "dataset")

    def generate_while_another_process_wins(out):
        with open(os.path.join(out, "mine"), "w"):
            pass
        # Another process finishes first and renames its folder into place.
        os.makedirs(target)
        with open(os.path.join(target, "theirs"), "w"):
            pass

    assert generate_once(target, generate_while_another_process_wins) == target
    assert os.listdir(target) == ["theirs"]
    # The losing temporary folder is cleaned up.
    assert os.listdir(tmp_path) == ["dataset"]


def test_failed_generation_leaves_nothing(tmp_path):
    def fail(out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate_once(str(tmp_path / "dataset"), fail)
    assert os.listdir(tmp_path) == []


def test_writer_refuses_an_extra_field_that_replaces_a_coco_one(tmp_path):
    # The shapes generator adds "color" through the shared writer's hook; a hook may add fields
    # but never overwrite one the COCO loaders read.
    from bio_detectron.data.coco_writer import write_coco_dataset
    from bio_detectron.data.shapes import render_detection_image

    with pytest.raises(ValueError, match=r"\['bbox'\]"):
        write_coco_dataset(
            str(tmp_path),
            {"val": 1},
            32,
            render=render_detection_image,
            image_rng=lambda split, index: np.random.default_rng(index),
            class_names=DETECTION_CLASSES,
            supercategory="shape",
            name="shapes",
            version=1,
            extra_fields=lambda obj: {"bbox": [0, 0, 1, 1]},
        )


def test_unknown_generated_kind_is_named():
    with pytest.raises(ValueError, match="'circles'.*'shapes', 'textures'"):
        register_generated_dataset("never_registered", "circles", "val")
    assert "never_registered" not in DatasetCatalog.list()

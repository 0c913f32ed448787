"""tools/heldout_digits.py: the held-out set of handwritten digits on photographs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(load_tool):
    return load_tool("heldout_digits")


@pytest.fixture(scope="module")
def small_set(digits, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("digits") / "set")
    os.makedirs(folder)
    splits = digits.SPLITS
    digits.SPLITS = {"train": 12, "val": 6}
    try:
        digits.generate(folder, seed=0)
    finally:
        digits.SPLITS = splits
    return folder


def test_boxes_hold_the_ink_and_nothing_but_it(digits, small_set):
    coco = json.load(open(os.path.join(small_set, "train.json")))
    assert [c["name"] for c in coco["categories"]] == [str(i) for i in range(10)]
    assert len(coco["images"]) == 12 and len(coco["annotations"]) >= 12
    for ann in coco["annotations"]:
        image = coco["images"][ann["image_id"] - 1]
        pixels = np.asarray(Image.open(os.path.join(small_set, image["file_name"])), np.float32)
        x, y, w, h = (int(v) for v in ann["bbox"])
        assert 0 <= x and 0 <= y and x + w <= digits.IMAGE_SIZE and y + h <= digits.IMAGE_SIZE
        # A digit's box is its strokes' box, inside the 20-56 px square it was drawn in.
        assert 3 <= w <= digits.DIGIT_SIDES[1] and 3 <= h <= digits.DIGIT_SIDES[1]
        assert 1 <= ann["category_id"] <= 10 and ann["area"] == w * h
        assert pixels.shape == (digits.IMAGE_SIZE, digits.IMAGE_SIZE, 3)
    # No two digits of an image overlap.
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    for boxes in by_image.values():
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert (
                    a[0] + a[2] <= b[0]
                    or b[0] + b[2] <= a[0]
                    or a[1] + a[3] <= b[1]
                    or (b[1] + b[3] <= a[1])
                )


def test_the_splits_draw_on_disjoint_scans(digits, monkeypatch, tmp_path):
    """Every scan a validation image pastes is one the training images never saw."""
    used = {"train": set(), "val": set()}
    real_fromarray = Image.fromarray
    scans = (__import__("sklearn.datasets").datasets.load_digits().images / 16.0 * 255).astype(
        np.uint8
    )
    lookup = {s.tobytes(): i for i, s in enumerate(scans)}
    split = {"now": None}
    real_makedirs = os.makedirs

    def makedirs(path, *args, **kwargs):
        split["now"] = os.path.basename(path)
        return real_makedirs(path, *args, **kwargs)

    def fromarray(array, *args, **kwargs):
        if array.shape == (8, 8):
            used[split["now"]].add(lookup[array.tobytes()])
        return real_fromarray(array, *args, **kwargs)

    monkeypatch.setattr(digits.os, "makedirs", makedirs)
    monkeypatch.setattr(digits.Image, "fromarray", fromarray)
    monkeypatch.setattr(digits, "SPLITS", {"train": 40, "val": 20})
    digits.generate(str(tmp_path), seed=0)
    assert len(used["train"]) > 40 and len(used["val"]) > 20
    # Scans of equal pixels count once: the 8x8 set holds a few exact duplicates.
    assert not (used["train"] & used["val"])


def test_registered_as_coco_with_the_ten_digits(digits, small_set, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    digits.register(small_set)
    dicts = DatasetCatalog.get("heldout_digits_val")
    assert len(dicts) == 6
    assert MetadataCatalog.get("heldout_digits_train").evaluator_type == "coco"
    assert MetadataCatalog.get("heldout_digits_val").thing_classes == [str(i) for i in range(10)]
    digits.register(small_set)  # a second call is a no-op, not an error


@pytest.mark.slow
def test_the_tool_trains_a_shipped_config_on_the_digits(tmp_path):
    """Two iterations of a photos config, trained and evaluated on the held-out set."""
    out = tmp_path / "run"
    env = dict(os.environ, BIO_DETECTRON_DATASETS=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    tool = os.path.join(TOOLS, "heldout_digits.py")
    config = os.path.join(REPO, "configs/Photos-Detection/retinanet_R_18_FPN_sign_symmetry.yaml")
    opts = ["SOLVER.MAX_ITER", "2", "SOLVER.AMP.ENABLED", "False", "OUTPUT_DIR", str(out)]
    subprocess.run([sys.executable, tool, "--config-file", config, *opts], env=env, check=True)
    config_yaml = (out / "config.yaml").read_text()
    assert "heldout_digits_train" in config_yaml and "heldout_digits_val" in config_yaml
    assert "photos_train" not in config_yaml
    assert os.path.isdir(tmp_path / "cache" / "heldout_digits_v1_128px_train1000_val200_seed0")

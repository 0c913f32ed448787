"""
Evaluators chosen by evaluator_type (bio_detectron.evaluation), the VOC evaluator's
per-class AP50, and the miniatures of Detectron2's builtin datasets (miniatures)
scored by Detectron2's real evaluators: predictions equal to their ground truth score 100.
"""

import copy
import importlib.machinery
import math
import os
import subprocess
import sys
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from conftest import MINI
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
    inference_on_dataset,
)
from detectron2.structures import Boxes, BoxMode, Instances
from miniatures.layouts import VOC_CLASSES, render_image, shape_name

from bio_detectron.config import add_bio_config
from bio_detectron.data import CheckedDatasetMapper
from bio_detectron.engine import BioTrainer
from bio_detectron.engine.lazy import default_lazy_evaluator
from bio_detectron.evaluation import EVALUATOR_PACKAGES, PascalVOCEvaluator, build_dataset_evaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_PANOPTICAPI = importlib.util.find_spec("panopticapi") is not None


def _cfg(*opts):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def _register(name, **metadata):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(**metadata)
    return name


# ------------------------------------------------------------------------------------------------
# The dispatch
# ------------------------------------------------------------------------------------------------


def test_embedded_coco_dataset_gets_coco_tasks_of_the_model(tmp_path):
    cfg = _cfg("OUTPUT_DIR", str(tmp_path))
    evaluator = BioTrainer.build_evaluator(cfg, "shapes_val_mini")
    assert type(evaluator) is COCOEvaluator and evaluator._tasks == ("bbox",)
    assert evaluator._output_dir == str(tmp_path / "inference" / "shapes_val_mini")
    cfg = _cfg("MODEL.MASK_ON", True, "MODEL.KEYPOINT_ON", True)
    cfg.TEST.KEYPOINT_OKS_SIGMAS = [0.1] * 17
    evaluator = BioTrainer.build_evaluator(cfg, "shapes_val_mini", str(tmp_path))
    assert evaluator._tasks == ("bbox", "segm", "keypoints")
    assert list(evaluator._kpt_oks_sigmas) == [0.1] * 17


def test_each_evaluator_type_gets_detectron2s_evaluators(miniatures, tmp_path):
    cfg = _cfg("OUTPUT_DIR", str(tmp_path), "MODEL.MASK_ON", True)
    voc = BioTrainer.build_evaluator(cfg, MINI + "voc_2007_test")
    assert type(voc) is PascalVOCEvaluator and voc._is_2007
    assert type(BioTrainer.build_evaluator(cfg, MINI + "voc_2012_val")) is PascalVOCEvaluator
    assert type(BioTrainer.build_evaluator(cfg, MINI + "ade20k_sem_seg_val")) is SemSegEvaluator
    stuff = BioTrainer.build_evaluator(cfg, MINI + "coco_2017_val_panoptic_stuffonly")
    assert type(stuff) is SemSegEvaluator
    if HAS_PANOPTICAPI:
        both = BioTrainer.build_evaluator(cfg, MINI + "coco_2017_val_panoptic_separated")
        assert type(both) is DatasetEvaluators
        # As Detectron2 combines them: semantic, then instances (of the model), then panoptic.
        kinds = [type(e) for e in both._evaluators]
        assert kinds == [SemSegEvaluator, COCOEvaluator, COCOPanopticEvaluator]
        assert both._evaluators[1]._tasks == ("bbox", "segm")


def test_unknown_or_missing_evaluator_type_is_named_with_the_dataset():
    name = _register("bio_eval_test_odd", evaluator_type="odd_type")
    with pytest.raises(ValueError, match="'bio_eval_test_odd' has evaluator_type 'odd_type'"):
        build_dataset_evaluator(name)
    name = _register("bio_eval_test_untyped", thing_classes=["a"])
    with pytest.raises(ValueError, match="'bio_eval_test_untyped' has evaluator_type None"):
        BioTrainer.build_evaluator(_cfg(), name)


def test_trainers_refuse_a_test_set_they_cannot_evaluate_before_training(tmp_path):
    from test_detection import instant_cfg

    from bio_detectron.engine.lazy import LazyTrainer, load_lazy_config

    untyped = _register("bio_eval_test_untyped", thing_classes=["a"])
    built = []

    class Counting(BioTrainer):  # how far construction got
        @classmethod
        def build_model(cls, cfg):
            built.append(cfg.DATASETS.TEST)
            return super().build_model(cfg)

    for names, error, message in (
        ((untyped,), ValueError, "'bio_eval_test_untyped' has evaluator_type None"),
        (("bio_eval_never_registered",), KeyError, "'bio_eval_never_registered' is not registered"),
    ):
        cfg = instant_cfg("DATASETS.TEST", names, "OUTPUT_DIR", str(tmp_path))
        with pytest.raises(error, match=message):
            Counting(cfg)
    assert len(built) == 2  # built, then refused before a hook or a step

    class OwnEvaluator(BioTrainer):  # a trainer with its own evaluator is not second-guessed
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return None

    OwnEvaluator(instant_cfg("DATASETS.TEST", (untyped,), "OUTPUT_DIR", str(tmp_path)))

    config = os.path.join(
        REPO, "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.py"
    )
    cfg = load_lazy_config(config, [f"dataloader.test.dataset.names={untyped}"])
    cfg.dataloader.evaluator = None
    with pytest.raises(ValueError, match="'bio_eval_test_untyped' has evaluator_type None"):
        LazyTrainer(cfg)


@pytest.mark.parametrize("evaluator_type", sorted(EVALUATOR_PACKAGES))
def test_missing_package_is_named_with_how_to_install_it(evaluator_type, monkeypatch):
    module, install = EVALUATOR_PACKAGES[evaluator_type]
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed (find_spec says None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else 1)
    name = _register(f"bio_eval_test_{evaluator_type}", evaluator_type=evaluator_type)
    with pytest.raises(ModuleNotFoundError) as error:
        build_dataset_evaluator(name)
    message = str(error.value)
    assert f"{name!r} has evaluator_type {evaluator_type!r}" in message
    assert f"needs the package {module!r}" in message and install in message
    assert install.startswith("pip install ")


def _fake_module(monkeypatch, name, **attrs):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(module, k, v)
    monkeypatch.setitem(sys.modules, name, module)


def test_lvis_and_cityscapes_types_get_their_evaluators(monkeypatch, tmp_path):
    class LVIS:  # what LVISEvaluator's constructor asks of the lvis package
        def __init__(self, json_file):
            self.json_file = json_file

        def get_ann_ids(self):
            return [1]

    _fake_module(monkeypatch, "lvis", LVIS=LVIS)
    _fake_module(monkeypatch, "cityscapesscripts")
    lvis = _register("bio_eval_test_lvis_ok", evaluator_type="lvis", json_file="lvis_val.json")
    evaluator = BioTrainer.build_evaluator(_cfg("MODEL.MASK_ON", True), lvis, str(tmp_path))
    assert type(evaluator) is LVISEvaluator and evaluator._tasks == ("bbox", "segm")
    assert evaluator._lvis_api.json_file == "lvis_val.json"
    for evaluator_type, cls in (
        ("cityscapes_instance", CityscapesInstanceEvaluator),
        ("cityscapes_sem_seg", CityscapesSemSegEvaluator),
    ):
        name = _register(f"bio_eval_test_{evaluator_type}_ok", evaluator_type=evaluator_type)
        assert type(build_dataset_evaluator(name)) is cls


def test_lazy_trainer_without_evaluator_uses_the_test_sets_type(miniatures, tmp_path):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(
        os.path.join(REPO, "configs/VOC-Detection/retinanet_R_18_FPN_backprop.py")
    )
    del cfg.dataloader.evaluator
    cfg.dataloader.test.dataset.names = MINI + "voc_2007_test"
    cfg.train.output_dir = str(tmp_path)
    assert type(default_lazy_evaluator(cfg)) is PascalVOCEvaluator
    cfg.dataloader.test.dataset.names = MINI + "ade20k_sem_seg_val"
    evaluator = default_lazy_evaluator(cfg)
    assert type(evaluator) is SemSegEvaluator
    assert evaluator._output_dir == str(tmp_path / "inference" / (MINI + "ade20k_sem_seg_val"))
    cfg.dataloader.test.dataset.names = [MINI + "voc_2007_test", MINI + "voc_2012_val"]
    with pytest.raises(ValueError, match=r"dataloader.test.dataset.names=\[.*must name one"):
        default_lazy_evaluator(cfg)


# ------------------------------------------------------------------------------------------------
# The miniatures under Detectron2's own loaders and evaluators
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow  # a new process importing detectron2
def test_builtin_names_load_the_miniatures_from_detectron2_datasets(miniatures):
    # A new process whose DETECTRON2_DATASETS points at the miniatures: Detectron2's builtin names.
    code = (
        "import detectron2.data.datasets\n"
        "from detectron2.data import DatasetCatalog as D, MetadataCatalog as M\n"
        "for n in ('voc_2007_trainval', 'voc_2007_test', 'voc_2012_trainval', 'coco_2017_val',\n"
        "          'keypoints_coco_2017_val', 'coco_2017_val_panoptic_separated',\n"
        "          'coco_2017_val_panoptic', 'ade20k_sem_seg_train'):\n"
        "    d = D.get(n)\n"
        "    objects = sum(len(x.get('annotations', ())) for x in d)\n"
        "    print(n, len(d), M.get(n).evaluator_type, objects)\n"
    )
    env = dict(os.environ, DETECTRON2_DATASETS=miniatures)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    rows = {r.split()[0]: r.split()[1:] for r in out if r}
    assert {k: v[:2] for k, v in rows.items()} == {
        "voc_2007_trainval": ["12", "pascal_voc"],
        "voc_2007_test": ["4", "pascal_voc"],
        "voc_2012_trainval": ["12", "pascal_voc"],
        "coco_2017_val": ["4", "coco"],
        "keypoints_coco_2017_val": ["4", "coco"],
        "coco_2017_val_panoptic_separated": ["4", "coco_panoptic_seg"],
        "coco_2017_val_panoptic": ["4", "coco_panoptic_seg"],
        "ade20k_sem_seg_train": ["8", "sem_seg"],
    }
    assert int(rows["voc_2007_test"][2]) > 4 and int(rows["coco_2017_val"][2]) > 4
    assert rows["coco_2017_val"][2] == rows["keypoints_coco_2017_val"][2]


def test_voc_layout_is_the_devkits(miniatures):
    voc = os.path.join(miniatures, "VOC2007")
    with open(os.path.join(voc, "ImageSets", "Main", "test.txt")) as f:
        test_ids = f.read().split()
    with open(os.path.join(voc, "ImageSets", "Main", "trainval.txt")) as f:
        trainval = f.read().split()
    assert test_ids == ["000013", "000014", "000015", "000016"] and len(trainval) == 12
    tree = ET.parse(os.path.join(voc, "Annotations", "000013.xml"))
    assert tree.find("size/width").text == "96" and tree.find("filename").text == "000013.jpg"
    # The 13th image drawn for VOC 2007 (seed 0), its shapes as the devkit writes boxes: 1-based
    # inclusive pixel indices, the first and last pixel the shape touches.
    _, drawn = render_image(0, "voc2007", 12, 96)
    objects = tree.findall("object")
    assert len(objects) == len(drawn) > 0
    for obj, shape in zip(objects, drawn):
        assert obj.find("name").text == VOC_CLASSES[shape_name(shape)]
        box = [int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
        x0, y0, x1, y1 = shape["bbox"]
        assert box == [int(x0) + 1, int(y0) + 1, math.ceil(x1), math.ceil(y1)]
        small = min(box[2] - box[0], box[3] - box[1]) + 1 < 10
        assert obj.find("difficult").text == str(int(small))
    assert read_image(os.path.join(voc, "JPEGImages", "000013.jpg")).shape == (96, 96, 3)
    dirs = sorted(os.listdir(os.path.join(miniatures, "VOC2012", "JPEGImages")))
    assert dirs[0] == "2012_000001.jpg" and len(dirs) == 12


def _run(dataset, model, evaluator):
    dicts = DatasetCatalog.get(dataset)
    mapper = CheckedDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    loader = build_detection_test_loader(dicts, mapper=mapper, num_workers=0)
    evaluator.reset()
    return inference_on_dataset(model, loader, evaluator)


class GroundTruthDetector(torch.nn.Module):
    """Predicts the ground-truth boxes (and keypoints) of each image, except the dropped classes."""

    def __init__(self, dataset, drop=()):
        super().__init__()
        self.gt = {d["file_name"]: d for d in DatasetCatalog.get(dataset)}
        self.drop = drop

    def forward(self, batched_inputs):
        outputs = []
        for inp in batched_inputs:
            d = self.gt[inp["file_name"]]
            anns = [a for a in d["annotations"] if a["category_id"] not in self.drop]
            inst = Instances((d["height"], d["width"]))
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.ones(len(anns))
            inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
            if anns and "keypoints" in anns[0]:
                kp = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32)
                kp = kp.reshape(len(anns), -1, 3)
                # load_coco_json adds 0.5 to the json's keypoints, the evaluator takes it off.
                kp[:, :, 2] = 1.0
                inst.pred_keypoints = kp
            outputs.append({"instances": inst})
        return outputs


def test_voc_evaluator_scores_ground_truth_100_per_class_and_as_detectron2(miniatures):
    name = MINI + "voc_2007_test"
    ours = _run(name, GroundTruthDetector(name), PascalVOCEvaluator(name))["bbox"]
    theirs = _run(name, GroundTruthDetector(name), PascalVOCDetectionEvaluator(name))["bbox"]
    classes = sorted(VOC_CLASSES.values())
    assert sorted(k for k in ours if "-" in k) == [f"AP50-{c}" for c in classes]
    assert {k: round(v, 6) for k, v in ours.items()} == dict.fromkeys(ours, 100.0)
    # Detectron2 averages over all 20 classes, 17 of which have no objects here (AP 0).
    assert theirs["AP50"] == pytest.approx(100.0 * 3 / 20) and theirs["AP"] == pytest.approx(15.0)
    # Without the predictions of one class, that class's AP50 is 0, and the mean 2/3.
    thing_classes = MetadataCatalog.get(name).thing_classes
    boat = thing_classes.index("boat")
    dropped = _run(name, GroundTruthDetector(name, drop=(boat,)), PascalVOCEvaluator(name))["bbox"]
    assert dropped["AP50-boat"] == 0.0 and dropped["AP50-bicycle"] == pytest.approx(100.0)
    assert dropped["AP50"] == pytest.approx(200.0 / 3)


def test_coco_evaluators_score_ground_truth_boxes_and_keypoints_100(miniatures):
    name = MINI + "coco_2017_val"
    bbox = _run(name, GroundTruthDetector(name), build_dataset_evaluator(name, tasks=("bbox",)))
    assert bbox["bbox"]["AP"] == pytest.approx(100.0)
    assert bbox["bbox"]["AP-kite"] == pytest.approx(100.0)  # the triangles, as COCO's "kite"
    name = MINI + "keypoints_coco_2017_val"
    results = _run(
        name, GroundTruthDetector(name), build_dataset_evaluator(name, tasks=("keypoints",))
    )
    assert results["keypoints"]["AP"] == pytest.approx(100.0)


def _sem_seg_logits(path, num_classes):
    labels = torch.from_numpy(read_image(path).astype(np.int64))
    labels[labels == 255] = 0
    return torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()


class GroundTruthSegmenter(torch.nn.Module):
    """Predicts the semantic labels of ``semantic``'s images and the segments of ``panoptic``'s."""

    def __init__(self, semantic=None, panoptic=None):
        super().__init__()
        self.datasets = {}
        for key, name in (("sem_seg", semantic), ("panoptic_seg", panoptic)):
            if name is not None:
                self.datasets[key] = {d["file_name"]: d for d in DatasetCatalog.get(name)}
        if semantic is not None:
            self.num_classes = len(MetadataCatalog.get(semantic).stuff_classes)

    def forward(self, batched_inputs):
        outputs = []
        for inp in batched_inputs:
            out = {}
            if "sem_seg" in self.datasets:
                d = self.datasets["sem_seg"][inp["file_name"]]
                out["sem_seg"] = _sem_seg_logits(d["sem_seg_file_name"], self.num_classes)
            if "panoptic_seg" in self.datasets:
                from panopticapi.utils import rgb2id

                d = self.datasets["panoptic_seg"][inp["file_name"]]
                ids = torch.from_numpy(rgb2id(read_image(d["pan_seg_file_name"], "RGB")))
                info = [
                    {k: s[k] for k in ("id", "category_id", "isthing")} for s in d["segments_info"]
                ]
                out["panoptic_seg"] = (ids.int(), copy.deepcopy(info))
            outputs.append(out)
        return outputs


def test_sem_seg_evaluator_scores_ground_truth_100(miniatures):
    name = MINI + "ade20k_sem_seg_val"
    res = _run(name, GroundTruthSegmenter(semantic=name), build_dataset_evaluator(name))["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)
    # IoU of exactly the classes the label PNGs hold: the background ("wall") and shapes' names.
    classes = MetadataCatalog.get(name).stuff_classes
    labels = set()
    for d in DatasetCatalog.get(name):
        labels |= set(np.unique(read_image(d["sem_seg_file_name"])).tolist())
    held = {classes[i] for i in labels}
    assert "wall" in held and len(held) > 1 and held <= {"wall", "ball", "screen", "tent"}
    assert {k[4:] for k, v in res.items() if k.startswith("IoU-") and not np.isnan(v)} == held


@pytest.mark.skipif(not HAS_PANOPTICAPI, reason=EVALUATOR_PACKAGES["coco_panoptic_seg"][1])
def test_panoptic_evaluator_scores_ground_truth_pq_100(miniatures):
    # The "standard" registration's segments (contiguous ids over all 133 categories), scored by
    # PQ against the panoptic json and PNGs; the "separated" one's semantic PNGs by mIoU.
    name = MINI + "coco_2017_val_panoptic"
    model = GroundTruthSegmenter(panoptic=name)
    res = _run(name, model, COCOPanopticEvaluator(name))["panoptic_seg"]
    assert res["PQ"] == pytest.approx(100.0)
    assert res["PQ_th"] == pytest.approx(100.0) and res["PQ_st"] == pytest.approx(100.0)
    name = MINI + "coco_2017_val_panoptic_stuffonly"
    stuff = _run(name, GroundTruthSegmenter(semantic=name), build_dataset_evaluator(name))
    assert stuff["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert stuff["sem_seg"]["IoU-things"] == pytest.approx(100.0)
    assert stuff["sem_seg"]["IoU-wall"] == pytest.approx(100.0)  # COCO's "wall-other-merged"


def test_make_miniatures_tool_writes_once_and_leaves_existing_folders(tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import make_miniatures

    argv = ["--root", str(tmp_path), "--layouts", "voc2007", "--num-train", "2", "--num-val", "1"]
    written = make_miniatures.main(argv)
    assert written == {"voc2007": (str(tmp_path / "VOC2007"), True)}
    # 2 train, 1 val, 1 test.
    assert len(os.listdir(tmp_path / "VOC2007" / "JPEGImages")) == 4
    assert make_miniatures.main(argv)["voc2007"][1] is False  # not written over
    out = capsys.readouterr().out
    assert "VOC2007: written; Detectron2's voc_2007_{trainval,train,val,test}" in out
    assert "VOC2007: exists, left as it is" in out
    assert f"export DETECTRON2_DATASETS={tmp_path}" in out


def test_bad_miniature_arguments_are_named(tmp_path):
    from miniatures import write_miniatures

    with pytest.raises(ValueError, match=r"unknown layout\(s\) \['voc2009'\]; the layouts are"):
        write_miniatures(str(tmp_path), layouts=["voc2009"])
    with pytest.raises(ValueError, match="image_size must be at least 32 pixels, got 16"):
        write_miniatures(str(tmp_path), image_size=16)
    with pytest.raises(ValueError, match="num_val must be an integer >= 1, got 0"):
        write_miniatures(str(tmp_path), num_val=0)
    assert os.listdir(tmp_path) == []


def test_person_keypoints_mirror_left_and_right_as_detectron2s_flip_map():
    from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_FLIP_MAP as FLIP
    from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES as NAMES
    from miniatures.coco_layout import _keypoints

    # A square turned by 10 degrees about (40, 50); its mirror image about x = 40.
    angle = np.radians(10 + 45 + 90 * np.arange(4))
    square = np.stack([40 + 20 * np.cos(angle), 50 + 20 * np.sin(angle)], axis=1)
    mirrored = square * [-1, 1] + [80, 0]
    full = np.ones((96, 96), dtype=bool)
    kp = np.array(_keypoints({"polygon": square, "mask": full, "visible": full}, 96)).reshape(17, 3)
    kpm = np.array(_keypoints({"polygon": mirrored, "mask": full, "visible": full}, 96))
    kpm = kpm.reshape(17, 3)
    index = {name: i for i, name in enumerate(NAMES)}
    assert kp[index["nose"], 0] == pytest.approx(40.0) and 30 < kp[index["nose"], 1] < 50  # up
    np.testing.assert_allclose(kpm[index["nose"], :2], [80 - kp[index["nose"], 0], kp[0, 1]])
    for left, right in FLIP:  # flipping the image swaps the names of each pair
        np.testing.assert_allclose(
            kpm[index[left], :2], [80 - kp[index[right], 0], kp[index[right], 1]], atol=0.02
        )
    assert set(kp[:, 2]) == {2}  # all seen
    covered = full.copy()
    covered[:, :40] = False  # what a later shape covers: the left half
    kp = np.array(_keypoints({"polygon": square, "mask": full, "visible": covered}, 96))
    assert set(kp.reshape(17, 3)[:, 2][kp.reshape(17, 3)[:, 0] < 39]) == {1}


def test_same_arguments_write_the_same_files(tmp_path):
    from miniatures import write_miniatures

    for out in ("a", "b"):
        write_miniatures(str(tmp_path / out), ["voc2012", "coco"], num_train=2, num_val=1, seed=3)
    files = []
    for folder, _, names in os.walk(tmp_path / "a"):
        files += [os.path.relpath(os.path.join(folder, n), tmp_path / "a") for n in names]
    assert len(files) > 20
    for f in files:
        with open(tmp_path / "a" / f, "rb") as a, open(tmp_path / "b" / f, "rb") as b:
            assert a.read() == b.read(), f

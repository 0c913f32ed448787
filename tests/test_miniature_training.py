"""
Train a few iterations on the miniatures of Detectron2's builtin datasets and evaluate with the
evaluator of each evaluator_type: RetinaNet on VOC (this project's VOC config, yacs and
LazyConfig, and tools/train_net.py on the builtin names), and Detectron2's own Mask R-CNN,
Keypoint R-CNN, semantic FPN and Panoptic FPN configs through BioPlausible with sign-symmetry.
"""

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import MINI
from detectron2 import model_zoo
from detectron2.config import get_cfg

import bio_detectron as bd
from bio_detectron.config import add_bio_config
from bio_detectron.engine import BioTrainer
from bio_detectron.evaluation import EVALUATOR_PACKAGES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_SS = os.path.join(REPO, "configs/VOC-Detection/retinanet_R_18_FPN_sign_symmetry.yaml")
sys.path.insert(0, os.path.join(REPO, "tools"))

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# A CPU smoke run: 96 px images, 2 per batch, a constant lr, no ImageNet checkpoint.
SMOKE = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 96,
    "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 96,
    "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3, "SOLVER.STEPS", (),
    "SOLVER.WARMUP_ITERS", 0, "SOLVER.CHECKPOINT_PERIOD", 1000,
    "DATALOADER.NUM_WORKERS", 0,
]  # fmt: skip


def _metrics(results, task, names):
    """The task's results hold ``names``, each a number in [0, 100] (not NaN)."""
    res = results[task]
    assert set(names) <= set(res), sorted(res)
    for name in names:
        assert isinstance(res[name], float) and 0.0 <= res[name] <= 100.0, (name, res[name])
    return res


def test_voc_config_trains_and_reports_voc_ap50_per_class(miniatures, tmp_path):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(VOC_SS)
    cfg.merge_from_list(SMOKE + ["OUTPUT_DIR", str(tmp_path)])
    cfg.DATASETS.TRAIN = (MINI + "voc_2007_trainval", MINI + "voc_2012_trainval")
    cfg.DATASETS.TEST = (MINI + "voc_2007_test",)
    trainer = BioTrainer(cfg)
    assert set(bd.rules_of(trainer.model).values()) == {"sign_symmetry"}
    results = trainer.train()
    res = _metrics(results, "bbox", ["AP", "AP50", "AP75"])
    # VOC's metrics: AP50 per class, for the classes the miniature has (its shapes' VOC names).
    assert sorted(k for k in res if "-" in k) == [
        "AP50-bicycle",
        "AP50-boat",
        "AP50-tvmonitor",
    ]
    assert "APs" not in res  # not COCO's


def test_train_net_on_the_builtin_voc_names_prints_voc_ap50(miniatures, tmp_path):
    # The builtin voc_2007_trainval, voc_2012_trainval and voc_2007_test, found by Detectron2
    # under DETECTRON2_DATASETS, as a user runs it.
    opts = [str(o).replace(" ", "") if isinstance(o, tuple) else str(o) for o in SMOKE]
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", VOC_SS]
    env = dict(os.environ, DETECTRON2_DATASETS=miniatures, OMP_NUM_THREADS="1")
    run = subprocess.run(
        cmd + opts + ["OUTPUT_DIR", str(tmp_path)], env=env, capture_output=True, text=True
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "Per-class AP50 on voc_2007_test" in log
    assert "copypaste: AP,AP50,AP75" in log
    values = log.split("copypaste: AP,AP50,AP75\n")[1].split("\n")[0].split("copypaste: ")[1]
    ap, ap50, ap75 = map(float, values.split(","))
    assert 0 <= ap <= ap50 <= 100 and 0 <= ap75 <= 100


def test_voc_lazy_config_with_batch_manhattan_trains_and_reports_voc_ap50(miniatures, tmp_path):
    from bio_detectron.engine.lazy import do_train, load_lazy_config

    config = os.path.join(REPO, "configs/VOC-Detection/retinanet_R_18_FPN_sign_symmetry_bm.py")
    cfg = load_lazy_config(
        config,
        [
            "train.max_iter=2",
            "train.init_checkpoint=",
            "train.device=cpu",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            f"train.output_dir={tmp_path}",
        ],
    )
    cfg.dataloader.train.dataset.names = [MINI + "voc_2007_trainval", MINI + "voc_2012_trainval"]
    cfg.dataloader.test.dataset.names = MINI + "voc_2007_test"
    for loader, sizes in ((cfg.dataloader.train, [96]), (cfg.dataloader.test, 96)):
        loader.mapper.augmentations[0].short_edge_length = sizes
        loader.mapper.augmentations[0].max_size = 96
    resnet = cfg.model.model.backbone.bottom_up
    resnet.stem.norm = resnet.stages.norm = "BN"  # one CPU process
    results = do_train(cfg)
    res = _metrics(results, "bbox", ["AP", "AP50", "AP50-boat"])
    assert not any(k.startswith("AP50-aero") for k in res)


# ------------------------------------------------------------------------------------------------
# Detectron2's own model zoo configs, through BioPlausible
# ------------------------------------------------------------------------------------------------


def _zoo(config, train, test, tmp_path, *opts):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(config))  # Detectron2's installed file
    cfg.MODEL.BIO.BASE_META_ARCHITECTURE = cfg.MODEL.META_ARCHITECTURE
    cfg.MODEL.META_ARCHITECTURE = "BioPlausible"
    cfg.MODEL.BIO.RULE = "sign_symmetry"
    cfg.merge_from_list(SMOKE + ["OUTPUT_DIR", str(tmp_path), "SOLVER.BASE_LR", 0.001])
    # From scratch: trained BatchNorm in the ResNet (the zoo's FrozenBN expects ImageNet weights;
    # without them a random R50 with sign-symmetry's feedback diverges), nothing frozen.
    cfg.MODEL.RESNETS.NORM, cfg.MODEL.BACKBONE.FREEZE_AT = "BN", 0
    cfg.MODEL.BIO.SCALE = "mean_abs"
    # 32 sampled proposals per image instead of 512; every detection kept, so that 3
    # iterations from scratch give numbers rather than "no predictions".
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    cfg.merge_from_list(list(opts))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (MINI + train,), (MINI + test,)
    torch.manual_seed(0)
    trainer = BioTrainer(cfg)
    assert set(bd.rules_of(trainer.model).values()) == {"sign_symmetry"}
    return trainer.train()


def test_mask_rcnn_on_coco_miniature_reports_box_and_mask_ap(miniatures, tmp_path):
    results = _zoo(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
        "coco_2017_train",
        "coco_2017_val",
        tmp_path,
    )
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        _metrics(results, task, ["AP", "AP50", "AP75", "AP-kite", "AP-tv", "AP-sports ball"])


def test_keypoint_rcnn_on_keypoints_miniature_reports_keypoint_ap(miniatures, tmp_path):
    results = _zoo(
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
        "keypoints_coco_2017_train",
        "keypoints_coco_2017_val",
        tmp_path,
    )
    assert set(results) == {"bbox", "keypoints"}
    _metrics(results, "keypoints", ["AP", "AP50", "AP75"])


def test_semantic_fpn_on_ade20k_miniature_reports_miou(miniatures, tmp_path):
    results = _zoo(
        "Misc/semantic_R_50_FPN_1x.yaml",
        "ade20k_sem_seg_train",
        "ade20k_sem_seg_val",
        tmp_path,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        150,
    )
    assert set(results) == {"sem_seg"}
    res = _metrics(results, "sem_seg", ["mIoU", "fwIoU", "mACC", "pACC", "IoU-wall"])
    assert math.isnan(res["IoU-sky"])  # no sky in the miniature: no IoU


@pytest.mark.skipif(
    importlib.util.find_spec("panopticapi") is None,
    reason=EVALUATOR_PACKAGES["coco_panoptic_seg"][1],
)
def test_panoptic_fpn_on_panoptic_miniature_reports_pq_miou_and_ap(miniatures, tmp_path):
    results = _zoo(
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
        "coco_2017_train_panoptic_separated",
        "coco_2017_val_panoptic_separated",
        tmp_path,
        "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
        64,
    )
    # Detectron2's three evaluators of coco_panoptic_seg, combined.
    assert set(results) == {"sem_seg", "bbox", "segm", "panoptic_seg"}
    _metrics(results, "panoptic_seg", ["PQ", "SQ", "RQ", "PQ_th", "PQ_st"])
    _metrics(results, "sem_seg", ["mIoU", "IoU-things", "IoU-wall"])
    _metrics(results, "segm", ["AP", "AP50"])

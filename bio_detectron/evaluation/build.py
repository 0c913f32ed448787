"""
The evaluator of a dataset, chosen by its ``evaluator_type`` metadata as Detectron2's
``tools/train_net.py`` chooses it, for :class:`~.trainer.BioTrainer` (:func:`build_evaluator`, from
a yacs config) and :class:`~.lazy.LazyTrainer` (:func:`build_dataset_evaluator`, also as
``L(build_dataset_evaluator)(dataset_name=...)`` in a LazyConfig's ``dataloader.evaluator``).

====================  ========================================================  =================
evaluator_type        evaluator(s)                                              needs the package
====================  ========================================================  =================
coco                  COCOEvaluator (bbox; segm with masks; keypoints, with     pycocotools
                      the config's OKS sigmas)
lvis                  LVISEvaluator                                             lvis
pascal_voc            :class:`~.voc_evaluation.PascalVOCEvaluator` (AP, AP50,
                      AP75, AP50 per class)
sem_seg               SemSegEvaluator (mIoU, fwIoU, IoU per class, mACC, pACC)
coco_panoptic_seg     SemSegEvaluator + COCOEvaluator + COCOPanopticEvaluator   panopticapi
                      (PQ, SQ, RQ), combined in DatasetEvaluators
cityscapes_instance   CityscapesInstanceEvaluator                               cityscapesscripts
cityscapes_sem_seg    CityscapesSemSegEvaluator                                 cityscapesscripts
====================  ========================================================  =================

A dataset whose type is missing or none of these gets an error naming the dataset and its type,
not a score of another kind; a missing package is named, with how to install it, before anything
is evaluated (Cityscapes' evaluators would otherwise fail only after inference on the whole set).
The embedded datasets (shapes, textures, photos) are "coco", their files generated first.
"""

import importlib.util
import logging
import os
from typing import Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    SemSegEvaluator,
)
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..data import ensure_dataset_files
from .pascal_voc import PascalVOCEvaluator

__all__ = [
    "EVALUATOR_TYPES",
    "EVALUATOR_PACKAGES",
    "build_dataset_evaluator",
    "build_evaluator",
    "check_evaluator",
    "coco_tasks",
    "load_sem_seg_labels",
]

logger = logging.getLogger(__name__)

EVALUATOR_TYPES = (
    "coco",
    "lvis",
    "pascal_voc",
    "sem_seg",
    "coco_panoptic_seg",
    "cityscapes_instance",
    "cityscapes_sem_seg",
)

# evaluator_type -> (the module its evaluator imports, how to install it). Not in setup.py's
# requirements: only users of these datasets need them.
EVALUATOR_PACKAGES = {
    "lvis": ("lvis", "pip install lvis"),
    "coco_panoptic_seg": (
        "panopticapi",
        # panopticapi-lite is cocodataset/panopticapi as a wheel; its metadata pins numpy<2, which
        # its code does not need (tools/install_env.sh installs it the same way).
        "pip install --no-deps panopticapi-lite (cocodataset/panopticapi packaged as a wheel)",
    ),
    "cityscapes_instance": ("cityscapesscripts", "pip install cityscapesscripts"),
    "cityscapes_sem_seg": ("cityscapesscripts", "pip install cityscapesscripts"),
}


def load_sem_seg_labels(filename: str, dtype=int) -> np.ndarray:
    """
    A semantic label PNG as an array, for ``SemSegEvaluator(sem_seg_loading_fn=...)``.
    Detectron2's own loader calls ``np.array(image, copy=False)``, which NumPy 2 refuses for a PIL
    image ("Unable to avoid copy"), so that its SemSegEvaluator fails on every image there.
    """
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


def _check_package(dataset_name: str, evaluator_type: str) -> None:
    if evaluator_type not in EVALUATOR_PACKAGES:
        return
    module, install = EVALUATOR_PACKAGES[evaluator_type]
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}, whose evaluator "
            f"needs the package {module!r}, which is not installed: {install}",
            name=module,
        )


def check_evaluator(dataset_name: str) -> str:
    """
    Check, before anything is trained or evaluated, that :func:`build_dataset_evaluator` can
    evaluate ``dataset_name``: it is registered, its ``evaluator_type`` is one of
    :data:`EVALUATOR_TYPES`, and the package its evaluator needs is installed.

    Returns:
        str: the evaluator_type.
    """
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"Test dataset {dataset_name!r} is not registered in detectron2's DatasetCatalog "
            "(register it, e.g. with register_coco_instances or register_pascal_voc, before "
            "the trainer is built)"
        )
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_TYPES:
        raise ValueError(
            f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; the evaluator "
            f"types are {list(EVALUATOR_TYPES)}. Set MetadataCatalog.get({dataset_name!r})"
            ".evaluator_type to one of them, or give the trainer an evaluator of your own "
            "(override BioTrainer.build_evaluator, or set dataloader.evaluator in a LazyConfig)."
        )
    _check_package(dataset_name, evaluator_type)
    return evaluator_type


def build_dataset_evaluator(
    dataset_name: str,
    output_dir: Optional[str] = None,
    *,
    tasks: Optional[Sequence[str]] = None,
    kpt_oks_sigmas: Sequence[float] = (),
    distributed: bool = True,
) -> DatasetEvaluator:
    """
    The evaluator(s) of a registered dataset, by ``MetadataCatalog.get(dataset_name)
    .evaluator_type`` (see this module's table). The embedded datasets' files are generated first
    (COCOEvaluator opens the json in its constructor).

    Args:
        dataset_name: a name in detectron2's DatasetCatalog.
        output_dir: where the evaluators write predictions and results (None: nowhere).
        tasks: COCOEvaluator's tasks ("bbox", "segm", "keypoints"); None: those the predictions
            have.
        kpt_oks_sigmas: COCO keypoint evaluation's per-keypoint sigmas
            (``TEST.KEYPOINT_OKS_SIGMAS``); empty: those of COCO's 17 person keypoints.
        distributed: gather the results of all processes (detectron2's default).

    Returns:
        DatasetEvaluator: one evaluator, or ``DatasetEvaluators`` where the type has several.

    Raises:
        ValueError: the dataset has no ``evaluator_type``, or one not in :data:`EVALUATOR_TYPES`.
        ModuleNotFoundError: the evaluator needs a package that is not installed (the message says
            how to install it).
    """
    ensure_dataset_files(dataset_name)
    evaluator_type = check_evaluator(dataset_name)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
    if evaluator_type == "pascal_voc":
        return PascalVOCEvaluator(dataset_name)
    if evaluator_type == "lvis":
        return LVISEvaluator(
            dataset_name, tasks=tasks, distributed=distributed, output_dir=output_dir
        )
    if evaluator_type == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name)
    if evaluator_type == "cityscapes_sem_seg":
        return CityscapesSemSegEvaluator(dataset_name)

    # coco, sem_seg and coco_panoptic_seg: the panoptic types get all three, as in detectron2.
    evaluators = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(
            SemSegEvaluator(
                dataset_name, distributed, output_dir, sem_seg_loading_fn=load_sem_seg_labels
            )
        )
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluators.append(
            COCOEvaluator(
                dataset_name,
                tasks=tuple(tasks) if tasks is not None else None,
                distributed=distributed,
                output_dir=output_dir,
                kpt_oks_sigmas=tuple(kpt_oks_sigmas),
            )
        )
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_dir))
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def coco_tasks(cfg) -> tuple:
    """COCOEvaluator's tasks for the model of a yacs config: "bbox", plus "segm" with
    ``MODEL.MASK_ON`` and "keypoints" with ``MODEL.KEYPOINT_ON``."""
    return (
        ("bbox",)
        + ("segm",) * bool(cfg.MODEL.MASK_ON)
        + ("keypoints",) * bool(cfg.MODEL.KEYPOINT_ON)
    )


def build_evaluator(cfg, dataset_name: str, output_folder: Optional[str] = None):
    """
    The evaluator of ``dataset_name`` for the model of a yacs config (``BioTrainer``'s), as
    :func:`build_dataset_evaluator` chooses it: COCO's tasks from ``MODEL.MASK_ON`` and
    ``MODEL.KEYPOINT_ON`` (:func:`coco_tasks`), its keypoint sigmas from
    ``TEST.KEYPOINT_OKS_SIGMAS``.

    Args:
        output_folder: where results are written; None: ``OUTPUT_DIR/inference/<dataset_name>``.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return build_dataset_evaluator(
        dataset_name,
        output_folder,
        tasks=coco_tasks(cfg),
        kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS,
    )

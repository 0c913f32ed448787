"""
Miniatures of the datasets Detectron2 registers by name (``detectron2/data/datasets/builtin.py``),
in their exact on-disk layouts, drawn by the shapes generator (:mod:`.shapes`: circles, squares and
triangles on cluttered backgrounds), so that Detectron2's own loaders and evaluators can be run on
them without downloading anything. Written under one root; pointing ``$DETECTRON2_DATASETS`` at it
(before detectron2 is imported) makes the builtin names load the miniatures:

=====================================================  ============================================
files under the root                                   builtin names (evaluator_type)
=====================================================  ============================================
``VOC2007/{Annotations/<id>.xml,                       ``voc_2007_{trainval,train,val,test}``
ImageSets/Main/{trainval,train,val,test}.txt,          (pascal_voc)
JPEGImages/<id>.jpg}``
``VOC2012/...`` (trainval, train, val)                 ``voc_2012_{trainval,train,val}``
``coco/{train,val}2017/<id>.jpg``,                     ``coco_2017_{train,val}`` (coco: boxes and
``coco/annotations/instances_{train,val}2017.json``    masks)
``coco/annotations/person_keypoints_*2017.json``       ``keypoints_coco_2017_{train,val}`` (coco)
``coco/annotations/panoptic_{train,val}2017.json``,    ``coco_2017_{train,val}_panoptic_separated``
``coco/panoptic_{train,val}2017/<id>.png``,            (coco_panoptic_seg), ``..._panoptic``,
``coco/panoptic_stuff_{train,val}2017/<id>.png``       ``..._panoptic_stuffonly`` (sem_seg)
``ADEChallengeData2016/{images,                        ``ade20k_sem_seg_{train,val}`` (sem_seg)
annotations_detectron2}/{training,validation}/``
=====================================================  ============================================

The shapes take names of the real sets' classes (:mod:`.layouts`: ``VOC_CLASSES``, ``COCO_THINGS``,
``ADE20K_CLASSES``); the other classes have no objects. The background is one stuff class
(COCO's "wall-other-merged", ADE20K's "wall"). In COCO's person-keypoints file every shape is a
"person" whose 17 keypoints lie where rays from its centre, at fixed image angles, leave it: mirror
images swap left and right keypoints as detectron2's flip map expects. VOC objects whose box is
under 10 px on a side are marked difficult.
"""

import os
from typing import Dict, List, Sequence, Tuple

from bio_detectron.data.cache import generate_once

from .coco_layout import write_coco
from .layouts import write_ade20k, write_voc

__all__ = ["LAYOUTS", "register_miniatures", "write_miniatures"]

# Layout -> the folder under the root it writes (nothing is written over an existing folder).
LAYOUTS = {
    "voc2007": "VOC2007",
    "voc2012": "VOC2012",
    "coco": "coco",
    "ade20k": "ADEChallengeData2016",
}


def _split_counts(num_train: int, num_val: int) -> Dict[str, int]:
    for key, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    return {"train": num_train, "val": num_val}


# ------------------------------------------------------------------------------------------------
def write_miniatures(
    root: str,
    layouts: Sequence[str] = tuple(LAYOUTS),
    image_size: int = 96,
    num_train: int = 16,
    num_val: int = 8,
    seed: int = 0,
) -> Dict[str, Tuple[str, bool]]:
    """
    Write the miniatures of ``layouts`` (names in :data:`LAYOUTS`) under ``root``, each folder
    atomically and only when it does not exist yet (a real dataset there is left alone).

    Args:
        root: the folder to point ``$DETECTRON2_DATASETS`` at.
        image_size: side of the square images, in pixels (at least 32).
        num_train, num_val: images in each layout's train and val splits (VOC 2007's test split
            has ``num_val``).
        seed: seed of the images' random streams; the same arguments give the same files.

    Returns:
        dict: layout -> (its folder, whether it was written now).
    """
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        raise ValueError(f"unknown layout(s) {unknown}; the layouts are {list(LAYOUTS)}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    counts = _split_counts(num_train, num_val)
    writers = {
        "voc2007": lambda out: write_voc(out, 2007, counts, image_size, seed),
        "voc2012": lambda out: write_voc(out, 2012, counts, image_size, seed),
        "coco": lambda out: write_coco(out, counts, image_size, seed),
        "ade20k": lambda out: write_ade20k(out, counts, image_size, seed),
    }
    written = {}
    for layout in layouts:
        folder = os.path.join(os.path.abspath(os.path.expanduser(root)), LAYOUTS[layout])
        existed = os.path.isdir(folder)
        generate_once(folder, writers[layout])
        written[layout] = (folder, not existed)
    return written


def register_miniatures(root: str, prefix: str) -> List[str]:
    """
    Register the miniatures under ``root`` as ``<prefix><builtin name>`` (e.g.
    ``mini_voc_2007_test``), with Detectron2's own registration functions and builtin metadata,
    as ``detectron2/data/datasets/builtin.py`` registers the real sets. For a process that
    imported detectron2 before ``$DETECTRON2_DATASETS`` pointed at ``root`` (tests); a new process
    with the variable set needs none of this: the builtin names load the miniatures.

    Returns:
        list[str]: the names registered (those of the layouts found under ``root``).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import (
        load_sem_seg,
        register_coco_instances,
        register_coco_panoptic,
        register_coco_panoptic_separated,
        register_pascal_voc,
    )
    from detectron2.data.datasets.builtin_meta import (
        ADE20K_SEM_SEG_CATEGORIES,
        _get_builtin_metadata,
    )

    root = os.path.abspath(os.path.expanduser(root))
    names = []
    for year, splits in (
        (2007, ("trainval", "train", "val", "test")),
        (2012, ("trainval", "train", "val")),
    ):
        folder = os.path.join(root, f"VOC{year}")
        if not os.path.isdir(folder):
            continue
        for split in splits:
            name = f"{prefix}voc_{year}_{split}"
            register_pascal_voc(name, folder, split, year)
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"  # as builtin.py sets it
            names.append(name)
    coco = os.path.join(root, "coco")
    if os.path.isdir(coco):
        for split in ("train", "val"):
            images = os.path.join(coco, f"{split}2017")
            instances = os.path.join(coco, "annotations", f"instances_{split}2017.json")
            keypoints = os.path.join(coco, "annotations", f"person_keypoints_{split}2017.json")
            register_coco_instances(
                f"{prefix}coco_2017_{split}", _get_builtin_metadata("coco"), instances, images
            )
            register_coco_instances(
                f"{prefix}keypoints_coco_2017_{split}",
                _get_builtin_metadata("coco_person"),
                keypoints,
                images,
            )
            panoptic = f"{prefix}coco_2017_{split}_panoptic"
            panoptic_args = (
                os.path.join(coco, f"panoptic_{split}2017"),
                os.path.join(coco, "annotations", f"panoptic_{split}2017.json"),
            )
            register_coco_panoptic_separated(
                panoptic,
                _get_builtin_metadata("coco_panoptic_separated"),
                images,
                *panoptic_args,
                os.path.join(coco, f"panoptic_stuff_{split}2017"),
                instances,
            )
            register_coco_panoptic(
                panoptic,
                _get_builtin_metadata("coco_panoptic_standard"),
                images,
                *panoptic_args,
                instances,
            )
            names += [f"{prefix}coco_2017_{split}", f"{prefix}keypoints_coco_2017_{split}"]
            names += [panoptic, f"{panoptic}_separated", f"{panoptic}_stuffonly"]
    ade = os.path.join(root, "ADEChallengeData2016")
    if os.path.isdir(ade):
        for split, dirname in (("train", "training"), ("val", "validation")):
            name = f"{prefix}ade20k_sem_seg_{split}"
            image_dir = os.path.join(ade, "images", dirname)
            gt_dir = os.path.join(ade, "annotations_detectron2", dirname)
            DatasetCatalog.register(
                name, lambda x=image_dir, y=gt_dir: load_sem_seg(y, x, "png", "jpg")
            )
            MetadataCatalog.get(name).set(
                stuff_classes=ADE20K_SEM_SEG_CATEGORIES[:],
                image_root=image_dir,
                sem_seg_root=gt_dir,
                evaluator_type="sem_seg",
                ignore_label=255,
            )
            names.append(name)
    return names

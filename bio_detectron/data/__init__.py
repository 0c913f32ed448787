"""
Datasets of bio_detectron.

Importing this package registers the embedded detection datasets with detectron2 as
"shapes_train" / "shapes_val", "textures_train" / "textures_val" and "photos_train" / "photos_val",
and small 96 px copies "<kind>_train_mini" / "<kind>_val_mini" of each (generated on first load,
into ``$BIO_DETECTRON_DATASETS`` or ``~/.cache/bio_detectron``; set the variable before importing).

Miniatures of the datasets Detectron2 itself registers (Pascal VOC, COCO, ADE20K), in their
on-disk layouts, are a tool of the repository (``tools/make_miniatures.py``), not of the library.
"""

from .cache import datasets_root
from .datasets import CheckedDatasetMapper, load_coco_dataset
from .generated import (
    KINDS,
    classification_folder,
    ensure_dataset_files,
    generate_detection,
    generated_dataset,
    register_generated_dataset,
)
from .imagenet import (
    ImageFolderDataset,
    UnreadableImageError,
    build_classification_dataset,
    build_classification_test_loader,
    build_classification_train_loader,
    classification_root,
)
from .photos import PHOTO_CLASSES
from .shapes import CLASSIFICATION_CLASSES, DETECTION_CLASSES
from .textures import TEXTURE_CLASSES

__all__ = [
    "CLASSIFICATION_CLASSES",
    "DETECTION_CLASSES",
    "KINDS",
    "PHOTO_CLASSES",
    "TEXTURE_CLASSES",
    "CheckedDatasetMapper",
    "ImageFolderDataset",
    "UnreadableImageError",
    "build_classification_dataset",
    "build_classification_test_loader",
    "build_classification_train_loader",
    "classification_folder",
    "classification_root",
    "datasets_root",
    "ensure_dataset_files",
    "generate_detection",
    "generated_dataset",
    "load_coco_dataset",
    "register_generated_dataset",
]


def _register_builtin_datasets() -> None:
    # Default sizes: what the demo trains on (1000 train / 200 val images; 160 px, photos 128 px).
    # Small copies at 96 px for smoke runs (configs/quick_schedules, tests).
    for kind in KINDS:
        for split in ("train", "val"):
            register_generated_dataset(f"{kind}_{split}", kind, split)
            register_generated_dataset(
                f"{kind}_{split}_mini", kind, split, image_size=96, num_train=32, num_val=16
            )


_register_builtin_datasets()

"""
Loading COCO-format datasets with clear errors, and registering the embedded generated datasets
(shapes, textures, photos).

The embedded datasets are registered like ``register_coco_instances`` does (a DatasetCatalog
entry that calls detectron2's ``load_coco_json``, and "coco" metadata), except that loading
generates the files first when they are missing, so that ``import bio_detectron`` stays cheap.
"""

import json
import os
from typing import Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .cache import datasets_root
from .shapes import DETECTION_CLASSES, ensure_shapes_dataset, shapes_dataset_paths
from .photos import PHOTO_CLASSES, ensure_photos_dataset, photos_dataset_paths
from .textures import TEXTURE_CLASSES, ensure_textures_dataset, textures_dataset_paths

__all__ = [
    "load_coco_dataset",
    "CheckedDatasetMapper",
    "register_generated_dataset",
    "register_shapes_dataset",
    "register_textures_dataset",
    "ensure_dataset_files",
]

# How many missing image paths an error message lists before it only gives the count.
_MAX_LISTED = 5

# Dataset name -> function that makes its files exist. Filled by the register_*_dataset functions.
_ENSURE_FILES: Dict[str, Callable[[], None]] = {}


def _check_coco_json(json_file: str, image_root: str) -> None:
    """Raise FileNotFoundError / ValueError naming the file for the mistakes users make most."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file {json_file} does not exist")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"COCO annotation file {json_file} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(
            f"COCO annotation file {json_file} must hold a JSON object, "
            f"got {type(data).__name__}"
        )
    missing_keys = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing_keys:
        raise ValueError(
            f"COCO annotation file {json_file} lacks the key(s) {missing_keys}; a COCO instances "
            f"file needs 'images', 'annotations' and 'categories' (it has {sorted(data)})"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise ValueError(
                f"'{key}' in COCO annotation file {json_file} must be a list, "
                f"got {type(data[key]).__name__}"
            )
    for img in data["images"]:
        absent = [k for k in ("id", "file_name", "height", "width") if k not in img]
        if absent:
            raise ValueError(f"An image entry in {json_file} lacks {absent}: {img}")

    # Check every image up front: a missing file found by a data-loader worker after an hour of
    # training is a much worse error than this one.
    missing = [
        path
        for path in (os.path.join(image_root, img["file_name"]) for img in data["images"])
        if not os.path.isfile(path)
    ]
    if missing:
        listed = ", ".join(missing[:_MAX_LISTED])
        more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
        raise FileNotFoundError(
            f"{len(missing)} of {len(data['images'])} images listed in {json_file} are missing "
            f"from {image_root}: {listed}{more}"
        )


def load_coco_dataset(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    extra_annotation_keys: Optional[List[str]] = None,
) -> List[Dict]:
    """
    Load a COCO instances json into detectron2's dataset dicts, with clear errors.

    Checks first that the json exists, parses, has "images", "annotations" and "categories",
    and that every image it lists exists under ``image_root``; then hands over to detectron2's
    ``load_coco_json``, so the result (and the metadata it sets) is exactly detectron2's.
    Images without annotations are kept: ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` decides.

    Args:
        json_file: path to the COCO instances json.
        image_root: folder that the images' "file_name" entries are relative to.
        dataset_name: when given, "thing_classes" and "thing_dataset_id_to_contiguous_id" are
            set in its metadata (see ``load_coco_json``).
        extra_annotation_keys: per-annotation keys to copy into the dicts besides the usual ones.

    Returns:
        list[dict]: one dict per image in detectron2's standard dataset format.

    Raises:
        FileNotFoundError: the json or some of its images are missing (the message names them).
        ValueError: the json is not JSON or not a COCO instances file (the message names it).
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    # The check parses the json once more than load_coco_json does; cheap next to training.
    _check_coco_json(json_file, image_root)
    return load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys)


class CheckedDatasetMapper(DatasetMapper):
    """
    A :class:`DatasetMapper` whose errors on unreadable images name the file.

    PIL's own messages ("cannot identify image file <_io.BufferedReader ...>", "image file is
    truncated") do not say which of thousands of files is broken. Constructed exactly like
    ``DatasetMapper`` (from a cfg or from explicit arguments).
    """

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict: metadata of one image, in detectron2's dataset format.

        Returns:
            dict: what ``DatasetMapper`` returns.

        Raises:
            ValueError: the image (or its sem_seg file) cannot be read; the message names it.
        """
        try:
            return super().__call__(dataset_dict)
        except OSError as e:
            # Reading files is the only I/O DatasetMapper does, and PIL's errors (including
            # UnidentifiedImageError) are OSErrors.
            path = dataset_dict.get("file_name")
            if "sem_seg_file_name" in dataset_dict:
                path = f"{path} (or its sem_seg file {dataset_dict['sem_seg_file_name']})"
            raise ValueError(f"cannot read image {path}: {e}") from e


# Generated dataset kind -> (paths function, ensure function, class names, default image size).
# Both functions take (split, root, image_size, num_train, num_val, seed).
_GENERATED = {
    "shapes": (shapes_dataset_paths, ensure_shapes_dataset, DETECTION_CLASSES, 160),
    "textures": (textures_dataset_paths, ensure_textures_dataset, TEXTURE_CLASSES, 160),
    "photos": (photos_dataset_paths, ensure_photos_dataset, PHOTO_CLASSES, 128),
}


def register_generated_dataset(
    name: str,
    kind: str,
    split: str,
    root: Optional[str] = None,
    image_size: Optional[int] = None,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
) -> None:
    """
    Register a split of a generated detection dataset under ``name``, with "coco" metadata.

    Nothing is generated here: the files are generated when the dataset is first loaded through
    ``DatasetCatalog.get(name)`` or :func:`ensure_dataset_files`. The cache folder is resolved now,
    so ``$BIO_DETECTRON_DATASETS`` must be set before this is called (for the built-in names such
    as "shapes_train", before ``import bio_detectron``).

    Args:
        name: the dataset name, e.g. "shapes_train".
        kind: "shapes" (:mod:`bio_detectron.data.shapes`), "textures"
            (:mod:`bio_detectron.data.textures`) or "photos" (:mod:`bio_detectron.data.photos`).
        split: "train" or "val".
        image_size: side of the square images; None: the kind's own (160, 160 and 128 px).
        root, num_train, num_val, seed: see
            :func:`bio_detectron.data.shapes.ensure_shapes_dataset`.
    """
    if kind not in _GENERATED:
        raise ValueError(f"Unknown generated dataset kind {kind!r}; allowed: {sorted(_GENERATED)}")
    paths, ensure_files, classes, default_size = _GENERATED[kind]
    image_size = default_size if image_size is None else image_size
    # Resolve the root once, so that the metadata and the generated files cannot disagree on it.
    options = (split, datasets_root(root), image_size, num_train, num_val, seed)
    json_file, image_root = paths(*options)

    def ensure():
        ensure_files(*options)

    def load():
        ensure()
        return load_coco_dataset(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    _ENSURE_FILES[name] = ensure
    # The category mapping is set now, not only by load_coco_json, because COCOEvaluator needs it
    # in --eval-only runs that never load the dataset itself. load_coco_json sets equal values.
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=list(classes),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(classes))},
    )


def register_shapes_dataset(name: str, split: str, **options) -> None:
    """
    Register a split of the generated shapes detection dataset under ``name``:
    ``register_generated_dataset(name, "shapes", split, **options)``.
    """
    register_generated_dataset(name, "shapes", split, **options)


def register_textures_dataset(name: str, split: str, **options) -> None:
    """
    Register a split of the generated textures detection dataset under ``name``:
    ``register_generated_dataset(name, "textures", split, **options)``.
    """
    register_generated_dataset(name, "textures", split, **options)


def ensure_dataset_files(dataset_name: str) -> None:
    """
    Make sure the files of a registered dataset exist before something opens them directly.

    Call it before building a ``COCOEvaluator``, which opens ``metadata.json_file`` in its
    constructor. Generates the embedded datasets when missing; a no-op for any other dataset.

    Args:
        dataset_name: a name registered in ``DatasetCatalog``.
    """
    ensure = _ENSURE_FILES.get(dataset_name)
    if ensure is not None:
        ensure()

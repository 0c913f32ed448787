"""
Loading COCO-format datasets and images with clear errors: the json, its images and unreadable
files are named. (The embedded datasets are registered by :mod:`bio_detectron.data.generated`.)
"""

import json
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetMapper
from detectron2.data.datasets import load_coco_json

__all__ = ["CheckedDatasetMapper", "load_coco_dataset"]

# How many missing image paths an error message lists before it only gives the count.
_MAX_LISTED = 5


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
            f"COCO annotation file {json_file} must hold a JSON object, got {type(data).__name__}"
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

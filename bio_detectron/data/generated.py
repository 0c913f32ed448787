"""
The generated datasets, one mechanism for every kind: where a dataset of given parameters lives,
generating it once (atomically, into the cache of :mod:`.cache`), and registering its splits with
detectron2.

A kind (:data:`KINDS`) is a renderer of one image and its constants: shapes
(:mod:`.shapes`), textures (:mod:`.textures`) and photos (:mod:`.photos`). Each can make a
COCO-format detection set (written by :mod:`.coco_writer`) and, shapes and photos, an
ImageNet-style classification folder (``<split>/<class>/<class>_<index>.JPEG``, one object per
image). Every image draws from a random generator of its own, seeded by (seed, the split's stream,
the image's index), so an image does not depend on how many were made before it, the splits never
share a stream, and the same parameters give byte-identical files.
"""

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from . import photos, shapes, textures
from .cache import check_sizes, dataset_dir, datasets_root, generate_once
from .coco_writer import save_jpeg, split_paths, write_coco_dataset
from .datasets import load_coco_dataset

__all__ = [
    "KINDS",
    "GeneratedKind",
    "classification_folder",
    "ensure_dataset_files",
    "generate_detection",
    "generated_dataset",
    "register_generated_dataset",
]


@dataclass(frozen=True)
class GeneratedKind:
    """
    One kind of generated dataset.

    Attributes:
        version: the generator's version, part of every cache folder's name: bump it whenever
            the output changes.
        classes: the detection categories (ids in the json are 1-based positions here).
        render: ``render(rng, image_size) -> (PIL image, objects)``, objects as
            :func:`~.coco_writer.write_coco_dataset` takes them.
        streams: the random streams of the detection splits, {"train": int, "val": int}.
        image_size, min_size: the default and the smallest image side, in pixels.
        supercategory: the COCO supercategory of every class.
        extra_fields: annotation fields beyond COCO's, or None (see ``write_coco_dataset``).
        classification_classes, render_classification, classification_streams: the
            classification folder: its class names, ``render(rng, class_name, image_size) -> PIL
            image`` and its splits' streams; None for a kind without one.
    """

    version: int
    classes: Sequence[str]
    render: Callable
    streams: Dict[str, int]
    image_size: int
    min_size: int
    supercategory: str
    extra_fields: Optional[Callable] = None
    classification_classes: Optional[Sequence[str]] = None
    render_classification: Optional[Callable] = None
    classification_streams: Optional[Dict[str, int]] = None


def _spec(module, classes, render, stream, image_size, min_size, extra_fields=None, cls=None):
    """A kind's spec from its module; its streams are ``stream`` (train), ``stream + 1`` (val) and,
    for its classification folder (``cls``: (classes, renderer)), ``stream + 2`` and ``+ 3``."""
    return GeneratedKind(
        version=module.GENERATOR_VERSION,
        classes=classes,
        render=render,
        streams={"train": stream, "val": stream + 1},
        image_size=image_size,
        min_size=min_size,
        supercategory=module.SUPERCATEGORY,
        extra_fields=extra_fields,
        classification_classes=cls[0] if cls else None,
        render_classification=cls[1] if cls else None,
        classification_streams={"train": stream + 2, "val": stream + 3} if cls else None,
    )


# kind -> its spec: module, classes, renderer, first stream, image size (default, smallest), ...
KINDS: Dict[str, GeneratedKind] = {
    "shapes": _spec(
        shapes, shapes.DETECTION_CLASSES, shapes.render_detection_image, 0, 160, 16,
        extra_fields=shapes.color_field,
        cls=(shapes.CLASSIFICATION_CLASSES, shapes.render_classification_image),
    ),
    "textures": _spec(
        textures, textures.TEXTURE_CLASSES, textures.render_textures_image, 10, 160, 32
    ),
    "photos": _spec(
        photos, photos.PHOTO_CLASSES, photos.render_photos_image, 20, 128, 64,
        cls=(photos.PHOTO_CLASSES, photos.render_photos_classification_image),
    ),
}  # fmt: skip


def _kind(kind: str) -> GeneratedKind:
    if kind not in KINDS:
        raise ValueError(f"Unknown generated dataset kind {kind!r}; allowed: {sorted(KINDS)}")
    return KINDS[kind]


def _image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


# ----------------------------------------------------------------------------------------------
# Detection sets
# ----------------------------------------------------------------------------------------------
def generate_detection(
    kind: str, output_dir: str, image_size=None, num_train=1000, num_val=200, seed=0
) -> None:
    """
    Write a detection set of ``kind`` into ``output_dir`` (not atomic: see
    :func:`generated_dataset`). Layout: ``{train,val}/<index>.jpg`` and
    ``annotations/instances_{train,val}.json``.
    """
    spec = _kind(kind)
    streams = spec.streams
    write_coco_dataset(
        output_dir,
        {"train": num_train, "val": num_val},
        spec.image_size if image_size is None else image_size,
        render=spec.render,
        image_rng=lambda split, index: _image_rng(seed, streams[split], index),
        class_names=spec.classes,
        supercategory=spec.supercategory,
        name=kind,
        version=spec.version,
        extra_fields=spec.extra_fields,
    )


def generated_dataset(
    kind: str,
    split: str = "train",
    root: Optional[str] = None,
    image_size: Optional[int] = None,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    *,
    generate: bool = True,
) -> Tuple[str, str]:
    """
    Where a split of a generated detection set lives, in
    ``<root>/<kind>_v<version>_<size>px_train<n>_val<m>_seed<seed>/``; both splits are generated
    on first use unless ``generate`` is False.

    Args:
        kind: a name in :data:`KINDS`.
        split: "train" or "val".
        root: the cache folder; see :func:`~.cache.datasets_root`.
        image_size: side of the square images, in pixels; None: the kind's own.
        num_train, num_val: number of images per split.
        seed: seed of the random streams.
        generate: make the files exist (False: only say where they are).

    Returns:
        (json_file, image_root) of the split, ready for ``load_coco_json``.
    """
    spec = _kind(kind)
    size = spec.image_size if image_size is None else image_size
    folder = dataset_dir(kind, spec.version, root, size, num_train, num_val, seed)
    paths = split_paths(folder, split)
    if generate:
        check_sizes(size, {"num_train": num_train, "num_val": num_val}, minimum=spec.min_size)
        generate_once(
            folder, lambda out: generate_detection(kind, out, size, num_train, num_val, seed)
        )
    return paths


# Dataset name -> function that makes its files exist; filled by register_generated_dataset.
_ENSURE_FILES: Dict[str, Callable[[], None]] = {}


def register_generated_dataset(name: str, kind: str, split: str, **options) -> None:
    """
    Register a split of a generated detection set under ``name``, with "coco" metadata, as
    ``register_coco_instances`` does, except that loading generates the files first when they are
    missing, so that registering is cheap.

    Nothing is generated here. The cache folder is resolved now, so ``$BIO_DETECTRON_DATASETS``
    must be set before this is called (for the built-in names, before ``import bio_detectron``).

    Args:
        name: the dataset name, e.g. "shapes_train".
        kind, split: see :func:`generated_dataset`.
        options: its other options (``root``, ``image_size``, ``num_train``, ``num_val``,
            ``seed``).
    """
    spec = _kind(kind)
    # Resolve the root once, so that the metadata and the generated files cannot disagree on it.
    options = dict(options, root=datasets_root(options.get("root")))
    json_file, image_root = generated_dataset(kind, split, generate=False, **options)

    def ensure():
        generated_dataset(kind, split, **options)

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
        thing_classes=list(spec.classes),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(spec.classes))},
    )


def ensure_dataset_files(dataset_name: str) -> None:
    """
    Make sure the files of a registered dataset exist before something opens them directly (a
    ``COCOEvaluator`` opens ``metadata.json_file`` in its constructor). Generates the embedded
    datasets when missing; a no-op for any other dataset.
    """
    ensure = _ENSURE_FILES.get(dataset_name)
    if ensure is not None:
        ensure()


# ----------------------------------------------------------------------------------------------
# Classification folders
# ----------------------------------------------------------------------------------------------
def _classification_spec(kind: str) -> GeneratedKind:
    spec = _kind(kind)
    if spec.render_classification is None:
        with_folder = sorted(k for k, s in KINDS.items() if s.render_classification is not None)
        raise ValueError(f"{kind!r} has no classification folder; these do: {with_folder}")
    return spec


def _write_classification(output_dir, spec, counts, image_size, seed) -> None:
    classes = spec.classification_classes
    for split, per_class in counts.items():
        stream = spec.classification_streams[split]
        for label, class_name in enumerate(classes):
            class_dir = os.path.join(output_dir, split, class_name)
            os.makedirs(class_dir, exist_ok=True)
            for index in range(per_class):
                # The classes interleave in one stream, so that adding a class changes no index.
                rng = _image_rng(seed, stream, index * len(classes) + label)
                img = spec.render_classification(rng, class_name, image_size)
                save_jpeg(img, os.path.join(class_dir, f"{class_name}_{index:05d}.JPEG"))


def classification_folder(
    kind: str,
    root: Optional[str] = None,
    image_size: int = 64,
    num_train_per_class: int = 100,
    num_val_per_class: int = 20,
    seed: int = 0,
    *,
    generate: bool = True,
) -> str:
    """
    A generated classification folder, ``{train,val}/<class>/<class>_<index>.JPEG`` as
    torchvision's ``ImageFolder`` reads it, one object per image; generated on first use unless
    ``generate`` is False.

    Args:
        kind: "shapes" (10 drawn shapes) or "photos" (the photos set's 10 classes).
        root: the cache folder; see :func:`~.cache.datasets_root`.
        image_size: side of the square images, in pixels.
        num_train_per_class, num_val_per_class: images per class and split.
        seed: seed of the random streams.
        generate: make the files exist (False: only say where they are).

    Returns:
        str: the folder; ``<it>/train`` and ``<it>/val`` are ``ImageFolder`` roots.
    """
    spec = _classification_spec(kind)
    counts = {"train": num_train_per_class, "val": num_val_per_class}
    name = f"{kind}_cls_v{spec.version}_{image_size}px" + "".join(
        f"_{split}{n}" for split, n in counts.items()
    )
    folder = os.path.join(datasets_root(root), f"{name}_seed{seed}")
    if generate:
        check_sizes(image_size, {f"num_{s}_per_class": n for s, n in counts.items()}, minimum=16)
        generate_once(
            folder, lambda out: _write_classification(out, spec, counts, image_size, seed)
        )
    return folder

"""
ImageNet-style classification folders: ``<root>/<split>/<class>/<image>``, as torchvision's
``ImageFolder`` reads them, with checks that name the bad folder or file, and the data loaders of
``tools/train_imagenet.py``.

Images are decoded and augmented in DataLoader workers and batched as ``uint8`` tensors in the
channel order of ``INPUT.FORMAT``: a quarter of the bytes of float32 to copy between processes and
to the GPU. The model converts them to float and normalises them with ``MODEL.PIXEL_MEAN/STD`` on
its device, as detectron2's meta-architectures do.
"""

import logging
import multiprocessing
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import transforms as T

from .generated import KINDS, classification_folder

__all__ = [
    "IMG_EXTENSIONS",
    "ENV_IMAGENET_ROOT",
    "UnreadableImageError",
    "classification_root",
    "scan_split",
    "ImageFolderDataset",
    "build_classification_transform",
    "build_classification_dataset",
    "ClassificationTrainLoader",
    "build_classification_train_loader",
    "build_classification_test_loader",
]

logger = logging.getLogger(__name__)

# File name endings read as images (case-insensitive); other files in class folders are ignored.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# The environment variable read when DATASETS.IMAGENET_ROOT is empty.
ENV_IMAGENET_ROOT = "IMAGENET_ROOT"


class UnreadableImageError(RuntimeError):
    """An image file that PIL cannot open or decode."""


def classification_root(cfg) -> str:
    """
    The dataset folder a config asks for: ``DATASETS.IMAGENET_ROOT``, else ``$IMAGENET_ROOT``,
    else the embedded classification folder ``DATASETS.GENERATED_CLASSIFICATION`` names ("shapes"
    or "photos"; generated on first use, sized by ``DATASETS.SHAPES_CLASSIFICATION``).

    Returns:
        str: a folder holding ``train/`` and ``val/``.
    """
    root, source = cfg.DATASETS.IMAGENET_ROOT, "DATASETS.IMAGENET_ROOT"
    if not root:
        root, source = os.environ.get(ENV_IMAGENET_ROOT, ""), f"${ENV_IMAGENET_ROOT}"
    if not root:
        kind = cfg.DATASETS.GENERATED_CLASSIFICATION
        folders = sorted(k for k, spec in KINDS.items() if spec.render_classification)
        if kind not in folders:
            raise ValueError(
                f"DATASETS.GENERATED_CLASSIFICATION={kind!r} is not a generated folder; use one of "
                f"{folders}"
            )
        sizes = cfg.DATASETS.SHAPES_CLASSIFICATION
        root = classification_folder(
            kind,
            image_size=sizes.IMAGE_SIZE,
            num_train_per_class=sizes.NUM_TRAIN_PER_CLASS,
            num_val_per_class=sizes.NUM_VAL_PER_CLASS,
        )
        logger.info(
            f"Neither DATASETS.IMAGENET_ROOT nor ${ENV_IMAGENET_ROOT} is set: using the generated "
            f"{kind} classification folder {root}"
        )
        return root
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Classification root {root!r} (from {source}) is not a folder; expected "
            f"{root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG"
        )
    return root


def scan_split(
    root: str, split: str, classes: Optional[Sequence[str]] = None
) -> Tuple[List[str], List[Tuple[str, int]]]:
    """
    List the images of ``<root>/<split>/<class>/``.

    Args:
        root: the dataset folder.
        split: "train" or "val".
        classes: the class names another split of the dataset has; this split must have the same.

    Returns:
        tuple: (sorted class names, [(image path, class index)] sorted by class then file name).
    """
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(
            f"Split folder {split_dir!r} does not exist; expected {split_dir}/<class>/<images>"
        )
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not found:
        raise FileNotFoundError(
            f"Split folder {split_dir!r} has no class folders; expected "
            f"{split_dir}/<class>/<images>"
        )
    if classes is not None and list(classes) != found:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise ValueError(
            f"Class folders of {split_dir!r} differ from the other split's: missing "
            f"{missing[:10]}, extra {extra[:10]}"
        )
    samples = []
    for label, name in enumerate(found):
        class_dir = os.path.join(split_dir, name)
        files = sorted(
            e.name
            for e in os.scandir(class_dir)
            if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)
        )
        if not files:
            raise FileNotFoundError(
                f"Class folder {class_dir!r} holds no image (files ending in {IMG_EXTENSIONS})"
            )
        samples.extend((os.path.join(class_dir, f), label) for f in files)
    return found, samples


def build_classification_transform(is_train: bool, size: int, min_scale=0.08, hflip=True):
    """
    The standard ImageNet augmentation, ending in a ``uint8`` tensor.

    Args:
        is_train: training: random-resized crop of ``size`` covering ``[min_scale, 1]`` of the
            image, then a random horizontal flip; evaluation: resize the short side to
            ``size * 256 / 224`` and take the centre ``size`` x ``size`` crop.
        size: side of the output, in pixels.

    Returns:
        callable: PIL image -> uint8 tensor (3, size, size), RGB.
    """
    if is_train:
        ops = [T.RandomResizedCrop(size, scale=(min_scale, 1.0))]
        if hflip:
            ops.append(T.RandomHorizontalFlip())
    else:
        ops = [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)]
    return T.Compose(ops + [T.PILToTensor()])


class ImageFolderDataset(Dataset):
    """
    Images of an ImageNet-style split; item ``i`` is ``(image, label)``: a uint8 tensor
    (3, H, W) in ``image_format`` channel order and an int. With ``skip_unreadable``, an unreadable
    image gives ``None`` (dropped by :func:`collate_classification`) and is counted in
    :attr:`num_skipped`, across DataLoader workers.
    """

    def __init__(
        self,
        samples: Sequence[Tuple[str, int]],
        classes: Sequence[str],
        transform,
        *,
        image_format: str = "RGB",
        skip_unreadable: bool = False,
    ):
        """
        Args:
            samples: (image path, class index) pairs, as :func:`scan_split` returns them.
            classes: class names; index i is label i.
            transform: PIL RGB image -> uint8 tensor (3, H, W) in RGB order.
            image_format: "RGB" or "BGR" (detectron2's INPUT.FORMAT): channel order of the output.
            skip_unreadable: skip and count unreadable images instead of raising.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={image_format!r} is not allowed here; use RGB or BGR")
        self.samples, self.classes = list(samples), list(classes)
        self.transform, self.image_format = transform, image_format
        self.skip_unreadable = skip_unreadable
        # Shared memory: DataLoader workers inherit it, so the main process sees their counts.
        self._skipped = multiprocessing.Value("q", 0)

    def __len__(self):
        return len(self.samples)

    @property
    def num_skipped(self) -> int:
        """Unreadable images skipped so far, by this process and its DataLoader workers."""
        return self._skipped.value

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")  # decodes now, so that a truncated file fails here
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            if not self.skip_unreadable:
                raise UnreadableImageError(
                    f"Cannot read image {path!r}: {e}. Set DATALOADER.SKIP_UNREADABLE True to "
                    "skip such files."
                ) from e
            with self._skipped.get_lock():
                self._skipped.value += 1
            logger.warning(f"Skipping unreadable image {path!r}: {e}")
            return None
        image = self.transform(img)
        if self.image_format == "BGR":
            image = image.flip(0)
        return image, label


def collate_classification(batch):
    """
    Returns:
        tuple: (uint8 tensor (N, 3, H, W), int64 tensor (N,)), without the skipped items.
    """
    kept = [b for b in batch if b is not None]
    if not kept:
        raise UnreadableImageError(
            f"All {len(batch)} images of a batch were unreadable; see the warnings above"
        )
    images = torch.stack([b[0] for b in kept])
    labels = torch.tensor([b[1] for b in kept], dtype=torch.int64)
    return images, labels


def build_classification_dataset(
    cfg, split: str, classes: Optional[Sequence[str]] = None, root: Optional[str] = None
) -> ImageFolderDataset:
    """
    The dataset of ``split`` ("train" or "val"), with the transform of that split.

    Args:
        classes: the other split's class names, which this split must have too.
        root: the dataset folder; by default :func:`classification_root`.
    """
    root = root or classification_root(cfg)
    classes, samples = scan_split(root, split, classes)
    c = cfg.INPUT.CLASSIFICATION
    transform = build_classification_transform(split == "train", c.SIZE, c.MIN_SCALE, c.HFLIP)
    return ImageFolderDataset(
        samples,
        classes,
        transform,
        image_format=cfg.INPUT.FORMAT,
        skip_unreadable=cfg.DATALOADER.SKIP_UNREADABLE,
    )


class _EpochBatchSampler(Sampler):
    """Batches of a per-epoch sampler, dropping the last partial one, skipping ``skip`` first."""

    def __init__(self, sampler: DistributedSampler, batch_size: int):
        self.sampler, self.batch_size, self.skip = sampler, batch_size, 0

    def __len__(self):
        return len(self.sampler) // self.batch_size - self.skip

    def __iter__(self):
        indices = list(self.sampler)[self.skip * self.batch_size :]
        for i in range(0, len(indices) - self.batch_size + 1, self.batch_size):
            yield indices[i : i + self.batch_size]


class ClassificationTrainLoader:
    """
    Training batches forever, epoch after epoch: each epoch, every process reads its shard of a
    new permutation of the dataset (a ``DistributedSampler`` seeded by ``seed`` and the epoch), in
    batches of ``batch_size``; the last partial batch is dropped, so that an epoch is exactly
    :attr:`iters_per_epoch` iterations on every process. Starting at iteration ``k`` (a resumed
    run) reads the batches the uninterrupted run would have read from iteration ``k`` on.

    Yields:
        tuple: (uint8 tensor (batch_size, 3, H, W), int64 labels (batch_size,)).
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        batch_size: int,
        *,
        num_workers: int = 0,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pin_memory: bool = False,
    ):
        self.dataset = dataset
        self.sampler = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
        )
        self.iters_per_epoch = len(self.sampler) // batch_size
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"The train split has {len(dataset)} images: less than one batch of {batch_size} "
                f"per process for {num_replicas} process(es); lower SOLVER.IMS_PER_BATCH"
            )
        self.batch_sampler = _EpochBatchSampler(self.sampler, batch_size)
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.batch_sampler,
            num_workers=num_workers,
            collate_fn=collate_classification,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
        )
        self.start_iter = 0

    def set_start_iter(self, start_iter: int):
        """Make the next ``iter(self)`` start at iteration ``start_iter`` of the run."""
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        epoch, skip = divmod(self.start_iter, self.iters_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            self.batch_sampler.skip = skip
            yield from self.loader
            epoch, skip = epoch + 1, 0


def _train_loader_from_config(cfg, dataset=None):
    if dataset is None:
        dataset = build_classification_dataset(cfg, "train")
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    return {
        "dataset": dataset,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "seed": seed,
        "pin_memory": torch.device(cfg.MODEL.DEVICE).type == "cuda",
    }


def _per_process_batch(total_batch_size: int) -> int:
    world = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total_batch_size} must be a positive multiple of the number "
            f"of processes ({world})"
        )
    return total_batch_size // world


@configurable(from_config=_train_loader_from_config)
def build_classification_train_loader(
    dataset, *, total_batch_size, num_workers=0, seed=0, pin_memory=False
) -> ClassificationTrainLoader:
    """
    Args:
        dataset (ImageFolderDataset): the train split.
        total_batch_size (int): images per iteration over all processes (SOLVER.IMS_PER_BATCH).
        num_workers (int): DataLoader worker processes per training process, which decode.
        seed (int): seed of the epochs' permutations; the same on every process.
        pin_memory (bool): page-locked batches, for faster copies to a GPU.

    Returns:
        ClassificationTrainLoader: this process's batches of ``total_batch_size / world size``.
    """
    return ClassificationTrainLoader(
        dataset,
        _per_process_batch(total_batch_size),
        num_workers=num_workers,
        seed=seed,
        num_replicas=comm.get_world_size(),
        rank=comm.get_rank(),
        pin_memory=pin_memory,
    )


def _test_loader_from_config(cfg, dataset=None):
    if dataset is None:
        dataset = build_classification_dataset(cfg, "val")
    return {
        "dataset": dataset,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "pin_memory": torch.device(cfg.MODEL.DEVICE).type == "cuda",
    }


@configurable(from_config=_test_loader_from_config)
def build_classification_test_loader(
    dataset, *, total_batch_size, num_workers=0, pin_memory=False
) -> DataLoader:
    """
    Every image of ``dataset`` exactly once over all processes (each reads a contiguous shard;
    no padding, so that accuracies count each image once), in order, in batches of
    ``total_batch_size / world size``.
    """
    return DataLoader(
        dataset,
        batch_size=_per_process_batch(total_batch_size),
        sampler=InferenceSampler(len(dataset)),
        num_workers=num_workers,
        collate_fn=collate_classification,
        pin_memory=pin_memory,
    )

"""Data sets, their splits, and loaders whose order and augmentation derive only from (seed, epoch).

Data sets are registered by name (``digits``, ``cifar10``, ``cifar10.1``, ``imagenet``); :func:`load_splits`
returns the splits one experiment needs:

- ``purpose="search"`` (spec 8): the training set is split *by index* into the first ``train_portion``
  (weights) and the rest (architecture weights), both with the training transform, as the reference does
  (so the architecture batches get AutoAugment and Cutout too). No test split: a search never sees it.
- ``purpose="train"`` (spec 9, honest protocol): ``validation_size`` images are held out of the *training*
  data by a fixed seeded permutation to select the best epoch; the official test set is reported
  separately. Both use the evaluation transform. CIFAR-10.1 is an extra test set (:func:`extra_test_sets`).

The reference selected its best epoch on the CIFAR-10 test set (spec 11, gotcha 13); the engine can still
reproduce that by selecting on ``test``, but the splits here make the held-out protocol the default.

Reproducibility: :func:`make_loader` shuffles with a ``torch.Generator`` seeded from (seed, epoch) and seeds
every sample's augmentation from (seed, epoch, index), so a run resumed at an epoch boundary sees exactly
the same images in the same order, whatever the number of loader workers. Split permutations use numpy's
legacy ``RandomState``, whose stream numpy keeps frozen across versions, so splits never move.

Only ``digits`` (scikit-learn's bundled handwritten digits) works without files; the others read the files
from ``root`` (default ``$NAS_DATA_ROOT/<name>``, or ``~/.cache/nas-service/data/<name>``) and raise
:class:`DatasetNotFoundError` naming the exact path and how to get the files when they are missing.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from search_spaces.registry import Registry

from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    cifar_eval_transform,
    cifar_train_transform,
    digits_eval_transform,
    digits_train_transform,
    imagenet_eval_transform,
    imagenet_train_transform,
)

__all__ = [
    "load_data",
    "AugmentConfig",
    "ArchBatchStream",
    "DATASETS",
    "DataSplits",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSource",
    "SeededAugmentation",
    "SplitDataset",
    "cycle_batches",
    "data_root",
    "default_root",
    "extra_test_sets",
    "get_dataset_info",
    "list_datasets",
    "load_splits",
    "load_test_set",
    "make_loader",
    "read_cifar10_batches",
    "read_cifar101",
    "seed_for",
]

Purpose = Literal["search", "train"]


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set are missing; the message names the path looked at and how to get them."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the message and path when pickled (e.g. raised in a Ray worker and re-raised on the driver).
        return (type(self), (str(self.args[0]), None if self.path is None else str(self.path)))


class DatasetFormatError(ValueError):
    """A data set file exists but does not hold what its format promises (shape, dtype, keys, labels)."""


# ---------------------------------------------------------------------------------------------------------
# Seeds


def seed_for(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (ints and strings), stable across processes and runs.

    Python's ``hash`` is salted per process, so we hash the ``repr`` with BLAKE2b instead.

    Example:
        ``seed_for("order", seed, epoch)`` seeds the shuffle of one epoch.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# ---------------------------------------------------------------------------------------------------------
# Data set descriptions and raw pools


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a report need to know about a data set.

    Args:
        name: registry name.
        in_channels, input_size, num_classes: the network's input and output shapes.
        mean, std: per-channel normalisation of the evaluation transform.
        test_only: the data set has no training split (CIFAR-10.1).
        default_validation_size: images held out of the training data when ``validation_size`` is None.
        extra_test_sets: other data sets that score models trained on this one (CIFAR-10 -> CIFAR-10.1).
        source: where the files come from.
    """

    name: str
    in_channels: int
    input_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_only: bool = False
    default_validation_size: int | None = None
    extra_test_sets: tuple[str, ...] = ()
    source: str = ""


class _ArrayImages:
    """uint8 (N, H, W, C) images and int labels; items are PIL images, which torchvision transforms expect."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        return Image.fromarray(self.images[index]), int(self.labels[index])


class _TensorImages:
    """float (N, C, H, W) images and int labels, already scaled to [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class _FolderImages:
    """A torchvision ``ImageFolder`` without a transform (the split applies its own)."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder
        self.labels = np.asarray(folder.targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.folder[index]


class SplitDataset(Dataset):
    """The images ``indices`` of a raw pool, passed through ``transform``; items are ``(image, label)``.

    Train and validation views of one pool share its memory (CIFAR-10 is read once) and differ only in
    indices and transform.
    """

    def __init__(
        self, pool: Any, indices: Sequence[int] | np.ndarray, transform: Callable[[Any], Any] | None
    ) -> None:
        self.pool = pool
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.pool[int(self.indices[index])]
        return (self.transform(image) if self.transform is not None else image), label

    @property
    def labels(self) -> np.ndarray:
        """The labels of this split, in index order (no image is read)."""
        return np.asarray(self.pool.labels)[self.indices]

    def __repr__(self) -> str:
        pool = type(self.pool).__name__
        return f"{type(self).__name__}(n={len(self)}, pool={pool}, transform={self.transform!r})"


# ---------------------------------------------------------------------------------------------------------
# Data set sources (the registry's entries)


class DatasetSource:
    """One registered data set: its :class:`DatasetInfo`, where its files live, how to read and transform
    them.

    Subclasses implement ``info``, ``test_pool`` and the transforms; training sets also ``train_pool``.
    A pool is indexable, returns ``(raw image, label)`` and has a ``labels`` array.
    """

    name: str = ""
    folder: str | None = None  # sub-folder of data_root() for the default root; None: no files needed

    def info(self) -> DatasetInfo:
        raise NotImplementedError

    def default_root(self) -> Path | None:
        return None if self.folder is None else data_root() / self.folder

    def train_pool(self, root: Path | None, *, download: bool) -> Any:
        raise ValueError(
            f"dataset {self.name!r} is test-only: it has no training split; score models on it with "
            f"load_test_set({self.name!r}) or as an extra test set"
        )

    def test_pool(self, root: Path | None, *, download: bool) -> Any:
        raise NotImplementedError

    def train_transform(self, augment: AugmentConfig) -> Callable[[Any], Any]:
        raise ValueError(f"dataset {self.name!r} is test-only: it has no training transform")

    def eval_transform(self, augment: AugmentConfig) -> Callable[[Any], Any]:
        raise NotImplementedError


DATASETS: Registry[DatasetSource] = Registry("dataset")


def data_root() -> Path:
    """The folder holding default data set roots: ``$NAS_DATA_ROOT`` or ``~/.cache/nas-service/data``.

    Absolute on purpose: Ray Tune runs each trial in its own working directory, so a relative default
    would point somewhere different in every trial.
    """
    env = os.environ.get("NAS_DATA_ROOT")
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "nas-service" / "data"


def default_root(name: str) -> Path | None:
    """Where ``name`` is looked for when no root is given (None for the embedded ``digits``)."""
    return DATASETS.get(name).default_root()


def _resolve_root(source: DatasetSource, root: str | os.PathLike[str] | None) -> Path | None:
    if root is None:
        return source.default_root()
    return Path(root).expanduser().absolute()


def _require_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise ValueError(f"root: dataset {name!r} reads files, so it needs a root folder, got None")
    return root


# --- digits (embedded) -------------------------------------------------------------------------------------

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0  # fixed: the test split must not move with the run seed or the validation seed


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """(images (1797, 1, 8, 8) in [0, 1], labels, pool indices, test indices); read once per process."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)  # pixel values 0..16
    labels = bunch.target.astype(np.int64)
    perm = np.random.RandomState(_DIGITS_SPLIT_SEED).permutation(len(labels))
    n_test = int(_DIGITS_TEST_FRACTION * len(labels))
    return images, labels, np.sort(perm[n_test:]), np.sort(perm[:n_test])


@lru_cache(maxsize=1)
def _digits_stats() -> tuple[float, float]:
    # Statistics of the training pool only (never the test images), computed the same way every time.
    images, _, pool, _ = _digits()
    train = images[torch.from_numpy(pool)].double()
    return float(train.mean()), float(train.std())


class _Digits(DatasetSource):
    """scikit-learn's handwritten digits: 1797 grey 8x8 images, 10 classes, no files needed.

    A fixed 20% test split (permutation seed 0); the remaining 80% is the training data, from which
    ``purpose="train"`` holds out 20% of the total (359 images) for validation by default.
    """

    name = "digits"

    def info(self) -> DatasetInfo:
        mean, std = _digits_stats()
        n_test = int(_DIGITS_TEST_FRACTION * len(_digits()[1]))
        return DatasetInfo(
            name=self.name, in_channels=1, input_size=8, num_classes=10, mean=(mean,), std=(std,),
            default_validation_size=n_test,
            source="sklearn.datasets.load_digits (the test set of the UCI optical digits)",
        )  # fmt: skip

    def train_pool(self, root: Path | None, *, download: bool) -> _TensorImages:
        images, labels, pool, _ = _digits()
        return _TensorImages(images[torch.from_numpy(pool)], labels[pool])

    def test_pool(self, root: Path | None, *, download: bool) -> _TensorImages:
        images, labels, _, test = _digits()
        return _TensorImages(images[torch.from_numpy(test)], labels[test])

    def train_transform(self, augment: AugmentConfig) -> Callable[[Any], Any]:
        info = self.info()
        return digits_train_transform(augment, info.mean, info.std)

    def eval_transform(self, augment: AugmentConfig) -> Callable[[Any], Any]:
        info = self.info()
        return digits_eval_transform(info.mean, info.std)


# --- CIFAR-10 ----------------------------------------------------------------------------------------------

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR10_TGZ_MD5 = "c58f30108f718f92721af3b95e74349a"  # torchvision's checksum of the archive


def _key(entry: dict[Any, Any], *names: str) -> Any:
    # The batches were pickled by Python 2: loaded with encoding="latin1" the keys are str, with
    # encoding="bytes" (or when re-pickled from Python 3 as bytes) they are b"data"; accept both.
    for name in names:
        for key in (name, name.encode()):
            if key in entry:
                return entry[key]
    raise KeyError(names[0])


def read_cifar10_batches(
    folder: str | os.PathLike[str], names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Reads CIFAR-10 python batches (the files of ``cifar-10-python.tar.gz``) into arrays.

    We read the format ourselves instead of using ``torchvision.datasets.CIFAR10``: torchvision 0.29
    checks the md5 of every batch file in ``_check_integrity`` and refuses anything else, so it cannot
    load a subset, a re-packed copy, or the tiny fake batches the tests write in the real format. The
    official archive is still checked against its md5 when we download it.

    Args:
        folder: the ``cifar-10-batches-py`` folder.
        names: batch files to read, e.g. ``data_batch_1``..``data_batch_5`` or ``test_batch``.

    Returns:
        ``(images, labels)``: uint8 (N, 32, 32, 3) in HWC order and int64 (N,).

    Raises:
        DatasetFormatError: a file is not a CIFAR-10 batch (keys, dtype, shape or labels).
    """
    folder = Path(folder)
    images, labels = [], []
    for name in names:
        path = folder / name
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # noqa: S301 - the CIFAR format is a pickle
        try:
            data = np.asarray(_key(entry, "data"))
            targets = np.asarray(_key(entry, "labels", "fine_labels"), dtype=np.int64)
        except (KeyError, TypeError) as err:
            raise DatasetFormatError(f"{path}: a CIFAR-10 batch is a dict with 'data' and 'labels', "
                                     f"missing {err}") from None  # fmt: skip
        shape_ok = data.ndim == 2 and data.shape[1] == 3 * 32 * 32 and len(targets) == len(data)
        if data.dtype != np.uint8 or not shape_ok:
            raise DatasetFormatError(
                f"{path}: 'data' must be uint8 (N, 3072) with N labels, got {data.dtype} {data.shape} "
                f"and {len(targets)} labels"
            )
        if len(targets) and (targets.min() < 0 or targets.max() > 9):
            raise DatasetFormatError(f"{path}: labels must lie in 0..9, got {targets.min()}..{targets.max()}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R, G, B planes -> HWC
        labels.append(targets)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


class _Cifar10(DatasetSource):
    """CIFAR-10 from the python batches in ``<root>/cifar-10-batches-py``: 50k training, 10k test images."""

    name = "cifar10"
    folder = "cifar10"

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name, in_channels=3, input_size=32, num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD,
            default_validation_size=5000, extra_test_sets=("cifar10.1",),
            source="https://www.cs.toronto.edu/~kriz/cifar.html",
        )  # fmt: skip

    def _read(self, root: Path | None, names: Sequence[str], *, download: bool) -> _ArrayImages:
        root = _require_root(self.name, root)
        folder = root / CIFAR10_FOLDER
        if download:
            self._download(root)
        expected = (*CIFAR10_TRAIN_FILES, *CIFAR10_TEST_FILES)
        missing = [name for name in expected if not (folder / name).is_file()]
        if missing and any(name in missing for name in names):
            raise DatasetNotFoundError(
                f"CIFAR-10 not found: missing {missing} in {folder}. Expected the folder "
                f"'{CIFAR10_FOLDER}' extracted from cifar-10-python.tar.gz inside {root}. Get it with "
                f"download=True (spec: data.download: true), or download {_CIFAR10_URL} "
                f"(https://www.cs.toronto.edu/~kriz/cifar.html) and extract it there.",
                folder,
            )
        return _ArrayImages(*read_cifar10_batches(folder, names))

    def _download(self, root: Path) -> None:
        from filelock import FileLock  # a torch dependency
        from torchvision.datasets.utils import download_and_extract_archive

        root.mkdir(parents=True, exist_ok=True)
        # Trials of one experiment start together; the lock makes one of them download and the rest wait.
        with FileLock(str(root / ".cifar10.download.lock")):
            folder = root / CIFAR10_FOLDER
            if not all((folder / name).is_file() for name in (*CIFAR10_TRAIN_FILES, *CIFAR10_TEST_FILES)):
                download_and_extract_archive(_CIFAR10_URL, str(root), filename="cifar-10-python.tar.gz",
                                             md5=_CIFAR10_TGZ_MD5)  # fmt: skip

    def train_pool(self, root: Path | None, *, download: bool) -> _ArrayImages:
        return self._read(root, CIFAR10_TRAIN_FILES, download=download)

    def test_pool(self, root: Path | None, *, download: bool) -> _ArrayImages:
        return self._read(root, CIFAR10_TEST_FILES, download=download)

    def train_transform(self, augment: AugmentConfig) -> Callable[[Any], Any]:
        return cifar_train_transform(augment)

    def eval_transform(self, augment: AugmentConfig) -> Callable[[Any], Any]:
        return cifar_eval_transform()


# --- CIFAR-10.1 --------------------------------------------------------------------------------------------

CIFAR101_FILES = ("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy")
_CIFAR101_SOURCE = "https://github.com/modestyachts/CIFAR-10.1"
_CIFAR101_RAW = "https://raw.githubusercontent.com/modestyachts/CIFAR-10.1/master/datasets/"


def read_cifar101(folder: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reads CIFAR-10.1 v6 (``cifar10.1_v6_data.npy`` and ``cifar10.1_v6_labels.npy``) from ``folder``.

    Returns:
        ``(images, labels)``: uint8 (N, 32, 32, 3) and int64 (N,); N is 2000 for the real files.

    Raises:
        DatasetFormatError: wrong dtype, shape, label count or label range.
    """
    folder = Path(folder)
    data_path, labels_path = (folder / name for name in CIFAR101_FILES)
    # allow_pickle=False: the files are plain arrays, and a pickle inside an .npy could run code.
    images = np.load(data_path, allow_pickle=False)
    labels = np.load(labels_path, allow_pickle=False)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DatasetFormatError(
            f"{data_path}: must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFormatError(
            f"{labels_path}: must be N={len(images)} integer labels, got {labels.dtype} {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFormatError(
            f"{labels_path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}"
        )
    return images, labels.astype(np.int64)


class _Cifar101(DatasetSource):
    """CIFAR-10.1 v6 (Recht et al. 2018): 2000 new test images in CIFAR-10's classes; test-only."""

    name = "cifar10.1"
    folder = "cifar10.1"

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name, in_channels=3, input_size=32, num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD,
            test_only=True, source=_CIFAR101_SOURCE,
        )  # fmt: skip

    def test_pool(self, root: Path | None, *, download: bool) -> _ArrayImages:
        root = _require_root(self.name, root)
        if download:
            self._download(root)
        missing = [name for name in CIFAR101_FILES if not (root / name).is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"CIFAR-10.1 not found: missing {missing} in {root}. Expected the v6 files "
                f"{list(CIFAR101_FILES)} in that folder; get them from {_CIFAR101_SOURCE} "
                "(folder 'datasets/') "
                f"or with download=True.",
                root,
            )
        return _ArrayImages(*read_cifar101(root))

    def _download(self, root: Path) -> None:
        from filelock import FileLock
        from torchvision.datasets.utils import download_url

        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / ".cifar10.1.download.lock")):
            for name in CIFAR101_FILES:
                if not (root / name).is_file():
                    download_url(_CIFAR101_RAW + name, str(root), filename=name)

    def eval_transform(self, augment: AugmentConfig) -> Callable[[Any], Any]:
        return cifar_eval_transform()


# --- ImageNet ----------------------------------------------------------------------------------------------


class _ImageNet(DatasetSource):
    """ImageNet (ILSVRC 2012) in the usual folder layout: ``<root>/train/<wnid>/*.JPEG`` and
    ``<root>/val/<wnid>/*.JPEG``.

    ``num_classes`` is 1000 whatever the folders hold; a smaller tree (a subset) still loads, provided
    ``train`` and ``val`` have the same class folders, so that label indices agree.
    """

    name = "imagenet"
    folder = "imagenet"

    def info(self) -> DatasetInfo:
        # The normalisation here is the correct one; imagenet_std_bug only changes the transforms.
        return DatasetInfo(
            name=self.name, in_channels=3, input_size=224, num_classes=1000,
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
            default_validation_size=50000, source="https://image-net.org/download.php (ILSVRC 2012)",
        )  # fmt: skip

    def _folder(self, root: Path | None, split: str) -> _FolderImages:
        root = _require_root(self.name, root)
        path = root / split
        how = (
            f"Expected the ImageNet folder layout {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG "
            "(the val images sorted into one folder per class, e.g. with the valprep.sh script of the "
            "PyTorch ImageNet example); download the ILSVRC 2012 archives from https://image-net.org/."
        )
        if not path.is_dir():
            raise DatasetNotFoundError(f"ImageNet {split} folder not found: {path}. {how}", path)
        from torchvision.datasets import ImageFolder

        try:
            folder = ImageFolder(str(path))
        except FileNotFoundError as err:  # no class folders, or no images in them
            message = f"ImageNet {split} folder {path} holds no images: {err}. {how}"
            raise DatasetNotFoundError(message, path) from err
        return _FolderImages(folder)

    def train_pool(self, root: Path | None, *, download: bool) -> _FolderImages:
        return self._folder(root, "train")

    def test_pool(self, root: Path | None, *, download: bool) -> _FolderImages:
        pool = self._folder(root, "val")
        train_dir = None if root is None else root / "train"
        if train_dir is not None and train_dir.is_dir():
            train_classes = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())
            if train_classes != pool.folder.classes:
                raise DatasetFormatError(
                    f"ImageNet: {root}/train and {root}/val must hold the same class folders so label "
                    f"indices agree; train has {len(train_classes)}, val has {len(pool.folder.classes)} "
                    f"(first difference: {sorted(set(train_classes) ^ set(pool.folder.classes))[:3]})"
                )
        return pool

    def train_transform(self, augment: AugmentConfig) -> Callable[[Any], Any]:
        return imagenet_train_transform(augment)

    def eval_transform(self, augment: AugmentConfig) -> Callable[[Any], Any]:
        return imagenet_eval_transform(augment)


DATASETS.register("digits", _Digits())
DATASETS.register("cifar10", _Cifar10())
DATASETS.register("cifar10.1", _Cifar101())
DATASETS.register("imagenet", _ImageNet())


def list_datasets() -> list[str]:
    """The registered data set names, for tests and spec validation to iterate over."""
    return DATASETS.names()


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; raises ``UnknownNameError`` listing the known names."""
    return DATASETS.get(name).info()


def extra_test_sets(name: str) -> tuple[str, ...]:
    """Other data sets that score models trained on ``name`` (``cifar10`` -> ``cifar10.1``)."""
    return DATASETS.get(name).info().extra_test_sets


# ---------------------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True, eq=False)
class DataSplits:
    """The splits of one experiment (see :func:`load_splits`).

    ``purpose="search"``: ``train`` trains weights, ``valid`` trains architecture weights, ``test`` is None.
    ``purpose="train"``: ``train``, ``valid`` (held out of the training data; None when
    ``validation_size=0``) and ``test`` (the official test set).
    """

    info: DatasetInfo
    purpose: Purpose
    train: Dataset
    valid: Dataset | None
    test: Dataset | None


def load_splits(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    purpose: Purpose = "train",
    validation_size: int | None = None,
    train_portion: float = 0.5,
    augment: AugmentConfig | None = None,
    split_seed: int = 0,
    download: bool = False,
) -> DataSplits:
    """Loads data set ``name`` and splits it for a search or a (re)training run.

    Args:
        name: a registered data set (:func:`list_datasets`).
        root: folder with the files (see :func:`default_root`); ignored by ``digits``.
        purpose: ``"search"``: first ``train_portion`` of the training set by index for the weights, the
            rest for the architecture, both with the training transform (spec 8). ``"train"``: training
            data minus a held-out validation split, plus the official test set (spec 9).
        validation_size: ``"train"`` only: images held out of the training data for model selection;
            None takes the data set's default (CIFAR-10 5000, digits 359, ImageNet 50000), 0 gives no
            validation split. Ignored by ``"search"``, whose split is ``train_portion``.
        train_portion: ``"search"`` only: the weights' share of the training set.
        augment: training augmentation (default: the data set's standard one, no AutoAugment or Cutout).
        split_seed: seeds the validation hold-out permutation. Kept apart from the run seed on purpose,
            so that runs with different seeds select on the same images.
        download: fetch missing files where the data set supports it (CIFAR-10, CIFAR-10.1).

    Returns:
        A :class:`DataSplits`.

    Raises:
        UnknownNameError: unknown ``name``.
        DatasetNotFoundError: the files are missing (the message names the path and how to get them).
        ValueError: a test-only data set, or a bad ``purpose``, ``validation_size`` or ``train_portion``.
    """
    source = DATASETS.get(name)
    info = source.info()
    if purpose not in ("search", "train"):
        raise ValueError(f"purpose: must be 'search' or 'train', got {purpose!r}")
    if info.test_only:
        raise ValueError(
            f"dataset {name!r} is test-only: it has no training split; score models on it with "
            f"load_test_set({name!r}) or as an extra test set"
        )
    augment = augment if augment is not None else AugmentConfig()
    root_path = _resolve_root(source, root)
    pool = source.train_pool(root_path, download=download)
    n = len(pool)
    train_transform = source.train_transform(augment)

    if purpose == "search":
        # Reference (cnn/train_search.py): split = floor(portion * n); weights [0, split), alphas [split, n).
        if not 0.0 < train_portion < 1.0:
            raise ValueError(f"train_portion: must lie in (0, 1), got {train_portion}")
        split = int(math.floor(train_portion * n))
        if not 0 < split < n:
            raise ValueError(f"train_portion={train_portion} of {n} training images leaves an empty split")
        return DataSplits(
            info=info, purpose="search",
            train=SplitDataset(pool, np.arange(split), train_transform),
            valid=SplitDataset(pool, np.arange(split, n), train_transform),
            test=None,
        )  # fmt: skip

    size = info.default_validation_size if validation_size is None else validation_size
    size = size or 0
    if not 0 <= size < n:
        raise ValueError(
            f"validation_size: must lie in [0, {n}) for {name!r} ({n} training images), got {size}"
        )
    eval_transform = source.eval_transform(augment)
    if size:
        perm = np.random.RandomState(split_seed).permutation(n)
        valid_idx, train_idx = np.sort(perm[:size]), np.sort(perm[size:])
        valid: SplitDataset | None = SplitDataset(pool, valid_idx, eval_transform)
    else:
        train_idx, valid = np.arange(n), None
    test_pool = source.test_pool(root_path, download=download)
    return DataSplits(
        info=info, purpose="train",
        train=SplitDataset(pool, train_idx, train_transform),
        valid=valid,
        test=SplitDataset(test_pool, np.arange(len(test_pool)), eval_transform),
    )  # fmt: skip


def load_test_set(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    augment: AugmentConfig | None = None,
    download: bool = False,
) -> SplitDataset:
    """The official test set of ``name`` with the evaluation transform (CIFAR-10.1: all 2000 images).

    ``augment`` matters only for ``imagenet_std_bug``, which must match the training run.
    """
    source = DATASETS.get(name)
    pool = source.test_pool(_resolve_root(source, root), download=download)
    return SplitDataset(pool, np.arange(len(pool)), source.eval_transform(augment or AugmentConfig()))


# ---------------------------------------------------------------------------------------------------------
# Loaders


class SeededAugmentation(Dataset):
    """Runs each ``dataset[i]`` with torch's CPU RNG seeded from ``(key, i)``, then restores the RNG.

    Random transforms (crop, flip, AutoAugment, Cutout) then depend only on the key (seed, epoch) and the
    index: not on the loader workers, not on the order, not on what ran before, and the caller's RNG
    stream (dropout, drop path) is left untouched.
    """

    def __init__(self, dataset: Dataset, key: int) -> None:
        self.dataset = dataset
        self.key = key

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        state = torch.get_rng_state()
        # default_generator only: torch.manual_seed would also reseed (and not restore) CUDA generators.
        torch.default_generator.manual_seed(seed_for(self.key, int(index)))
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)

    def __getattr__(self, name: str) -> Any:
        # Expose the wrapped split's attributes (labels, indices...) on the loader's dataset.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _check_loader_args(batch_size: int, num_workers: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers: must be >= 0, got {num_workers}")


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed_augmentation: bool = True,
) -> DataLoader:
    """A ``DataLoader`` whose order and augmentation derive only from ``(seed, epoch)``.

    Build one per epoch and iterate it once: the shuffle uses a ``torch.Generator`` seeded from
    ``seed_for("order", seed, epoch)`` and (with ``seed_augmentation``) every sample's augmentation is seeded
    from ``(seed, epoch, index)``, so a run resumed at the start of epoch ``e`` sees exactly the images the
    uninterrupted run saw. It is a plain ``DataLoader`` (``shuffle`` through a ``RandomSampler``), so
    distributed wrappers that rebuild it with a ``DistributedSampler`` keep working.

    Args:
        dataset: e.g. a split of :func:`load_splits`.
        batch_size: images per batch.
        shuffle: random order (training) or index order (evaluation).
        seed: the run seed.
        epoch: the epoch (or any other integer key, e.g. a pass number).
        drop_last: drop the last incomplete batch.
        num_workers: loader processes; results do not depend on it.
        pin_memory: pin batches for faster host-to-GPU copies.
        seed_augmentation: wrap ``dataset`` in :class:`SeededAugmentation` (about 10 microseconds per image).

    Returns:
        The loader; ``loader.dataset`` is the (wrapped) dataset.
    """
    _check_loader_args(batch_size, num_workers)
    data = SeededAugmentation(dataset, seed_for("augment", seed, epoch)) if seed_augmentation else dataset
    return DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
        pin_memory=pin_memory, generator=_generator(seed_for("order", seed, epoch)),
    )  # fmt: skip


class ArchBatchStream:
    """An endless stream of architecture batches for one search epoch (spec 8; spec 11, gotcha 7).

    The reference drew ``next(iter(valid_queue))`` every step, respawning its 12 workers each time. This
    keeps one iterator open and, when a pass over the split ends, starts the next pass with an order drawn
    from ``(seed, epoch, pass)``: the same distribution (uniform random batches), without the rebuilds.

    Resuming: build a new stream at the start of each epoch from ``(seed, epoch)``; that alone is exact for a
    resume at an epoch boundary. For a mid-epoch resume, save :meth:`state_dict` and restore it with
    :meth:`load_state_dict`: the stream then continues with exactly the batches it would have produced.

    Args:
        dataset: the architecture split (``DataSplits.valid`` of a search).
        batch_size: images per batch (the reference uses the training batch size).
        seed: the run seed.
        epoch: the search epoch.
        drop_last: drop each pass's last incomplete batch, so every batch has ``batch_size`` images.
        num_workers, pin_memory: as for :func:`make_loader`.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        drop_last: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        _check_loader_args(batch_size, num_workers)
        n = len(dataset)  # type: ignore[arg-type]
        per_pass = n // batch_size if drop_last else math.ceil(n / batch_size)
        if per_pass == 0:
            raise ValueError(
                f"batch_size: the architecture split has {n} images, fewer than batch_size={batch_size} "
                "with drop_last=True, so a pass would yield no batch"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.batches_per_pass = per_pass
        self.pass_index = 0
        self.batches_consumed = 0  # within the current pass
        self._iterator: Iterator[Any] | None = None

    def _pass_batches(self, pass_index: int) -> list[list[int]]:
        n = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=_generator(self._key(pass_index))).tolist()
        bs = self.batch_size
        return [order[i : i + bs] for i in range(0, self.batches_per_pass * bs, bs)]

    def _key(self, pass_index: int) -> int:
        return seed_for("arch", self.seed, self.epoch, pass_index)

    def _open(self) -> Iterator[Any]:
        key = self._key(self.pass_index)
        batches = self._pass_batches(self.pass_index)[self.batches_consumed :]
        loader = DataLoader(
            SeededAugmentation(self.dataset, key), batch_sampler=batches, num_workers=self.num_workers,
            pin_memory=self.pin_memory, generator=_generator(key),
        )  # fmt: skip
        return iter(loader)

    def __iter__(self) -> ArchBatchStream:
        return self

    def __next__(self) -> Any:
        if self.batches_consumed >= self.batches_per_pass:
            self.pass_index, self.batches_consumed, self._iterator = self.pass_index + 1, 0, None
        if self._iterator is None:
            self._iterator = self._open()
        batch = next(self._iterator)
        self.batches_consumed += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: ``{"seed", "epoch", "pass_index", "batches_consumed"}``."""
        return {"seed": self.seed, "epoch": self.epoch, "pass_index": self.pass_index,
                "batches_consumed": self.batches_consumed}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continues from a :meth:`state_dict` of a stream over the same split, seed and epoch.

        Raises:
            ValueError: the state belongs to another seed or epoch, or its position is out of range.
        """
        if (state["seed"], state["epoch"]) != (self.seed, self.epoch):
            raise ValueError(
                f"arch stream state is for seed={state['seed']}, epoch={state['epoch']}; this stream has "
                f"seed={self.seed}, epoch={self.epoch}"
            )
        if state["pass_index"] < 0 or not 0 <= state["batches_consumed"] <= self.batches_per_pass:
            raise ValueError(
                f"arch stream state out of range ({self.batches_per_pass} batches per pass): {state}"
            )
        self.pass_index = int(state["pass_index"])
        self.batches_consumed = int(state["batches_consumed"])
        self._iterator = None


def cycle_batches(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> ArchBatchStream:
    """The architecture batch stream of one search epoch; see :class:`ArchBatchStream`.

    Example:
        ``arch = cycle_batches(splits.valid, batch_size=64, seed=cfg.seed, epoch=epoch)`` at the start of
        each epoch, then ``x_val, y_val = next(arch)`` before every weight step.
    """
    return ArchBatchStream(dataset, batch_size=batch_size, seed=seed, epoch=epoch, drop_last=drop_last,
                           num_workers=num_workers, pin_memory=pin_memory)  # fmt: skip


def load_data(data: Any, *, purpose: Purpose) -> DataSplits:
    """The splits a training config's ``data`` section (a ``trainers.config.DataConfig``) asks for."""
    return load_splits(
        data.dataset,
        root=data.root,
        purpose=purpose,
        validation_size=data.validation_size,
        train_portion=data.train_portion,
        augment=AugmentConfig.from_data_config(data),
        download=data.download,
    )

"""The registered data sets: what each is (:class:`DatasetInfo`), where its files live, how they are read in
their real on-disk formats, and their transforms (``digits``, ``cifar10``, ``cifar10.1``, ``imagenet``).

Only ``digits`` (scikit-learn's bundled handwritten digits) works without files; the others read the files
from ``root`` (default ``$NAS_DATA_ROOT/<name>``, or ``~/.cache/nas-service/data/<name>``) and raise
:class:`DatasetNotFoundError` naming the exact path and how to get the files when they are missing.
Splits and loaders over them are :mod:`trainers.data`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from search_spaces.registry import Registry

from .config import DataConfig
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    cifar_eval_transform,
    cifar_train_transform,
    digits_eval_transform,
    digits_train_transform,
    imagenet_eval_transform,
    imagenet_train_transform,
)

__all__ = [
    "DATASETS",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSource",
    "SplitDataset",
    "data_root",
    "default_root",
    "extra_test_sets",
    "get_dataset_info",
    "list_datasets",
    "read_cifar10_batches",
    "read_cifar101",
    "resolve_root",
]


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

    def train_transform(self, augment: DataConfig) -> Callable[[Any], Any]:
        raise ValueError(f"dataset {self.name!r} is test-only: it has no training transform")

    def eval_transform(self, augment: DataConfig) -> Callable[[Any], Any]:
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


def resolve_root(source: DatasetSource, root: str | os.PathLike[str] | None) -> Path | None:
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

    def train_transform(self, augment: DataConfig) -> Callable[[Any], Any]:
        info = self.info()
        return digits_train_transform(augment, info.mean, info.std)

    def eval_transform(self, augment: DataConfig) -> Callable[[Any], Any]:
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

    def train_transform(self, augment: DataConfig) -> Callable[[Any], Any]:
        return cifar_train_transform(augment)

    def eval_transform(self, augment: DataConfig) -> Callable[[Any], Any]:
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

    def eval_transform(self, augment: DataConfig) -> Callable[[Any], Any]:
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

    def train_transform(self, augment: DataConfig) -> Callable[[Any], Any]:
        return imagenet_train_transform(augment)

    def eval_transform(self, augment: DataConfig) -> Callable[[Any], Any]:
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

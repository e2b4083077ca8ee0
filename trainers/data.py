"""Splits of the registered data sets, and loaders whose order and augmentation derive only from (seed, epoch).

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

The data sets themselves (registry, formats, readers) are :mod:`trainers.datasets`; their names are
re-exported here.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .config import DataConfig

from .datasets import (  # noqa: F401  (re-exported: most callers read data sets through this module)
    DATASETS,
    DatasetFormatError,
    DatasetInfo,
    DatasetNotFoundError,
    DatasetSource,
    SplitDataset,
    data_root,
    default_root,
    extra_test_sets,
    get_dataset_info,
    list_datasets,
    read_cifar10_batches,
    read_cifar101,
    resolve_root,
)

__all__ = [
    "load_data",
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
    augment: DataConfig | None = None,
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
    augment = augment if augment is not None else DataConfig()
    root_path = resolve_root(source, root)
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
    augment: DataConfig | None = None,
    download: bool = False,
) -> SplitDataset:
    """The official test set of ``name`` with the evaluation transform (CIFAR-10.1: all 2000 images).

    ``augment`` matters only for ``imagenet_std_bug``, which must match the training run.
    """
    source = DATASETS.get(name)
    pool = source.test_pool(resolve_root(source, root), download=download)
    return SplitDataset(pool, np.arange(len(pool)), source.eval_transform(augment or DataConfig()))


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
        augment=data,
        download=data.download,
    )

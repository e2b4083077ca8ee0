"""Data sets, splits, transforms and seeded loaders (trainers/data.py, trainers/transforms.py).

File-based data sets are tested on tiny fakes written in the real on-disk formats: CIFAR-10 python pickle
batches, CIFAR-10.1 ``.npy`` files, and an ImageFolder tree of small PNGs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from search_spaces.registry import UnknownNameError
from trainers import data as D
from trainers import datasets
from trainers.config import DataConfig, config_to_dict
from trainers.identity import without_result_neutral_fields
from trainers.data import (
    ArchBatchStream,
    DatasetFormatError,
    DatasetNotFoundError,
    cycle_batches,
    extra_test_sets,
    get_dataset_info,
    list_datasets,
    load_splits,
    load_test_set,
    make_loader,
    read_cifar10_batches,
)
from trainers.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    Cutout,
    RandomShift,
    cifar_train_transform,
    imagenet_eval_transform,
    imagenet_train_transform,
)

PER_BATCH = 10  # images per fake CIFAR-10 batch file: 50 training and 10 test images

# ---------------------------------------------------------------------------------------------------------
# Fakes in the real formats


def _write_fake_cifar10(root: Path, *, bytes_keys: bool = True) -> None:
    """Writes ``root/cifar-10-batches-py`` like the real archive: dicts with 'data' uint8 (N, 3072) whose rows
    hold the R, G and B planes, and 'labels'. Image k (global index) has R = k, G = 100, B = 200 and label
    k % 10."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def key(name: str) -> str | bytes:
        return name.encode() if bytes_keys else name

    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        index = np.arange(b * PER_BATCH, (b + 1) * PER_BATCH)
        planes = [np.repeat(index[:, None], 1024, axis=1), np.full((PER_BATCH, 1024), 100),
                  np.full((PER_BATCH, 1024), 200)]  # fmt: skip
        entry = {
            key("batch_label"): key(f"fake {name}"),
            key("labels"): [int(k % 10) for k in index],
            key("data"): np.concatenate(planes, axis=1).astype(np.uint8),
            key("filenames"): [key(f"img_{k}.png") for k in index],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({key("label_names"): [key(f"class{i}") for i in range(10)], key("num_vis"): 3072}, f)


def _write_fake_cifar101(root: Path, n: int = 6) -> None:
    root.mkdir(parents=True, exist_ok=True)
    images = np.random.RandomState(1).randint(0, 256, size=(n, 32, 32, 3)).astype(np.uint8)
    np.save(root / "cifar10.1_v6_data.npy", images)
    np.save(root / "cifar10.1_v6_labels.npy", (np.arange(n) % 10).astype(np.int64))


def _write_image_folder(root: Path, classes: dict[str, tuple[str, ...]]) -> None:
    from PIL import Image

    rng = np.random.RandomState(2)
    for split, wnids in classes.items():
        for wnid in wnids:
            (root / split / wnid).mkdir(parents=True)
            for i in range(2):
                pixels = rng.randint(0, 256, size=(20, 24, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.png")


class _IndexDataset(Dataset):
    """Items are (a draw from torch's RNG, index): shows both the order and the augmentation seeding."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.rand(3), index


# ---------------------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_the_four_datasets():
    assert set(list_datasets()) == {"digits", "cifar10", "cifar10.1", "imagenet"}
    with pytest.raises(UnknownNameError, match="known datasets: .*cifar10"):
        get_dataset_info("mnist")


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in D.list_datasets()])
def test_dataset_info_is_consistent(name):
    info = get_dataset_info(name)
    assert info.name == name
    assert len(info.mean) == len(info.std) == info.in_channels
    assert all(s > 0 for s in info.std)
    assert info.num_classes >= 10 and info.input_size >= 8
    assert info.test_only == (name == "cifar10.1")
    hash(info)  # frozen: usable as a key


def test_extra_test_sets():
    assert extra_test_sets("cifar10") == ("cifar10.1",)
    assert extra_test_sets("digits") == ()


# ---------------------------------------------------------------------------------------------------------
# digits


def test_digits_splits_are_disjoint_fixed_and_shaped():
    a = load_splits("digits", purpose="train")
    b = load_splits("digits", purpose="train")
    assert (len(a.train), len(a.valid), len(a.test)) == (1079, 359, 359)
    # train and valid are disjoint views of one pool; test is a separate pool, disjoint from it by index.
    assert a.train.pool is a.valid.pool
    assert not set(a.train.indices) & set(a.valid.indices)
    assert set(a.train.indices) | set(a.valid.indices) == set(range(len(a.train.pool)))
    _, _, pool_idx, test_idx = datasets._digits()
    assert not set(pool_idx) & set(test_idx) and len(pool_idx) + len(test_idx) == 1797
    np.testing.assert_array_equal(a.valid.indices, b.valid.indices)
    for split in (a.train, a.valid, a.test):
        x, y = split[0]
        assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
        assert set(split.labels.tolist()) == set(range(10))
    assert a.info.num_classes == 10 and a.info.in_channels == 1


def test_digits_validation_seed_and_size():
    other = load_splits("digits", purpose="train", split_seed=1)
    base = load_splits("digits", purpose="train")
    assert not np.array_equal(other.valid.indices, base.valid.indices)
    np.testing.assert_array_equal(other.test.pool.labels, base.test.pool.labels)  # the test split never moves
    none = load_splits("digits", purpose="train", validation_size=0)
    assert none.valid is None and len(none.train) == 1438
    with pytest.raises(ValueError, match="validation_size"):
        load_splits("digits", purpose="train", validation_size=1438)


def test_digits_normalised_by_training_statistics():
    splits = load_splits("digits", purpose="train", validation_size=0)
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3


def test_digits_augmentations():
    with pytest.raises(ValueError, match="autoaugment"):
        load_splits("digits", augment=DataConfig(autoaugment=True))
    img = torch.zeros(1, 8, 8)
    img[0, 3, 3] = 1.0
    torch.manual_seed(0)
    moved = [torch.nonzero(RandomShift(1)(img)[0]).tolist() for _ in range(30)]
    assert all(len(m) == 1 and abs(m[0][0] - 3) <= 1 and abs(m[0][1] - 3) <= 1 for m in moved)
    assert len({tuple(m[0]) for m in moved}) > 1
    shifted = load_splits("digits", augment=DataConfig(random_shift=1, cutout=2))
    assert shifted.train[0][0].shape == (1, 8, 8)


def test_search_split_is_first_part_and_rest_by_index():
    splits = load_splits("digits", purpose="search")
    assert splits.test is None and splits.purpose == "search"
    np.testing.assert_array_equal(splits.train.indices, np.arange(719))
    np.testing.assert_array_equal(splits.valid.indices, np.arange(719, 1438))
    # Both halves train, so both get the training transform (spec 8).
    assert splits.train.transform is splits.valid.transform
    quarter = load_splits("digits", purpose="search", train_portion=0.25)
    assert (len(quarter.train), len(quarter.valid)) == (359, 1079)
    with pytest.raises(ValueError, match="train_portion"):
        load_splits("digits", purpose="search", train_portion=1.0)
    with pytest.raises(ValueError, match="purpose"):
        load_splits("digits", purpose="test")


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10, CIFAR-10.1, ImageNet on fake files


@pytest.mark.parametrize(
    "bytes_keys", [pytest.param(True, id="bytes-keys"), pytest.param(False, id="str-keys")]
)
def test_fake_cifar10_reads_in_the_real_layout(tmp_path, bytes_keys):
    _write_fake_cifar10(tmp_path, bytes_keys=bytes_keys)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = read_cifar10_batches(tmp_path / "cifar-10-batches-py", names)
    assert images.shape == (50, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 5, 7, 0], np.arange(50))  # R plane -> channel 0 (HWC)
    assert (images[..., 1] == 100).all() and (images[..., 2] == 200).all()
    np.testing.assert_array_equal(labels, np.arange(50) % 10)


def test_fake_cifar10_splits(tmp_path):
    _write_fake_cifar10(tmp_path)
    splits = load_splits("cifar10", root=tmp_path, purpose="train", validation_size=5)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (45, 5, PER_BATCH)
    assert not set(splits.train.indices) & set(splits.valid.indices)
    x, y = splits.test[3]
    assert x.shape == (3, 32, 32) and y == 3
    # Evaluation transform: ToTensor + Normalize, nothing random.
    expected_g = (100 / 255 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert torch.allclose(x[1], torch.full((32, 32), expected_g), atol=1e-5)
    tx, _ = splits.train[0]
    assert tx.shape == (3, 32, 32)
    search = load_splits("cifar10", root=tmp_path, purpose="search")
    np.testing.assert_array_equal(search.valid.indices, np.arange(25, 50))
    with pytest.raises(ValueError, match="validation_size"):
        load_splits("cifar10", root=tmp_path)  # the default 5000 does not fit 50 images


def test_fake_cifar10_bad_format(tmp_path):
    _write_fake_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(DatasetFormatError, match="test_batch.*3072"):
        load_test_set("cifar10", root=tmp_path)


def test_fake_cifar101_loads(tmp_path):
    _write_fake_cifar101(tmp_path / "c101")
    test = load_test_set("cifar10.1", root=tmp_path / "c101")
    assert len(test) == 6
    x, y = test[4]
    assert x.shape == (3, 32, 32) and y == 4
    with pytest.raises(ValueError, match="test-only"):
        load_splits("cifar10.1", root=tmp_path / "c101")
    np.save(tmp_path / "c101" / "cifar10.1_v6_data.npy", np.zeros((6, 32, 32), np.uint8))
    with pytest.raises(DatasetFormatError, match="32, 32, 3"):
        load_test_set("cifar10.1", root=tmp_path / "c101")


def test_fake_imagenet_folder_loads(tmp_path):
    _write_image_folder(tmp_path, {"train": ("n01", "n02"), "val": ("n01", "n02")})
    splits = load_splits("imagenet", root=tmp_path, purpose="train", validation_size=1)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (3, 1, 4)
    x, y = splits.train[0]
    assert x.shape == (3, 224, 224) and y in (0, 1)
    vx, _ = splits.test[0]
    assert vx.shape == (3, 224, 224)
    np.testing.assert_array_equal(splits.test.labels, [0, 0, 1, 1])


def test_imagenet_class_folders_must_agree(tmp_path):
    _write_image_folder(tmp_path, {"train": ("n01", "n02"), "val": ("n01", "n03")})
    with pytest.raises(DatasetFormatError, match="same class folders"):
        load_splits("imagenet", root=tmp_path, validation_size=1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("cifar10", "cifar-10-batches-py", id="cifar10"),
        pytest.param("cifar10.1", "cifar10.1_v6_data.npy", id="cifar10.1"),
        pytest.param("imagenet", "train", id="imagenet"),
    ],
)
def test_missing_dataset_names_the_path(tmp_path, name, expected):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        if name == "cifar10.1":
            load_test_set(name, root=root)
        else:
            load_splits(name, root=root)
    assert isinstance(info.value, FileNotFoundError)
    assert str(root) in str(info.value) and expected in str(info.value)
    assert info.value.path is not None and str(info.value.path).startswith(str(root))
    assert pickle.loads(pickle.dumps(info.value)).path == info.value.path


def test_empty_image_folder_is_not_found(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds no images"):
        load_splits("imagenet", root=tmp_path)


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_DATA_ROOT", str(tmp_path))
    assert D.default_root("cifar10") == tmp_path / "cifar10"
    assert D.default_root("digits") is None
    _write_fake_cifar101(tmp_path / "cifar10.1")
    assert len(load_test_set("cifar10.1")) == 6


# ---------------------------------------------------------------------------------------------------------
# Transforms


def _zero_box(img: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(top, bottom, left, right, zero count) of the zeros of a (1, H, W) image."""
    ys, xs = torch.nonzero(img[0] == 0, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1, len(ys)


def test_cutout_zeroes_a_square_clipped_at_the_borders():
    length, size = 4, 8
    cut = Cutout(length, generator=torch.Generator().manual_seed(0))
    full = clipped = 0
    for _ in range(300):
        out = cut(torch.ones(1, size, size))
        top, bottom, left, right, count = _zero_box(out)
        assert count == (bottom - top) * (right - left)  # one solid rectangle
        for lo, hi in ((top, bottom), (left, right)):
            assert hi - lo <= length
            assert hi - lo == length or lo == 0 or hi == size  # smaller only where a border clips it
        if count == length * length:
            full += 1
        else:
            clipped += 1
    assert full > 0 and clipped > 0


def test_cutout_is_reproducible_from_its_generator_and_counts_holes():
    a = Cutout(3, n_holes=2, generator=torch.Generator().manual_seed(5))
    b = Cutout(3, n_holes=2, generator=torch.Generator().manual_seed(5))
    outs = [(a(torch.ones(3, 10, 10)), b(torch.ones(3, 10, 10))) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in outs)
    assert all(0 < int((x[0] == 0).sum()) <= 2 * 9 for x, _ in outs)
    assert all(torch.equal(x[0] == 0, x[2] == 0) for x, _ in outs)  # same hole in every channel
    with pytest.raises(TypeError, match="tensor"):
        Cutout(3)(np.ones((3, 10, 10)))


def test_cifar_cutout_runs_after_normalisation():
    from PIL import Image

    white = Image.fromarray(np.full((32, 32, 3), 255, np.uint8))
    transform = cifar_train_transform(DataConfig(cutout=8))
    assert isinstance(transform.transforms[-1], Cutout)
    torch.manual_seed(3)
    out = transform(white)
    # Normalised white is about +2, padding black about -2: only Cutout (after Normalize) makes exact zeros.
    zeros = out == 0
    assert 0 < int(zeros[0].sum()) <= 64 and torch.equal(zeros[0], zeros[1])


def test_autoaugment_pipelines():
    from PIL import Image
    from torchvision import transforms as T

    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (32, 32, 3)).astype(np.uint8))
    cifar = cifar_train_transform(DataConfig(autoaugment=True, cutout=16))
    kinds = [type(t) for t in cifar.transforms]
    assert kinds[:4] == [T.Pad, T.RandomCrop, T.RandomHorizontalFlip, T.AutoAugment]
    assert cifar.transforms[3].policy == T.AutoAugmentPolicy.CIFAR10
    assert cifar(img).shape == (3, 32, 32)
    imagenet = imagenet_train_transform(DataConfig(autoaugment=True, cutout=112, cutout_holes=2))
    assert imagenet.transforms[2].policy == T.AutoAugmentPolicy.IMAGENET
    assert imagenet.transforms[-1].n_holes == 2 and imagenet.transforms[-1].length == 112
    assert imagenet(img).shape == (3, 224, 224)


@pytest.mark.parametrize("bug", [pytest.param(False, id="fixed"), pytest.param(True, id="reference-bug")])
def test_imagenet_std_bug_flag(bug):
    from torchvision import transforms as T

    for transform in (imagenet_train_transform(DataConfig(imagenet_std_bug=bug)),
                      imagenet_eval_transform(DataConfig(imagenet_std_bug=bug))):  # fmt: skip
        (norm,) = [t for t in transform.transforms if isinstance(t, T.Normalize)]
        assert (tuple(norm.std) == IMAGENET_MEAN) == bug


def test_the_data_config_is_the_augmentation_config_and_checks_it():
    from trainers.config import ConfigError, config_from_dict, with_overrides
    from trainers.recipes import get_recipe

    for field, value in (("cutout", -1), ("cutout_holes", 0), ("random_shift", -1)):
        with pytest.raises(ConfigError, match=f"data.{field}: must be >= "):
            DataConfig(**{field: value})
    # random_shift is reachable from configs (and specs) now; at its default it leaves a trial's identity alone.
    shifted = with_overrides(get_recipe("digits_retrain"), {"data": {"random_shift": 1}})
    assert config_from_dict({**config_to_dict(shifted)}).data.random_shift == 1
    plain = config_to_dict(get_recipe("digits_retrain"))
    assert "random_shift" in plain["data"]
    assert "random_shift" not in without_result_neutral_fields(plain)["data"]
    assert "random_shift" in without_result_neutral_fields(config_to_dict(shifted))["data"]


# ---------------------------------------------------------------------------------------------------------
# Loaders


def _epoch(loader) -> tuple[list[int], torch.Tensor]:
    xs, idx = zip(*[(x, i) for x, i in loader])
    return torch.cat(idx).tolist(), torch.cat(xs)


def test_make_loader_order_and_augmentation_derive_from_seed_and_epoch():
    data = _IndexDataset(20)
    order_a, aug_a = _epoch(make_loader(data, batch_size=4, shuffle=True, seed=7, epoch=3))
    torch.rand(100)  # disturbing the global RNG must not matter
    state = torch.get_rng_state()
    order_b, aug_b = _epoch(make_loader(data, batch_size=4, shuffle=True, seed=7, epoch=3))
    assert torch.equal(torch.get_rng_state(), state)  # and loading must not disturb it either
    assert order_a == order_b and torch.equal(aug_a, aug_b)
    order_c, aug_c = _epoch(make_loader(data, batch_size=4, shuffle=True, seed=7, epoch=4))
    assert order_c != order_a and sorted(order_c) == list(range(20))
    assert not torch.equal(aug_a[np.argsort(order_a)], aug_c[np.argsort(order_c)])
    order_d, _ = _epoch(make_loader(data, batch_size=4, shuffle=True, seed=8, epoch=3))
    assert order_d != order_a
    order_e, _ = _epoch(make_loader(data, batch_size=4, shuffle=False, seed=7, epoch=3))
    assert order_e == list(range(20))
    assert len(make_loader(data, batch_size=6, shuffle=True, seed=0, epoch=0, drop_last=True)) == 3


def test_make_loader_is_independent_of_workers():
    splits = load_splits("digits", purpose="search", augment=DataConfig(cutout=3, random_shift=1))
    subset = D.SplitDataset(splits.train.pool, splits.train.indices[:40], splits.train.transform)
    x0, y0 = zip(*make_loader(subset, batch_size=8, shuffle=True, seed=1, epoch=2))
    x2, y2 = zip(*make_loader(subset, batch_size=8, shuffle=True, seed=1, epoch=2, num_workers=2))
    assert torch.equal(torch.cat(y0), torch.cat(y2)) and torch.equal(torch.cat(x0), torch.cat(x2))


def test_arch_stream_is_reproducible_and_cycles():
    data = _IndexDataset(10)
    a = cycle_batches(data, batch_size=3, seed=1, epoch=0)
    b = cycle_batches(data, batch_size=3, seed=1, epoch=0)
    batches_a = [next(a) for _ in range(7)]  # 3 batches per pass (drop_last): passes 0, 1 and part of 2
    batches_b = [next(b) for _ in range(7)]
    assert all(
        torch.equal(xa, xb) and torch.equal(ia, ib) for (xa, ia), (xb, ib) in zip(batches_a, batches_b)
    )
    assert all(len(i) == 3 for _, i in batches_a)
    first_pass = torch.cat([i for _, i in batches_a[:3]]).tolist()
    assert len(set(first_pass)) == 9  # no repeats within a pass
    assert a.state_dict() == {"seed": 1, "epoch": 0, "pass_index": 2, "batches_consumed": 1}
    other_epoch = [next(cycle_batches(data, batch_size=3, seed=1, epoch=1))[1].tolist() for _ in range(1)]
    assert other_epoch[0] != batches_a[0][1].tolist()


def test_arch_stream_resumes_from_its_state():
    data = _IndexDataset(10)
    original = ArchBatchStream(data, batch_size=4, seed=3, epoch=5, drop_last=False)
    for _ in range(4):
        next(original)
    state = original.state_dict()
    expected = [next(original) for _ in range(5)]
    resumed = ArchBatchStream(data, batch_size=4, seed=3, epoch=5, drop_last=False)
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(5)]
    assert all(torch.equal(xe, xg) and torch.equal(ie, ig) for (xe, ie), (xg, ig) in zip(expected, got))
    with pytest.raises(ValueError, match="epoch=6"):
        ArchBatchStream(data, batch_size=4, seed=3, epoch=6).load_state_dict(state)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        ArchBatchStream(data, batch_size=11, seed=0, epoch=0)

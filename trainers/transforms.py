"""Image transforms of the sharpDARTS recipes (spec section 4.4), plus Cutout and the digits shift.

Pipelines:

- CIFAR-10 training: ``RandomCrop(32, padding=4)`` + flip, or with AutoAugment ``Pad(4, fill=128)`` ->
  ``RandomCrop(32)`` -> flip -> ``AutoAugment(CIFAR10, fill=128)``; then ToTensor -> Normalize -> Cutout.
- ImageNet training: ``RandomResizedCrop(224)`` -> flip -> optional ``AutoAugment(IMAGENET)`` -> ToTensor ->
  Normalize -> Cutout (2 holes of 112 in the paper's recipe); evaluation: Resize 256 -> CenterCrop 224.
- Evaluation (CIFAR): ToTensor -> Normalize only.
- Digits (tensors already in [0, 1]): optional random shift -> Normalize -> optional Cutout. The digits path
  never imports torchvision (importing it costs seconds and the embedded default needs none of it).

All randomness comes from torch's global RNG (or an explicit ``torch.Generator`` for Cutout), never from
numpy's or Python's, so :func:`trainers.data.make_loader` can seed every sample's augmentation from
(seed, epoch, index) and a run resumed at an epoch boundary sees exactly the same images.

The reference ports AutoAugment from DeVries' ``CIFAR10Policy``/``ImageNetPolicy``; torchvision's
``AutoAugment`` implements the same published sub-policies (Cubuk et al. 2019), so we use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .config import DataConfig

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Cutout",
    "RandomShift",
    "TensorNormalize",
    "Compose",
    "cifar_train_transform",
    "cifar_eval_transform",
    "imagenet_train_transform",
    "imagenet_eval_transform",
    "imagenet_normalization",
    "digits_train_transform",
    "digits_eval_transform",
]

# Reference constants (cnn/utils.py). CIFAR std is the per-pixel std of the training set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Cutout:
    """Zeroes ``n_holes`` squares of side ``length`` in a (C, H, W) tensor (DeVries & Taylor 2017).

    Each hole's centre is uniform over all pixels and the square is clipped at the borders, so holes near an
    edge are smaller. Apply it after normalisation (as the reference does): zero is then the data set mean.
    The square spans ``[c - length // 2, c - length // 2 + length)`` so odd lengths give a full square too;
    the reference's ``[c - length // 2, c + length // 2)`` loses a row and column for odd lengths and is the
    same for the even lengths the paper uses.

    Args:
        length: side of each square in pixels.
        n_holes: squares per image (they may overlap).
        generator: RNG for the centres; ``None`` uses torch's global RNG (seeded per sample by
            :func:`trainers.data.make_loader`).
    """

    def __init__(self, length: int, n_holes: int = 1, *, generator: torch.Generator | None = None) -> None:
        if length < 1:
            raise ValueError(f"Cutout length must be >= 1, got {length}")
        if n_holes < 1:
            raise ValueError(f"Cutout n_holes must be >= 1, got {n_holes}")
        self.length = int(length)
        self.n_holes = int(n_holes)
        self.generator = generator

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, torch.Tensor) or img.dim() != 3:
            # Reference bug 11: `isinstance(img, np.array)` is not a type check; we accept only (C, H, W).
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else ""
            raise TypeError(
                f"Cutout expects a (C, H, W) tensor after ToTensor/Normalize, got {type(img).__name__}{shape}"
            )
        h, w = img.shape[-2:]
        mask = torch.ones((h, w), dtype=img.dtype)
        centres_y = torch.randint(0, h, (self.n_holes,), generator=self.generator).tolist()
        centres_x = torch.randint(0, w, (self.n_holes,), generator=self.generator).tolist()
        for cy, cx in zip(centres_y, centres_x):
            y1, x1 = cy - self.length // 2, cx - self.length // 2
            mask[max(y1, 0) : min(y1 + self.length, h), max(x1, 0) : min(x1 + self.length, w)] = 0
        return img * mask.to(img.device)  # (C, H, W) * (H, W) broadcasts over channels

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={self.length}, n_holes={self.n_holes})"


class RandomShift:
    """Translates a (C, H, W) tensor by a uniform integer offset in ``[-max_shift, max_shift]`` per axis.

    Pixels shifted in are zero, the background of the raw digits images (apply before normalisation).
    """

    def __init__(self, max_shift: int) -> None:
        if max_shift < 0:
            raise ValueError(f"RandomShift max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        s = self.max_shift
        if s == 0:
            return img
        h, w = img.shape[-2:]
        dy, dx = (torch.randint(-s, s + 1, (2,)) + s).tolist()  # offsets into the padded image
        padded = torch.nn.functional.pad(img, (s, s, s, s))
        return padded[..., dy : dy + h, dx : dx + w].clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_shift={self.max_shift})"


class TensorNormalize:
    """``(x - mean) / std`` per channel on a (C, H, W) tensor, without importing torchvision."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if any(s <= 0 for s in std):
            raise ValueError(f"normalisation std must be > 0 in every channel, got {tuple(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return (img - self.mean) / self.std

    def __repr__(self) -> str:
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        return f"{type(self).__name__}(mean={mean}, std={std})"


class Compose:
    """Applies callables in order (torchvision's ``Compose`` without the torchvision import)."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}([{inner}\n])"


def _cutout(augment: DataConfig) -> list[Callable[[Any], Any]]:
    return [Cutout(augment.cutout, augment.cutout_holes)] if augment.cutout > 0 else []


def cifar_train_transform(augment: DataConfig = DataConfig()) -> Callable[[Any], torch.Tensor]:
    """The CIFAR-10 training pipeline for PIL images (spec 4.4): crop + flip (+ AutoAugment) + Cutout."""
    from torchvision import transforms as T

    if augment.random_shift:
        raise ValueError(f"augment.random_shift: digits only; CIFAR-10 crops with padding 4 instead, "
                         f"got random_shift={augment.random_shift}")  # fmt: skip
    if augment.autoaugment:
        # Pad with mid-grey, as the reference does, so the crop and AutoAugment's geometric ops fill alike.
        steps: list[Any] = [
            T.Pad(4, fill=128),
            T.RandomCrop(32),
            T.RandomHorizontalFlip(),
            T.AutoAugment(T.AutoAugmentPolicy.CIFAR10, fill=[128, 128, 128]),
        ]
    else:
        steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD), *_cutout(augment)]
    return T.Compose(steps)


def cifar_eval_transform() -> Callable[[Any], torch.Tensor]:
    """CIFAR-10 / CIFAR-10.1 evaluation: ToTensor + Normalize only."""
    from torchvision import transforms as T

    return T.Compose([T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def imagenet_normalization(
    augment: DataConfig = DataConfig(),
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for ImageNet; with ``imagenet_std_bug`` the std is the mean (reference bug, spec 4.4)."""
    return IMAGENET_MEAN, (IMAGENET_MEAN if augment.imagenet_std_bug else IMAGENET_STD)


def imagenet_train_transform(augment: DataConfig = DataConfig()) -> Callable[[Any], torch.Tensor]:
    """ImageNet training: RandomResizedCrop(224) + flip (+ AutoAugment) + Normalize (+ Cutout).

    The reference normalises and cuts out on the GPU in its ``data_prefetcher``; doing it per image here
    gives the same distribution (each image gets its own holes).
    """
    from torchvision import transforms as T

    if augment.random_shift:
        raise ValueError(f"augment.random_shift: digits only, got random_shift={augment.random_shift}")
    steps: list[Any] = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
    if augment.autoaugment:
        steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    mean, std = imagenet_normalization(augment)
    steps += [T.ToTensor(), T.Normalize(mean, std), *_cutout(augment)]
    return T.Compose(steps)


def imagenet_eval_transform(augment: DataConfig = DataConfig()) -> Callable[[Any], torch.Tensor]:
    """ImageNet evaluation: Resize(256) + CenterCrop(224) + Normalize (honours ``imagenet_std_bug``)."""
    from torchvision import transforms as T

    mean, std = imagenet_normalization(augment)
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])


def digits_train_transform(
    augment: DataConfig, mean: Sequence[float], std: Sequence[float]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Digits training on (1, 8, 8) tensors in [0, 1]: optional shift, Normalize, optional Cutout."""
    if augment.autoaugment:
        raise ValueError(
            "augment.autoaugment: there is no AutoAugment policy for digits (CIFAR-10 and ImageNet only), "
            "got autoaugment=True"
        )
    steps: list[Callable[[Any], Any]] = [RandomShift(augment.random_shift)] if augment.random_shift else []
    steps += [TensorNormalize(mean, std), *_cutout(augment)]
    return Compose(steps)


def digits_eval_transform(
    mean: Sequence[float], std: Sequence[float]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Digits evaluation: Normalize only."""
    return Compose([TensorNormalize(mean, std)])

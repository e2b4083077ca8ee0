"""The named recipes: the paper's settings (spec sections 7.3, 8, 9) and small digits presets for CPUs.

A recipe is a typed training config (:mod:`trainers.config`); derive variants with
:func:`trainers.config.with_overrides`. Specs name them in ``recipe:``.
"""

from __future__ import annotations

import dataclasses

from search_spaces.registry import Registry

from .config import (
    ArchOptimConfig,
    CellSearchConfig,
    DataConfig,
    HyperCuboidSearchConfig,
    OptimConfig,
    RetrainConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = ["RECIPES", "get_recipe", "list_recipes"]


RECIPES: Registry[TrainConfig] = Registry("recipe")

_CIFAR_SEARCH_DATA = DataConfig(dataset="cifar10", batch_size=64, train_portion=0.5)

RECIPES.register(
    "darts_search_60",  # the paper's headline searches: 60 epochs, DARTS cosine 0.025 -> 0.001, batch 32
    CellSearchConfig(
        epochs=60, seed=2, space="sharp_sep_conv_darts",
        data=dataclasses.replace(_CIFAR_SEARCH_DATA, batch_size=32),
        schedule=ScheduleConfig(kind="cosine", max_lr=0.025, min_lr=0.001, warmup_epochs=0),
    ),
)  # fmt: skip
RECIPES.register(
    "sharp_search_120",  # README / Max-W / Sharper searches: 120 epochs, CPA p=2 w=5, cutout + AutoAugment
    CellSearchConfig(
        epochs=120, seed=22, space="sharp_darts",
        data=dataclasses.replace(_CIFAR_SEARCH_DATA, batch_size=48, cutout=16, autoaugment=True),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.025, min_lr=1e-4, power=2, warmup_epochs=5),
    ),
)  # fmt: skip
RECIPES.register(
    "hypercuboid_search_120",  # spec 7.3
    HyperCuboidSearchConfig(
        epochs=120, seed=10, channels=(32, 64, 128, 256), layers=4,
        data=dataclasses.replace(_CIFAR_SEARCH_DATA, batch_size=48, cutout=16, autoaugment=True),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.025, min_lr=1e-4, power=2, warmup_epochs=5),
    ),
)  # fmt: skip
RECIPES.register(
    "cifar10_retrain",  # spec 9: 2000 epochs, C=36, 20 cells, CPA 0.025 -> 1e-8, cutout 16, AutoAugment
    RetrainConfig(
        genotype="SHARPSEPCONV_DARTS", epochs=2000, seed=0, network="cifar", init_channels=36, layers=20,
        mid_channels=32, auxiliary=True, drop_path_prob=0.2,
        data=DataConfig(dataset="cifar10", batch_size=64, cutout=16, autoaugment=True, validation_size=5000),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.025, min_lr=1e-8, power=2, warmup_epochs=5),
    ),
)  # fmt: skip
RECIPES.register(
    "imagenet_retrain",  # spec 9: 300 epochs, C=48, 14 cells, CPA p=10 w=10, wd 1e-4, no clipping, 2x112 cutout
    RetrainConfig(
        genotype="SHARPER_MAX_W", epochs=300, seed=0, network="imagenet", init_channels=48, layers=14,
        mid_channels=96, auxiliary=True, drop_path_prob=0.0,
        data=DataConfig(dataset="imagenet", batch_size=448, cutout=112, cutout_holes=2, autoaugment=True,
                        validation_size=50000),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.05 * 448 / 256, min_lr=0.00075, power=10, warmup_epochs=10),
        optim=OptimConfig(momentum=0.9, weight_decay=1e-4, grad_clip=None),
    ),
)  # fmt: skip
RECIPES.register(
    "hypercuboid_retrain",  # spec 7.5: linear path network, batch 512, lr 0.1
    RetrainConfig(
        path="MULTI_CHANNEL_HANDMADE_PATH", epochs=2000, seed=0, auxiliary=False, drop_path_prob=0.0,
        data=DataConfig(dataset="cifar10", batch_size=512, cutout=16, autoaugment=True, validation_size=5000),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.1, min_lr=1e-8, power=2, warmup_epochs=5),
    ),
)  # fmt: skip

# Digits presets: the same code paths, sized to finish in a minute or two on a 2-core CPU.
_DIGITS = DataConfig(dataset="digits", batch_size=32, eval_batch_size=512)
RECIPES.register(
    "digits_search",
    CellSearchConfig(
        epochs=6, seed=0, space="sharp_darts", init_channels=8, layers=3, steps=2, multiplier=2,
        stem_multiplier=2, data=_DIGITS,
        schedule=ScheduleConfig(kind="cpa", max_lr=0.05, min_lr=1e-3, power=2, warmup_epochs=1),
        # About 17 architecture steps per epoch here against 390 per epoch for 50 epochs in the paper: at
        # the paper's 3e-4 (or the 3e-3 used before) the weights end at 0.999 of the uniform entropy and the
        # genotype is noise. 0.3 brings the normal cell to 0.70-0.79 within 3-6 epochs at no cost in accuracy
        # (measured, docs/training.md "Digits presets").
        arch=ArchOptimConfig(lr=0.3),
    ),
)  # fmt: skip
RECIPES.register(
    "digits_hypercuboid_search",
    HyperCuboidSearchConfig(
        epochs=6, seed=0, channels=(8, 16), layers=2, head_channels=64, data=_DIGITS,
        schedule=ScheduleConfig(kind="cpa", max_lr=0.05, min_lr=1e-3, power=2, warmup_epochs=1),
        arch=ArchOptimConfig(lr=0.3),  # as digits_search, measured: path entropy 0.76-0.80 of max at 6 epochs
    ),
)  # fmt: skip
RECIPES.register(
    "digits_retrain",
    RetrainConfig(
        genotype="DARTS_V2", epochs=8, seed=0, network="cifar", init_channels=8, layers=3, mid_channels=8,
        auxiliary=True, drop_path_prob=0.1, data=dataclasses.replace(_DIGITS, validation_size=None),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.05, min_lr=1e-4, power=2, warmup_epochs=1),
    ),
)  # fmt: skip


def get_recipe(name: str) -> TrainConfig:
    """A named preset; derive variants with :func:`with_overrides`."""
    return RECIPES.get(name)


def list_recipes() -> list[str]:
    return RECIPES.names()

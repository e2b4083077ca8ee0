"""What spec validation needs to know about each registered data set, without torch and without its files:
the image shape, the class count and whether it has a training split.

:mod:`trainers.datasets` registers the readers and transforms under the same names; its ``DatasetInfo``
also carries the normalisation, which for ``digits`` is computed from the data. ``tests/test_cli_light.py``
checks that both sides list the same data sets, in the same order, with the same shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces.registry import Registry

__all__ = ["DATASET_SHAPES", "DatasetShape"]


@dataclass(frozen=True)
class DatasetShape:
    """A data set's images and classes (the fields of ``trainers.datasets.DatasetInfo`` of the same names)."""

    name: str
    in_channels: int
    input_size: int
    num_classes: int
    test_only: bool = False  # no training split (CIFAR-10.1)


DATASET_SHAPES: Registry[DatasetShape] = Registry("dataset")
for _shape in (
    DatasetShape("digits", in_channels=1, input_size=8, num_classes=10),
    DatasetShape("cifar10", in_channels=3, input_size=32, num_classes=10),
    DatasetShape("cifar10.1", in_channels=3, input_size=32, num_classes=10, test_only=True),
    DatasetShape("imagenet", in_channels=3, input_size=224, num_classes=1000),
):
    DATASET_SHAPES.register(_shape.name, _shape)

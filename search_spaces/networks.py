"""Final (retraining) networks: a discrete genotype stacked into a CIFAR or ImageNet network (spec section 4).

The structure follows the sharpDARTS reference ``cnn/model.py`` (ahundt/sharpDARTS, itself DARTS's
``cnn/model.py``, quark0/darts@f276dd3), with these deliberate differences:

* ``drop_path`` is out of place. The reference scales and masks the op output in place, which is only safe
  because Identity branches are skipped (spec 11, item 12); out of place it is safe for every branch.
* Image channels, image size and class count are parameters, so the same networks run on the embedded
  digits data (1x8x8, 10 classes) as on CIFAR-10 and ImageNet.
* The auxiliary heads adapt to the feature-map size they receive; see :class:`AuxiliaryHead`.
* The ImageNet head pools with ``AdaptiveAvgPool2d(1)``; on the 7x7 map of a 224x224 input this is exactly
  the reference's ``AvgPool2d(7)``, and it also works at other input sizes.
* Normal cells of the ImageNet network use ``normal_concat`` (the reference passes ``reduce_concat``, which
  is the same ``[2, 3, 4, 5]`` for every published genotype).

Parameter counts (spec 10.4) exclude the auxiliary head, as do DARTS's ``count_parameters_in_MB`` and the
paper's tables: :func:`count_parameters`. Multiply-adds of one eval-mode forward: :func:`count_multiply_adds`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

from .genotypes import Edge, Genotype, default_op_set, resolve_genotype
from .ops import FactorizedReduce, Identity, ReLUConvBN, build_op
from .hypercuboid import build_hypercuboid_op
from .names import MADDS_CONVENTIONS, MaddsConvention
from .ops import SharpSepConv
from .paths import HyperCuboidError, HyperCuboidPath, PathError, resolve_path
from .registry import Registry

__all__ = [
    "LinearPathNetwork",
    "build_path_network",
    "drop_path",
    "batch_share",
    "Cell",
    "AuxiliaryHead",
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "NetworkCIFAR",
    "NetworkImageNet",
    "NetworkKind",
    "NETWORK_KINDS",
    "get_network_kind",
    "list_network_kinds",
    "build_network",
    "count_parameters",
    "count_multiply_adds",
    "MADDS_CONVENTIONS",
    "MaddsConvention",
    "NetworkConfigError",
]


class NetworkConfigError(ValueError):
    """A network argument breaks a rule; the message names the rule and the value."""


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NetworkConfigError(f"{owner}: {name} must be an integer >= 1, got {name}={value!r}")


# ---------------------------------------------------------------------------------------------------------
# Drop path


# A DDP worker holds one slice of each global batch. Drawing the global batch's masks and keeping the slice's
# rows gives each image the mask the single-process run gives it and keeps every worker's RNG stream in step
# (each draws the same amount). Set per batch by trainers.distributed's sharded loader.
_batch_share: tuple[int, int] | None = None  # (rows of the global batch, first row of this worker's slice)


@contextmanager
def batch_share(total: int, start: int) -> Iterator[None]:
    """While active, :func:`drop_path` treats its input as rows ``start ..`` of a batch of ``total`` rows."""
    global _batch_share
    previous, _batch_share = _batch_share, (int(total), int(start))
    try:
        yield
    finally:
        _batch_share = previous


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zeroes whole samples of ``x`` with probability ``drop_prob``, scaling the rest by ``1 / (1 - p)``.

    The mask is one Bernoulli(1 - p) draw per sample, shape ``(N, 1, 1, 1)``, so a dropped sample loses the
    whole branch (FractalNet's drop path as used by NASNet and DARTS). Out of place: ``x`` is not modified.
    The caller decides when to apply it (training mode only, never on Identity branches).

    Args:
        x: ``(N, C, H, W)`` branch output.
        drop_prob: probability of dropping a sample's branch, in ``[0, 1)``.

    Returns:
        ``x`` itself when ``drop_prob == 0``, else a new tensor of the same shape.

    Raises:
        ValueError: if ``drop_prob`` is outside ``[0, 1)``.
    """
    if not 0.0 <= drop_prob < 1.0:
        raise NetworkConfigError(f"drop_path: drop_prob must be in [0, 1), got drop_prob={drop_prob}")
    if drop_prob == 0.0:
        return x
    keep = 1.0 - drop_prob
    rows = x.shape[0]
    total, start = _batch_share or (rows, 0)
    if start + rows > total:
        raise NetworkConfigError(f"drop_path: a slice of {rows} rows from row {start} does not fit the global "
                                 f"batch of {total} rows set by batch_share")  # fmt: skip
    mask = torch.empty((total, 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)[start : start + rows]
    return x * (mask / keep)


# ---------------------------------------------------------------------------------------------------------
# Discrete cell


class Cell(nn.Module):
    """A discrete cell: ``len(edges) // 2`` nodes, each the sum of two ops on earlier states (spec 4.1).

    States 0 and 1 are the two previous cells' outputs after preprocessing to ``C`` channels; node ``i`` is
    state ``i + 2``. The output concatenates the states in ``concat`` (``len(concat) * C`` channels).

    Args:
        genotype_edges: ``(op_name, input_index)`` pairs; edges ``2i`` and ``2i+1`` feed node ``i``.
        concat: the states concatenated into the output.
        C_prev_prev, C_prev: channels of the cell two back and of the previous cell.
        C: channels of every node.
        reduction: a reduction cell; ops reading states 0 and 1 have stride 2.
        reduction_prev: the previous cell halved the resolution, so state 0 (one resolution higher) goes
            through a :class:`FactorizedReduce` instead of a 1x1 ReLUConvBN.
        op_set: the op set implementing the op names (``darts`` or ``sharp``).
        C_mid: middle width of the choke ops (``--mid_channels``); other ops ignore it.
    """

    def __init__(
        self,
        genotype_edges: Sequence[Edge],
        concat: Sequence[int],
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        *,
        op_set: str,
        C_mid: int | None = None,
    ) -> None:
        super().__init__()
        edges = tuple(genotype_edges)
        if not edges or len(edges) % 2:
            raise NetworkConfigError(f"Cell: needs two edges per node, got {len(edges)} edges")
        self.reduction = reduction
        self.steps = len(edges) // 2
        self.concat = tuple(concat)
        self.multiplier = len(self.concat)
        self.indices = tuple(idx for _, idx in edges)
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, stride=2, affine=True)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=True)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=True)
        self.ops = nn.ModuleList()
        for name, index in edges:
            stride = 2 if reduction and index < 2 else 1
            self.ops.append(build_op(op_set, name, C, C, stride, True, C_mid))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        use_drop = self.training and drop_prob > 0.0
        for i in range(self.steps):
            node = None
            for e in (2 * i, 2 * i + 1):
                op = self.ops[e]
                h = op(states[self.indices[e]])
                # Identity branches are never dropped: the skip path must stay to carry the signal.
                if use_drop and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                node = h if node is None else node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


# ---------------------------------------------------------------------------------------------------------
# Auxiliary heads


class AuxiliaryHead(nn.Module):
    """DARTS's auxiliary classifier: ReLU -> AvgPool(5, stride) -> 1x1 conv 128 -> BN -> ReLU ->
    2x2 conv 768 -> BN -> ReLU -> Linear(768, num_classes).

    The reference heads assume one feature-map size (8x8 for CIFAR, 7x7 for ImageNet at 224), where the
    pool yields 2x2 and the 2x2 conv 1x1. This head adapts instead of failing on other sizes: when the
    reference pool would not give exactly 2x2 (e.g. 2x2 maps of the 1x8x8 digits data, or maps larger than
    the reference's), it average-pools adaptively to 2x2. On the reference sizes it is the reference.

    The ImageNet head keeps the BN after the 768-channel conv, as the sharpDARTS reference does; DARTS's
    ImageNet head comments that BN out. The head is excluded from parameter and multiply-add counts.

    Args:
        C_in: channels of the feature map it reads.
        num_classes: output classes.
        pool_stride: stride of the 5x5 average pool (3 for CIFAR, 2 for ImageNet).
    """

    def __init__(self, C_in: int, num_classes: int, *, pool_stride: int) -> None:
        super().__init__()
        self.pool_stride = pool_stride
        self.relu = nn.ReLU(inplace=False)
        self.features = nn.Sequential(
            nn.Conv2d(C_in, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def _pooled_size(self, size: int) -> int:
        return (size - 5) // self.pool_stride + 1 if size >= 5 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        h, w = x.shape[-2:]
        if self._pooled_size(h) == 2 and self._pooled_size(w) == 2:
            # count_include_pad is irrelevant without padding; kept False as in the reference.
            x = F.avg_pool2d(x, 5, stride=self.pool_stride, padding=0, count_include_pad=False)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.features(x)  # (N, 768, 1, 1)
        return self.classifier(x.flatten(1))


class AuxiliaryHeadCIFAR(AuxiliaryHead):
    """The CIFAR auxiliary head (reads the 8x8 map after the second reduction at 32x32 input)."""

    def __init__(self, C_in: int, num_classes: int) -> None:
        super().__init__(C_in, num_classes, pool_stride=3)


class AuxiliaryHeadImageNet(AuxiliaryHead):
    """The ImageNet auxiliary head (reads the 7x7 map after the second reduction at 224x224 input)."""

    def __init__(self, C_in: int, num_classes: int) -> None:
        super().__init__(C_in, num_classes, pool_stride=2)


# ---------------------------------------------------------------------------------------------------------
# Networks


def _reduction_cells(layers: int) -> tuple[int, int]:
    # DARTS: the cells at 1/3 and 2/3 of the depth halve the resolution and double the width.
    return layers // 3, 2 * layers // 3


class _FinalNetwork(nn.Module):
    """Shared cell stack, head and forward of the CIFAR and ImageNet networks."""

    # Set by the subclasses' constructors; the trainer updates drop_path_prob per epoch.
    drop_path_prob: float
    in_channels: int
    input_size: int
    auxiliary_head: AuxiliaryHead | None
    global_pooling: nn.Module
    classifier: nn.Linear

    def _build_cells(
        self,
        genotype: Genotype,
        *,
        C: int,
        C_prev_prev: int,
        C_prev: int,
        layers: int,
        reduction_prev: bool,
        op_set: str,
        C_mid: int | None,
    ) -> tuple[int, int]:
        """Adds ``self.cells``; returns (channels of the last cell, channels at the auxiliary point)."""
        self.cells = nn.ModuleList()
        self.aux_index = 2 * layers // 3
        reductions = _reduction_cells(layers)
        C_curr = C
        C_aux = C_prev
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            if reduction:
                edges, concat = genotype.reduce, genotype.reduce_concat
            else:
                edges, concat = genotype.normal, genotype.normal_concat
            cell = Cell(
                edges, concat, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                op_set=op_set, C_mid=C_mid,
            )  # fmt: skip
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_index:
                C_aux = C_prev
        return C_prev, C_aux

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns ``(logits, logits_aux)``; ``logits_aux`` is None outside training or without the head."""
        logits_aux = None
        s0, s1 = self._stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(in_channels, input_size, input_size)``, the image shape the network was configured for."""
        return (self.in_channels, self.input_size, self.input_size)


class NetworkCIFAR(_FinalNetwork):
    """The CIFAR network (spec 4.2): 3x3 stem, ``layers`` cells, global average pool, linear classifier.

    Args:
        genotype: the cells.
        C: channels of the first cells (36 in the paper); doubled at each reduction.
        num_classes: output classes.
        layers: number of cells (20); cells ``layers//3`` and ``2*layers//3`` are reduction cells.
        auxiliary: add the auxiliary head after cell ``2*layers//3`` (used in training only).
        op_set: the op set implementing the genotype's op names.
        C_mid: choke-op middle width (32 in the paper's CIFAR runs).
        in_channels, input_size: the images (3x32x32 for CIFAR-10, 1x8x8 for the digits data). Any size
            works; ``input_size`` only documents the intended input (:attr:`input_shape`).
        stem_multiplier: stem width is ``stem_multiplier * C``.
        drop_path_prob: drop-path probability; the trainer updates the attribute per epoch.
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        C: int = 36,
        num_classes: int = 10,
        layers: int = 20,
        auxiliary: bool = False,
        op_set: str = "sharp",
        C_mid: int | None = 32,
        in_channels: int = 3,
        input_size: int = 32,
        stem_multiplier: int = 3,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive("NetworkCIFAR", C=C, num_classes=num_classes, layers=layers, in_channels=in_channels,
                        input_size=input_size, stem_multiplier=stem_multiplier)  # fmt: skip
        genotype.validate(op_set)
        self.genotype, self.op_set, self.C_mid = genotype, op_set, C_mid
        self.in_channels, self.input_size = in_channels, input_size
        self.drop_path_prob = drop_path_prob
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        C_last, C_aux = self._build_cells(
            genotype, C=C, C_prev_prev=C_stem, C_prev=C_stem, layers=layers, reduction_prev=False,
            op_set=op_set, C_mid=C_mid,
        )  # fmt: skip
        self.auxiliary_head: AuxiliaryHead | None = None
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_last, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s


class NetworkImageNet(_FinalNetwork):
    """The ImageNet network (spec 4.3): two stride-2 stems (8x down), ``layers`` cells, pool, classifier.

    ``stem0`` (two stride-2 convs, in -> C/2 -> C) feeds the first cell's ``s0``; ``stem1`` (one more
    stride-2 conv) feeds its ``s1``, so the first cell preprocesses ``s0`` with a FactorizedReduce
    (``reduction_prev=True``). The head is ``AdaptiveAvgPool2d(1)``, equal to the reference's
    ``AvgPool2d(7)`` on the 7x7 map of a 224x224 input.

    Args:
        genotype, op_set, auxiliary, drop_path_prob: as :class:`NetworkCIFAR`.
        C: channels of the first cells (48 in the paper); must be even (the stem halves it).
        num_classes: output classes (1000).
        layers: number of cells (14); reductions at ``layers//3`` and ``2*layers//3``.
        C_mid: choke-op middle width (96 or 32 in the paper's ImageNet runs).
        in_channels, input_size: the images (3x224x224).
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        C: int = 48,
        num_classes: int = 1000,
        layers: int = 14,
        auxiliary: bool = False,
        op_set: str = "sharp",
        C_mid: int | None = 96,
        in_channels: int = 3,
        input_size: int = 224,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive("NetworkImageNet", C=C, num_classes=num_classes, layers=layers,
                        in_channels=in_channels, input_size=input_size)  # fmt: skip
        if C % 2:
            raise NetworkConfigError(
                f"NetworkImageNet: C must be even (stem0 widens to C // 2 first), got C={C}"
            )
        genotype.validate(op_set)
        self.genotype, self.op_set, self.C_mid = genotype, op_set, C_mid
        self.in_channels, self.input_size = in_channels, input_size
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=False),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_last, C_aux = self._build_cells(
            genotype, C=C, C_prev_prev=C, C_prev=C, layers=layers, reduction_prev=True,
            op_set=op_set, C_mid=C_mid,
        )  # fmt: skip
        self.auxiliary_head: AuxiliaryHead | None = None
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_last, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


# ---------------------------------------------------------------------------------------------------------
# Kinds and the builder


@dataclass(frozen=True)
class NetworkKind:
    """A final-network family and the paper's defaults for it."""

    name: str
    network: type[_FinalNetwork]
    C: int
    layers: int
    C_mid: int
    num_classes: int
    in_channels: int
    input_size: int
    description: str


NETWORK_KINDS: Registry[NetworkKind] = Registry("network kind")
NETWORK_KINDS.register(
    "cifar", NetworkKind("cifar", NetworkCIFAR, 36, 20, 32, 10, 3, 32, "CIFAR-10: 3x3 stem, 20 cells, C=36")
)
NETWORK_KINDS.register(
    "imagenet",
    NetworkKind(
        "imagenet", NetworkImageNet, 48, 14, 96, 1000, 3, 224, "ImageNet mobile: 8x stem, 14 cells, C=48"
    ),
)


def get_network_kind(name: str) -> NetworkKind:
    """Returns the network kind ``name`` (``cifar`` or ``imagenet``) with its paper defaults."""
    return NETWORK_KINDS.get(name)


def list_network_kinds() -> list[str]:
    return NETWORK_KINDS.names()


def build_network(
    genotype: Genotype | str | dict[str, Any],
    *,
    kind: Literal["cifar", "imagenet"] | str = "cifar",
    op_set: str | None = None,
    C: int | None = None,
    layers: int | None = None,
    num_classes: int | None = None,
    auxiliary: bool = False,
    C_mid: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    drop_path_prob: float = 0.0,
) -> NetworkCIFAR | NetworkImageNet:
    """Builds the final network for a genotype; arguments left None take the paper's value for ``kind``.

    Example::

        net = build_network("SHARPSEPCONV_DARTS", kind="cifar", C=8, layers=5, in_channels=1, input_size=8)
        logits, logits_aux = net(torch.randn(2, 1, 8, 8))

    Args:
        genotype: a :class:`Genotype`, a published name, JSON text, a ``.json`` path or a mapping.
        kind: ``cifar`` (spec 4.2) or ``imagenet`` (spec 4.3).
        op_set: the op set implementing the op names. Default: the published genotype's own op set for a
            published name, else ``sharp`` (the reference's default ``--ops OPS``).
        C, layers, num_classes, C_mid, in_channels, input_size: see the network classes. Defaults:
            cifar 36 / 20 / 10 / 32 / 3 / 32, imagenet 48 / 14 / 1000 / 96 / 3 / 224.
        auxiliary: add the auxiliary head (training only; excluded from parameter counts).
        drop_path_prob: initial drop-path probability (the trainer updates ``net.drop_path_prob``).

    Raises:
        GenotypeError: the op set lacks some of the genotype's ops; the message names the missing ops and
            the op sets that define them all. Checked before any layer is built.
        UnknownNameError: unknown ``kind``, op set or published name (lists the known names).
        ValueError: a size argument is not a positive integer.
    """
    spec = get_network_kind(kind)
    geno = resolve_genotype(genotype)
    op_set = op_set if op_set is not None else default_op_set(genotype)
    geno.validate(op_set)
    kwargs: dict[str, Any] = dict(
        C=spec.C if C is None else C,
        num_classes=spec.num_classes if num_classes is None else num_classes,
        layers=spec.layers if layers is None else layers,
        auxiliary=auxiliary,
        op_set=op_set,
        C_mid=spec.C_mid if C_mid is None else C_mid,
        in_channels=spec.in_channels if in_channels is None else in_channels,
        input_size=spec.input_size if input_size is None else input_size,
        drop_path_prob=drop_path_prob,
    )
    return spec.network(geno, **kwargs)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# Size and cost


def _auxiliary_modules(model: nn.Module) -> set[int]:
    """ids of every module inside an auxiliary head (found by type, so wrappers like DDP are fine)."""
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, AuxiliaryHead):
            ids.update(id(m) for m in module.modules())
    return ids


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` except those of auxiliary heads (the paper's "Params")."""
    aux = _auxiliary_modules(model)
    aux_params = {id(p) for m in model.modules() if id(m) in aux for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in model.parameters() if id(p) not in aux_params)


def count_multiply_adds(
    model: nn.Module, input_shape: Sequence[int], *, convention: MaddsConvention = "conv_linear"
) -> int:
    """Multiply-adds of one eval-mode forward pass of one image (the paper's "+x" column).

    Counted through forward hooks; auxiliary heads are skipped (they only run in training anyway) and the
    model's training mode is restored afterwards.

    Conventions:

    * ``conv_linear`` (default): convolutions (``out_elements * C_in / groups * k_h * k_w``) and linear
      layers (``out_features * in_features``) only, the usual definition.
    * ``reference``: also counts BN (1 per element, 2 when affine), ReLU (1 per output element) and pooling
      layers (1 per input element), as the sharpDARTS reference's ``cnn/flops_counter.py`` (from
      sovrasov/flops-counter.pytorch) does. This reproduces the paper's multiply-add columns (spec 10.1,
      10.2); it is about 3-4 % above ``conv_linear`` for these networks.

    Args:
        model: the network.
        input_shape: ``(C, H, W)`` of one image (a leading batch dimension of 1 is also accepted).
        convention: ``conv_linear`` or ``reference``.

    Raises:
        ValueError: if ``input_shape`` is not ``(C, H, W)`` or ``(1, C, H, W)``, or the convention is unknown.
    """
    if convention not in MADDS_CONVENTIONS:
        raise NetworkConfigError(
            f"count_multiply_adds: convention must be one of {list(MADDS_CONVENTIONS)}, got {convention!r}"
        )
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise NetworkConfigError(
            f"count_multiply_adds: input_shape must be (C, H, W), got {tuple(input_shape)}"
        )
    aux = _auxiliary_modules(model)
    total = 0

    # Every hook counts one sample: the forward below runs a batch of one.
    def conv_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        conv = cast(nn.Conv2d, module)
        kh, kw = conv.kernel_size
        total += output.numel() * (conv.in_channels // conv.groups) * kh * kw

    def linear_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * cast(nn.Linear, module).in_features

    def bn_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += inputs[0].numel() * (2 if getattr(module, "affine", False) else 1)

    def output_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel()

    def input_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += inputs[0].numel()

    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    handles = []
    for module in model.modules():
        if id(module) in aux:
            continue
        hook = None
        if isinstance(module, nn.Conv2d):
            hook = conv_hook
        elif isinstance(module, nn.Linear):
            hook = linear_hook
        elif convention == "reference":
            if isinstance(module, nn.BatchNorm2d):
                hook = bn_hook
            elif isinstance(module, nn.ReLU):
                hook = output_hook
            elif isinstance(module, pools):
                hook = input_hook
        if hook is not None:
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


# ---------------------------------------------------------------------------------------------------------
# Linear path networks


class LinearPathNetwork(nn.Module):
    """The final model of a HyperCuboid path (spec 7.4): one linear chain, no cells, aux head or drop path.

    stem ``Conv3x3(in -> stem) + BN`` -> the stages' ops in order -> ``SharpSepConv(c_last -> head, 3x3)``
    -> global average pooling -> ``Linear(head, num_classes)``. ``forward`` returns the logits.

    Args:
        path: the path (validated again here).
        num_classes: output classes.
        in_channels: image channels (3 for CIFAR, 1 for digits).
    """

    def __init__(self, path: HyperCuboidPath, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise HyperCuboidError(
                f"LinearPathNetwork needs num_classes, in_channels >= 1, got {num_classes=}, {in_channels=}"
            )
        self.path = path.validate()
        if path.head_channels < 1:
            raise PathError(f"head_channels must be >= 1, got {path.head_channels}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, path.stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(path.stem_channels),
        )
        self.stages = nn.Sequential(
            *(build_hypercuboid_op(s.op, s.c_in, s.c_out, s.stride) for s in path.stages)
        )
        self.head = SharpSepConv(path.final_channels, path.head_channels, 3, 1, 1, affine=True)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(path.head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.stem(x)))
        return self.classifier(self.global_pooling(x).flatten(1))


def build_path_network(
    path: HyperCuboidPath | str | dict, *, num_classes: int = 10, in_channels: int = 3
) -> LinearPathNetwork:
    """Builds the linear network of ``path``: a path, a published name, JSON text, a .json file or a mapping.

    Example:
        >>> net = build_path_network("MULTI_CHANNEL_HANDMADE_PATH", num_classes=10, in_channels=3)
    """
    return LinearPathNetwork(resolve_path(path), num_classes=num_classes, in_channels=in_channels)

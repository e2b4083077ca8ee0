"""``nas-service genotypes``: list the published genotypes with the size and cost of their final networks.

Each genotype is built as the final network of the chosen data set (spec section 4) with the op set it was
published with (``--ops`` overrides), and reported with its parameter count (auxiliary head excluded, as
in the paper, spec 10.4) and the multiply-adds of one eval-mode forward pass of one image.

Examples::

    nas-service genotypes                                   # CIFAR-10: C=36, 20 cells, mid 32, 32x32x3
    nas-service genotypes --dataset imagenet --mid-channels 32 --no-madds
    nas-service genotypes SHARP_DARTS DARTS_V2 --ops sharp --format json
    nas-service genotypes --madds-convention reference      # the paper's counting (BN, ReLU, pools too)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Torch-free: the parser's choices and help. The networks (torch) are imported when the command runs.
from search_spaces.genotypes import GenotypeError, get_published, list_published
from search_spaces.names import MADDS_CONVENTIONS, OP_NAMES, MaddsConvention

# --dataset -> (network kind, classes). The kind carries the paper's C, cells, mid channels and input.
_DATASETS = {"cifar10": ("cifar", 10), "imagenet": ("imagenet", 1000)}


@dataclass(frozen=True)
class GenotypeRow:
    """One line of the listing. ``params``/``multiply_adds`` are None when not computed or not buildable."""

    name: str
    op_set: str
    published_op_set: str
    params: int | None
    multiply_adds: int | None
    description: str
    error: str | None = None


def register(subparsers: Any) -> None:
    """Adds the ``genotypes`` subcommand."""
    parser = subparsers.add_parser(
        "genotypes",
        help="list the published genotypes with parameters and multiply-adds of their final networks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME",
        help=f"genotypes to list (default: all published: {', '.join(list_published())})",
    )  # fmt: skip
    net = parser.add_argument_group("network")
    net.add_argument(
        "--dataset", dest="dataset", choices=sorted(_DATASETS), default="cifar10",
        help="network family and its paper defaults (cifar10: C=36, 20 cells, mid 32, 10 classes, 3x32x32; "
             "imagenet: C=48, 14 cells, mid 96, 1000 classes, 3x224x224)",
    )  # fmt: skip
    net.add_argument("--init-channels", dest="init_channels", type=int, default=None,
                     help="C of the first cells (default: the dataset's)")  # fmt: skip
    net.add_argument("--layers", dest="layers", type=int, default=None,
                     help="number of cells (default: the dataset's)")  # fmt: skip
    net.add_argument("--mid-channels", dest="mid_channels", type=int, default=None,
                     help="middle width of the choke ops (default: the dataset's)")  # fmt: skip
    net.add_argument("--ops", dest="ops", choices=OP_NAMES.names(), default=None,
                     help="op set for every genotype (default: each one's published op set)")  # fmt: skip
    out = parser.add_argument_group("output")
    out.add_argument("--format", dest="format", choices=("table", "json"), default="table",
                     help="output format")  # fmt: skip
    out.add_argument("--no-madds", dest="madds", action="store_false",
                     help="skip the multiply-add count (it runs one forward pass per network)")  # fmt: skip
    out.add_argument(
        "--madds-convention", dest="madds_convention", choices=MADDS_CONVENTIONS, default="conv_linear",
        help="conv_linear: convolutions and linear layers only; reference: also BN, ReLU and pools, as the "
             "sharpDARTS flops counter that produced the paper's numbers",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")


def collect_rows(
    names: Sequence[str],
    *,
    dataset: str,
    init_channels: int | None = None,
    layers: int | None = None,
    mid_channels: int | None = None,
    ops: str | None = None,
    madds: bool = True,
    madds_convention: MaddsConvention = "conv_linear",
) -> list[GenotypeRow]:
    """Builds every named published genotype's final network and measures it.

    A genotype the chosen op set cannot build (``--ops darts`` for a sharp genotype) gets a row with
    ``error`` naming the missing ops instead of stopping the listing.

    Raises:
        UnknownNameError: an unknown genotype name (lists the published names).
    """
    from search_spaces.networks import build_network, count_multiply_adds, count_parameters, get_network_kind

    kind_name, num_classes = _DATASETS[dataset]
    kind = get_network_kind(kind_name)
    rows = []
    for name in names or list_published():
        published = get_published(name)
        op_set = ops or published.op_set
        try:
            net = build_network(
                published.genotype, kind=kind_name, op_set=op_set, C=init_channels, layers=layers,
                num_classes=num_classes, auxiliary=False, C_mid=mid_channels,
                in_channels=kind.in_channels, input_size=kind.input_size,
            )  # fmt: skip
        except GenotypeError as err:
            rows.append(
                GenotypeRow(name, op_set, published.op_set, None, None, published.description, error=str(err))
            )
            continue
        n_madds = None
        if madds:
            n_madds = count_multiply_adds(net, net.input_shape, convention=madds_convention)
        n_params = count_parameters(net)
        rows.append(GenotypeRow(name, op_set, published.op_set, n_params, n_madds, published.description))
    return rows


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _madds_text(n: int | None) -> str:
    # Billions with three decimals from 0.1B up, as the paper's "+x B" columns; smaller nets in M or units.
    if n is None:
        return "-"
    if n >= 1e8:
        return f"{n / 1e9:.3f}B"
    return f"{n / 1e6:.2f}M" if n >= 1e4 else str(n)


def format_table(rows: Sequence[GenotypeRow]) -> str:
    """Aligned columns: name, op set, params, multiply-adds, notes (description or why it did not build)."""
    header = ("name", "op set", "params", "mult-adds", "notes")
    body = [
        (r.name, r.op_set, _millions(r.params), _madds_text(r.multiply_adds), r.error or r.description)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header) - 1)]
    right = {2, 3}  # numbers right-aligned

    def fmt(line: Sequence[str]) -> str:
        cells = [line[i].rjust(w) if i in right else line[i].ljust(w) for i, w in enumerate(widths)]
        return "  ".join([*cells, line[-1]]).rstrip()

    return "\n".join([fmt(header), *(fmt(line) for line in body)])


def run(args: argparse.Namespace) -> int:
    for flag, value in (("--init-channels", args.init_channels), ("--layers", args.layers),
                        ("--mid-channels", args.mid_channels)):  # fmt: skip
        _positive(flag, value)
    from search_spaces.networks import get_network_kind

    kind_name, num_classes = _DATASETS[args.dataset]
    kind = get_network_kind(kind_name)
    rows = collect_rows(
        args.names, dataset=args.dataset, init_channels=args.init_channels, layers=args.layers,
        mid_channels=args.mid_channels, ops=args.ops, madds=args.madds,
        madds_convention=args.madds_convention,
    )  # fmt: skip
    settings = {
        "dataset": args.dataset,
        "init_channels": args.init_channels or kind.C,
        "layers": args.layers or kind.layers,
        "mid_channels": args.mid_channels or kind.C_mid,
        "num_classes": num_classes,
        "input_shape": [kind.in_channels, kind.input_size, kind.input_size],
        "madds_convention": args.madds_convention if args.madds else None,
    }
    if args.format == "json":
        print(json.dumps([{**asdict(r), **settings} for r in rows], indent=2))
    else:
        shape = "x".join(str(s) for s in settings["input_shape"])
        print(
            f"# {args.dataset}: C={settings['init_channels']}, {settings['layers']} cells, "
            f"mid channels {settings['mid_channels']}, {num_classes} classes, input {shape}; "
            f"params exclude the auxiliary head"
            + (f"; mult-adds per image ({args.madds_convention})" if args.madds else "")
        )
        print(format_table(rows))
    return 0

"""``nas-service schedule``: print (and optionally plot) a per-epoch learning-rate schedule.

Output is one line per epoch, ``<epoch> <lr>`` with the epoch counted from 1 and the rate as ``{:.10g}``,
so it pipes into other tools and parses back to within 5e-10 relative. Messages (where a plot went) go
to stderr and never mix into that table.

Examples::

    nas-service schedule cpa --epochs 120 --max-lr 0.025 --min-lr 1e-4 --power 2 --warmup 5
    nas-service schedule cosine --epochs 60 --max-lr 0.025 --min-lr 0.001 --plot cosine.png
    nas-service schedule constant --epochs 10 --lr 0.1
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# Defaults of the CIFAR search setting (spec section 5 table, train_search.py).
_DEFAULTS = {"max_lr": 0.025, "min_lr": 1e-4, "power": 2.0, "warmup_epochs": 5}
# Which flags each kind takes; a flag given to a kind that ignores it is an error, not a silent no-op.
_FLAGS = {
    "cpa": {"max_lr": "--max-lr", "min_lr": "--min-lr", "power": "--power", "warmup_epochs": "--warmup"},
    "cosine": {"max_lr": "--max-lr", "min_lr": "--min-lr"},
    "constant": {"max_lr": "--max-lr/--lr"},
}
_FLAG_NAMES = {"max_lr": "--max-lr", "min_lr": "--min-lr", "power": "--power", "warmup_epochs": "--warmup"}


class _ScheduleArgError(ValueError):
    """A flag that does not apply to the chosen kind."""


def register(subparsers: Any) -> None:
    """Adds the ``schedule`` subcommand."""
    parser = subparsers.add_parser(
        "schedule",
        help="print or plot a per-epoch learning-rate schedule (CPA, cosine, constant)",
        description=__doc__.replace("::", ":"),
        # Defaults are written into each help text: the flags default to None (see below), which
        # ArgumentDefaultsHelpFormatter would print as "(default: None)".
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=sorted(_FLAGS), help="cpa = Cosine Power Annealing (spec section 5)")
    group = parser.add_argument_group("schedule")
    group.add_argument("--epochs", type=int, metavar="E", required=True, help="total epochs E (lines 1..E)")
    # Defaults are None so an explicitly given flag that the kind ignores can be refused.
    group.add_argument("--max-lr", "--lr", dest="max_lr", type=float, metavar="LR", default=None,
                       help="peak (cpa), initial (cosine) or only (constant) rate; "
                            f"default {_DEFAULTS['max_lr']}")  # fmt: skip
    group.add_argument("--min-lr", dest="min_lr", type=float, metavar="LR", default=None,
                       help=f"final rate; default {_DEFAULTS['min_lr']}")  # fmt: skip
    group.add_argument("--power", dest="power", type=float, metavar="P", default=None,
                       help=f"CPA exponent base p >= 1 (1 = cosine); default {_DEFAULTS['power']:g}")
    group.add_argument("--warmup", dest="warmup_epochs", type=int, metavar="W", default=None,
                       help="CPA warmup epochs W (ramp over W+1 epochs); "
                            f"default {_DEFAULTS['warmup_epochs']}")  # fmt: skip
    plot = parser.add_argument_group("plot")
    plot.add_argument("--plot", dest="plot", type=Path, metavar="FILE", default=None,
                      help="also draw the curve to this file (format from the suffix: .png, .svg, .pdf...)")
    plot.add_argument("--log-y", dest="log_y", action="store_true", help="logarithmic learning-rate axis")
    parser.set_defaults(func=run)


def schedule_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The schedule's keyword arguments from the parsed flags (defaults filled in).

    Raises:
        ValueError: a flag was given that the chosen kind does not take.
    """
    flags = _FLAGS[args.kind]
    given = {name for name in _DEFAULTS if getattr(args, name) is not None}
    ignored = sorted(given - set(flags))
    if ignored:
        names = ", ".join(_FLAG_NAMES[n] for n in ignored)
        takes = ", ".join(flags.values())
        raise _ScheduleArgError(f"{names}: not used by schedule {args.kind!r}; it takes {takes}")
    values = {name: _DEFAULTS[name] if getattr(args, name) is None else getattr(args, name) for name in flags}
    if args.kind == "constant":
        return {"lr": values["max_lr"]}
    return values


def format_schedule(values: np.ndarray) -> str:
    """``"<epoch> <lr>"`` lines, epoch from 1, rate as ``{:.10g}``."""
    return "".join(f"{epoch} {float(lr):.10g}\n" for epoch, lr in enumerate(values, start=1))


def plot_schedule(values: np.ndarray, path: Path, *, title: str, log_y: bool = False) -> Path:
    """Draws the curve and writes it atomically (temp file beside ``path``, fsync, ``os.replace``).

    Uses matplotlib's object API with the Agg canvas directly, so no global backend is switched and no
    display is needed.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
        ValueError: matplotlib does not know the file suffix.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from trainers.checkpoints import atomic_write_bytes  # imports torch, which only --plot pays for

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--plot: folder {str(path.parent)!r} does not exist")
    fmt = path.suffix.lstrip(".").lower() or "png"
    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    epochs = np.arange(1, len(values) + 1)
    ax.plot(epochs, values, linewidth=1.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if log_y:
        if np.any(np.asarray(values) <= 0):
            raise ValueError("--log-y: every learning rate must be > 0 (set --min-lr above 0)")
        ax.set_yscale("log")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)  # an unknown suffix fails here, before anything touches the disk
    atomic_write_bytes(path, buffer.getvalue())
    return path


def run(args: argparse.Namespace) -> int:
    """Prints the schedule (and writes the plot); returns the exit code."""
    from trainers.schedules import build_schedule  # numpy: imported when the command runs, not for --help

    kwargs = schedule_kwargs(args)
    values = build_schedule(args.kind, args.epochs, **kwargs)
    written = None
    if args.plot is not None:
        # Plot first: a bad --plot path or suffix then fails before any table line is printed.
        details = ", ".join(f"{k}={v:g}" for k, v in kwargs.items())
        title = f"{args.kind}: E={args.epochs}, {details}"
        written = plot_schedule(values, args.plot, title=title, log_y=args.log_y)
    sys.stdout.write(format_schedule(values))
    if written is not None:
        print(f"wrote {written}", file=sys.stderr)
    return 0

"""The ``nas-service`` command line.

Each subcommand lives in its own module under :mod:`nas_service.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (taking the parsed args, returning an
exit code).

A command module is light: at its top it imports only what its parser needs (the standard library and
torch-free lists of names such as :mod:`search_spaces.names`); what does the work (pydantic specs, pandas
results, torch, Ray) is imported inside the handler. So building every parser costs a few milliseconds,
``nas-service --help`` answers at once, and a command pays for its own imports only: ``validate``,
``plan``, ``status`` and ``schedule`` never import torch or Ray (``tests/test_cli_light.py``,
``tests/test_import_layers.py``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("experiment", "validate", "jobs", "train", "genotypes", "draw", "schedule", "examples")


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas-service",
        description="sharpDARTS-family architecture and hyperparameter search as a service on Ray.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (by default: one line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"nas_service.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, KeyError, FileNotFoundError) as err:
        # Bad input: one line that names the rule and the value; never a traceback.
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"nas-service {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the environment failed (network, disk, cluster): one line, exit 1
        if args.debug:
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"nas-service {args.command}: error: {type(err).__name__}: {first} (--debug shows the traceback)",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

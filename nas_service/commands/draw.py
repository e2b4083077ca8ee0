"""``nas-service draw``: draw a genotype's cells, or a HyperCuboid path, to an SVG or PNG file.

The file extension picks the format (``.svg`` or ``.png``). The file is written atomically: rendered to a
temp file in the same folder, then renamed over the target, so a failed render leaves nothing half-written.

Examples::

    nas-service draw SHARPSEPCONV_DARTS -o cells.svg
    nas-service draw MULTI_CHANNEL_HANDMADE_PATH -o path.png
    nas-service draw best_genotype.json -o best.svg --title "epoch 42"
    nas-service draw '{"normal": [["sep_conv_3x3", 0], ...], "reduce": [...]}' -o mine.png
"""

from __future__ import annotations

import argparse
from typing import Any

from search_spaces.genotypes import list_published
from search_spaces.paths import list_published_paths


def register(subparsers: Any) -> None:
    """Adds the ``draw`` subcommand."""
    parser = subparsers.add_parser(
        "draw",
        help="draw a genotype's normal and reduction cells, or a HyperCuboid path, to SVG or PNG",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "name_or_json",
        metavar="NAME_OR_JSON",
        help=(
            "a published genotype or path name, JSON text, or a .json file holding a genotype "
            "{normal, reduce} or a path {stem_channels, stages}. "
            f"Genotypes: {', '.join(list_published())}; paths: {', '.join(list_published_paths())}"
        ),
    )
    parser.add_argument("-o", "--output", dest="output", required=True, metavar="FILE",
                        help="output file; .svg or .png")  # fmt: skip
    parser.add_argument("--title", dest="title", default=None,
                        help="figure title (default: the published name, if one was given)")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draws ``args.name_or_json`` into ``args.output`` and prints the written path."""
    # Imported here: matplotlib and the drawing code are only needed when this command runs.
    from nas_service.cli import UserError
    from nas_service.drawing import draw

    try:
        written = draw(args.name_or_json, args.output, title=args.title)
    except FileNotFoundError:
        raise  # a missing input .json file: the CLI reports it as bad input already
    except OSError as err:  # e.g. an output folder that cannot be created or written
        raise UserError(f"cannot write {args.output!r}: {err.strerror or err}") from None
    print(written)
    return 0

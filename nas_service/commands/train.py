"""``nas-service train``, ``recipes`` and ``score``: run one training-engine job in this process (no Ray).

    nas-service recipes
    nas-service train digits_search --workdir runs/search --set weighting=max_w --set epochs=4
    nas-service train digits_retrain --workdir runs/v2 --set genotype=DARTS_V2
    nas-service score runs/v2/best.pt --dataset digits

Rerunning ``train`` with the same workdir resumes from the last finished epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["data.batch_size=16", "weighting=max_w"]`` -> nested dict; values are parsed as YAML, as specs are
    (``arch.lr=1e-3`` is a number). A field set twice is refused, not silently the last."""
    from nas_service.spec import SpecError, load_yaml
    from nas_service.spec_models import nest_dotted

    flat: dict[str, Any] = {}
    given: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set: expected FIELD=VALUE (e.g. data.batch_size=16), got {pair!r}")
        key, raw = pair.split("=", 1)
        if key in given:
            raise ValueError(f"--set: {key} is set twice ({given[key]!r} and {pair!r}); set it once")
        given[key] = pair
        try:
            flat[key] = load_yaml(raw)
        except SpecError as err:
            raise ValueError(f"--set {pair!r}: the value {err.issues[0].rule}") from None
    try:
        return nest_dotted(flat)
    except ValueError as err:
        raise ValueError(f"--set: {err}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recipes", help="list the named training recipes (paper settings and digits presets)")
    p.add_argument("--show", metavar="NAME", help="print one recipe's full configuration as YAML")
    p.set_defaults(func=_recipes)

    p = subparsers.add_parser(
        "train", help="run a cell search, DHGS or retrain recipe in this process (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("recipe", help="a recipe name (see `nas-service recipes`)")
    p.add_argument("--workdir", required=True, help="run folder: checkpoints and the summary go here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set data.batch_size=16 (repeatable)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("score", help="score a retrain checkpoint on a test set (e.g. CIFAR-10.1)")
    p.add_argument("checkpoint")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", default=None, help="data folder")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_score)


def _recipes(args: argparse.Namespace) -> int:
    # Imported in the handlers, not at the top: `nas-service --help` builds this module's parsers.
    import yaml

    from trainers.config import config_to_dict
    from trainers.recipes import get_recipe, list_recipes

    if args.show:
        print(yaml.safe_dump(config_to_dict(get_recipe(args.show)), sort_keys=False), end="")
        return 0
    for name in list_recipes():
        c = get_recipe(name)
        print(f"{name:<28}{c.kind:<20}{c.data.dataset:<10}{c.epochs:>6} epochs")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainers.checkpoints import atomic_write_text
    from trainers.config import with_overrides
    from trainers.engine import Hooks
    from trainers.recipes import get_recipe
    from trainers.run import run_config

    from nas_service.location import folder_problem

    config = with_overrides(get_recipe(args.recipe), parse_overrides(args.overrides))
    problem = folder_problem(args.workdir)  # before any training: the first checkpoint would fail an epoch in
    if problem is not None:
        raise ValueError(f"--workdir: must be a folder (or a path one can be made at): {problem}, "
                         f"got {args.workdir!r}")  # fmt: skip
    log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    summary = run_config(config, workdir=args.workdir, hooks=Hooks(log=log), device=args.device)
    summary_path = Path(args.workdir) / "summary.json"
    whole = summary.to_dict()
    atomic_write_text(summary_path, json.dumps(whole, indent=2))
    brief = {k: v for k, v in whole.items() if k not in ("history", "config", "spec")}
    print(json.dumps(brief, indent=2))
    print(f"summary written to {summary_path}", file=sys.stderr)
    return 0


def _score(args: argparse.Namespace) -> int:
    from trainers.retrain import score_checkpoint

    print(json.dumps(score_checkpoint(args.checkpoint, args.dataset, root=args.root, device=args.device), indent=2))
    return 0

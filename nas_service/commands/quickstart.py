"""``nas-service quickstart``: the README's main job, in this process.

A sharpDARTS cell search on the embedded digits data with scalar and Max-W weighting, then retraining of
each found genotype beside DARTS_V2, then a comparison table. Every run lives in its own folder under
``--workdir`` and resumes, so an interrupted quickstart continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from trainers.config import get_recipe, with_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart", help="digits: sharpDARTS search (scalar, Max-W), retrain the results beside DARTS_V2",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--search-epochs", type=int, default=None, help="default: the digits_search recipe's")
    p.add_argument("--retrain-epochs", type=int, default=None, help="default: the digits_retrain recipe's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from nas_service.commands.train import run_config

    root = Path(args.workdir)
    log = lambda line: print(line, flush=True)  # noqa: E731
    rows = []
    arms: list[tuple[str, str]] = [("DARTS_V2", json.dumps("DARTS_V2"))]
    for weighting in ("scalar", "max_w"):
        overrides: dict = {"weighting": weighting, "seed": args.seed}
        if args.search_epochs:
            overrides["epochs"] = args.search_epochs
        config = with_overrides(get_recipe("digits_search"), overrides)
        start = time.perf_counter()
        summary = run_config(config, str(root / f"search_{weighting}"), args.device, log)
        rows.append((f"search sharp_darts {weighting}", summary["best_valid_acc"], None, time.perf_counter() - start))
        arms.append((f"sharp_darts {weighting}", json.dumps(summary["best_genotype"])))
    for name, genotype in arms:
        overrides = {"genotype": json.loads(genotype) if name != "DARTS_V2" else "DARTS_V2", "seed": args.seed,
                     "op_set": "darts" if name == "DARTS_V2" else "sharp"}  # fmt: skip
        if isinstance(overrides["genotype"], dict):
            overrides["genotype"] = json.dumps(overrides["genotype"])
        if args.retrain_epochs:
            overrides["epochs"] = args.retrain_epochs
        config = with_overrides(get_recipe("digits_retrain"), overrides)
        start = time.perf_counter()
        folder = root / f"retrain_{name.replace(' ', '_')}"
        summary = run_config(config, str(folder), args.device, log)
        rows.append((f"retrain {name}", summary["best_valid_top1"], summary["test_top1_at_best"],
                     time.perf_counter() - start))  # fmt: skip

    print("\nquickstart on digits (validation-selected; test reported at the best validation epoch)")
    print(f"{'run':<32}{'valid acc':>10}{'test acc':>10}{'seconds':>9}")
    for name, valid, test, seconds in rows:
        test_text = f"{test:>10.4f}" if test is not None else f"{'-':>10}"
        print(f"{name:<32}{valid:>10.4f}{test_text}{seconds:>9.1f}")
    return 0

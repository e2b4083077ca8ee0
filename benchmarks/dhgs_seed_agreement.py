"""Do DHGS searches with different seeds choose the same path? The measurement behind docs/training.md's
seed-agreement table.

For each variant (overrides of ``digits_hypercuboid_search``) and weighting, runs ``--seeds`` searches
(``trainers.search.run_hypercuboid_search``, 1 torch thread each, ``--jobs`` at a time) and prints, per arm,
at each search's selected epoch: the normalised entropy of the path weights (1.0 = uniform), the search
validation accuracy, the share of the path's binary decisions (stem width, and per stage its width and op)
that two seeds make alike (chance: 0.50), and how many seeds chose the most common path.

    .venv/bin/python benchmarks/dhgs_seed_agreement.py                                   # the preset
    .venv/bin/python benchmarks/dhgs_seed_agreement.py --variant '{"epochs": 9, "arch": {"warmup_epochs": 3}}'
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def search(variant: dict[str, Any], weighting: str, seed: int) -> dict[str, Any]:
    import torch

    from trainers.config import with_overrides
    from trainers.recipes import get_recipe
    from trainers.search import run_hypercuboid_search

    torch.set_num_threads(1)
    overrides = {**variant, "weighting": weighting, "seed": seed}
    config = with_overrides(get_recipe("digits_hypercuboid_search"), overrides)
    with tempfile.TemporaryDirectory() as workdir:
        summary = run_hypercuboid_search(config, workdir=workdir)
    selected = summary.history[summary.best_epoch - 1]
    return {"path": summary.best_path, "entropy": selected["arch_entropy_normalized"],
            "valid_acc": summary.best_valid_acc}  # fmt: skip


def decisions(path: dict[str, Any]) -> list[Any]:
    """The path's binary choices: the stem width, and each stage's output width and op."""
    return [path["stem_channels"], *(choice for stage in path["stages"] for choice in (stage[2], stage[3]))]


def agreement(paths: list[dict[str, Any]]) -> tuple[float, int]:
    """(mean share of decisions two seeds make alike, seeds on the most common path)."""
    shares = [sum(x == y for x, y in zip(decisions(a), decisions(b))) / len(decisions(a))
              for a, b in itertools.combinations(paths, 2)]  # fmt: skip
    texts = [json.dumps(p, sort_keys=True) for p in paths]
    return sum(shares) / max(len(shares), 1), max(texts.count(t) for t in texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="JSON overrides; repeat for several")
    parser.add_argument("--weightings", nargs="+", default=["scalar", "max_w"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    variants = [json.loads(v) for v in args.variant] or [{}]

    runs = list(itertools.product(range(len(variants)), args.weightings, range(args.seeds)))
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(search, [variants[v] for v, _, _ in runs], [w for _, w, _ in runs],
                                [s for _, _, s in runs]))  # fmt: skip
    print(f"{'variant':48} {'weighting':9} {'entropy':>7} {'valid':>6} {'shared':>6} {'on one path':>11}")
    for (v, weighting), group in itertools.groupby(zip(runs, results), key=lambda item: item[0][:2]):
        arm = [result for _, result in group]
        shared, most = agreement([r["path"] for r in arm])
        entropy = sum(r["entropy"] for r in arm) / len(arm)
        accuracy = sum(r["valid_acc"] for r in arm) / len(arm)
        label = json.dumps(variants[v]) if variants[v] else "preset"
        print(f"{label:48} {weighting:9} {entropy:7.2f} {accuracy:6.3f} {shared:6.2f} "
              f"{most:>5} of {len(arm)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

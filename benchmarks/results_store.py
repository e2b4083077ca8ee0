"""The service's read commands on a sweep-sized results store against a 10-trial one, side by side in one run.

Builds two stores through the public API the way the runner writes them (one part per epoch while a trial
runs, its trial row, ``compact_trial`` when it ends, ``compact`` when the experiment completes), for a
cell-search spec of ``--trials`` trials (10 arms: 2 weightings x 5 learning rates, the rest seeds) of
``--epochs`` epochs each, and one of 10 trials. Then times ``plan``, ``status``, ``results``, ``report`` and
``report -o`` (the page with its figures) as the CLI runs them (one process each, imports included), and
prints seconds for both stores and the ratio. ``--uncompacted`` also times ``status`` on the large store
as it was before compaction existed (one part per epoch), per ended trial (one part per trial and table),
and compacted.

    .venv/bin/python benchmarks/results_store.py                       # 1000 x 120 against 10 x 120
    .venv/bin/python benchmarks/results_store.py --trials 200 --epochs 50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTINGS = ("scalar", "max_w")
LEARNING_RATES = (0.01, 0.025, 0.05, 0.1, 0.2)


def spec_text(name: str, storage: Path, trials: int, epochs: int) -> str:
    seeds = list(range(max(1, trials // (len(WEIGHTINGS) * len(LEARNING_RATES)))))
    return f"""\
name: {name}
storage: {storage}
data: {{dataset: digits}}
stages:
  - name: search
    kind: cell_search
    recipe: digits_search
    overrides: {{epochs: {epochs}}}
    sweep:
      weighting: {list(WEIGHTINGS)}
      schedule.max_lr: {list(LEARNING_RATES)}
    seeds: {seeds}
"""


def build(folder: Path, name: str, trials: int, epochs: int, *, compaction: str = "all") -> Path:
    """Writes the spec and its store (every planned trial finished); returns the spec's path.

    ``compaction``: ``none`` (one part per epoch and trial row), ``trial`` (compacted as each trial ends) or
    ``all`` (and the tables at the end, as ``run`` leaves a complete experiment)."""
    from nas_service.planner import plan
    from nas_service.results import ResultsStore
    from nas_service.spec import load_spec
    from search_spaces.genotypes import PUBLISHED_GENOTYPES
    from trainers.config import config_to_dict

    spec_path = folder / f"{name}.yaml"
    spec_path.write_text(spec_text(name, folder / "runs", trials, epochs))
    planned = plan(load_spec(spec_path)).stage("search").trials
    store = ResultsStore(folder / "runs", name)
    genotype = PUBLISHED_GENOTYPES.get("DARTS_V2").genotype.to_dict()
    for i, trial in enumerate(planned):
        for epoch in range(1, epochs + 1):
            store.write_epoch(trial.trial_id, 0, {
                "stage": "search", "seed": trial.seed, "epoch": epoch, "train_loss": 2.0 / epoch,
                "valid_acc": 0.5 + 0.4 * epoch / epochs + 0.001 * (i % 7), "arch_entropy_normal": 1 - epoch / (2 * epochs),
                "arch_entropy_reduce": 1 - epoch / (3 * epochs), "param_free_share": 0.25, "epoch_seconds": 12.0,
                "genotype": genotype,
            })  # fmt: skip
        store.write_trial(trial.trial_id, 0, {
            "stage": "search", "stage_kind": "cell_search", "status": "finished", "seed": trial.seed,
            "config": config_to_dict(trial.config), "arm": trial.arm.arm_id, "genotype": genotype, "epochs_completed": epochs,
            "best": {"valid_acc": 0.9 + 0.001 * (i % 7)}, "wall_seconds": 12.0 * epochs,
            "extra": {"arm_label": trial.arm.label, "axes_json": json.dumps(trial.axes, sort_keys=True)},
        })  # fmt: skip
        if compaction != "none":
            store.compact_trial(trial.trial_id)
    if compaction == "all":
        store.compact()
    return spec_path


def timed(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas_service.cli", *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def commands(spec: Path, experiment: Path, scratch: Path) -> dict[str, list[str]]:
    return {
        "plan": ["plan", str(spec)],
        "status": ["status", str(experiment)],
        "results": ["results", str(experiment), "--format", "csv", "-o", str(scratch / "trials.csv")],
        "report": ["report", str(experiment)],
        "report -o": ["report", str(experiment), "-o", str(scratch / "report")],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--small", type=int, default=10, help="trials of the small store")
    parser.add_argument("--uncompacted", action="store_true",
                        help="instead: status on one store per layout (per epoch, per trial, per table)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="nas-bench-store-"))
    stores = {}
    if args.uncompacted:
        spec = build(work, "bench_parts", args.trials, args.epochs, compaction="none")
        experiment = work / "runs" / "bench_parts"
        for layout in ("one part per epoch", "one part per trial and table", "one file per table"):
            parts = len(list((experiment / "results").rglob("*.parquet")))
            print(f"status, {layout} ({parts} files): {timed('status', str(experiment)):.2f} s", flush=True)
            if layout == "one part per epoch":
                from nas_service.results import ResultsStore

                store = ResultsStore(work / "runs", "bench_parts")
                for trial_id in sorted(store.trials()["trial_id"]):
                    store.compact_trial(trial_id)
            else:
                timed("compact", str(experiment))
        return 0
    for label, trials in (("small", args.small), ("large", args.trials)):
        start = time.perf_counter()
        spec = build(work, f"bench_{label}", trials, args.epochs)
        experiment = work / "runs" / f"bench_{label}"
        parts = len(list((experiment / "results").rglob("*.parquet")))
        print(f"{label}: {trials} trials x {args.epochs} epochs written in {time.perf_counter() - start:.0f} s, "
              f"{parts} Parquet files", flush=True)  # fmt: skip
        stores[label] = (spec, experiment)
    print(f"\n{'command':<40}{'small s':>10}{'large s':>10}{'large/small':>13}")
    small_commands, large_commands = commands(*stores["small"], work / "s"), commands(*stores["large"], work / "l")
    for name in small_commands:
        small, large = timed(*small_commands[name]), timed(*large_commands[name])
        print(f"{name:<40}{small:>10.2f}{large:>10.2f}{large / small:>12.2f}x", flush=True)
    print(f"\nstores under {work} (delete when done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the service costs on top of the training it runs: ``nas-service run`` on local Ray against the same
trials as plain loops of the training engine, side by side in one run.

One spec of ``--trials`` short retrains (digits, ``--epochs`` each; about 20 s of training per trial at the
defaults) is run twice:

- **service**: ``nas-service run SPEC --num-cpus C`` in a subprocess: Ray start, Tune, one trial actor per
  trial (``C`` at a time, 1 CPU each), checkpoints, Parquet rows, the report at the end;
- **plain**: the same trial configs (planned from the same spec) run by ``trainers.run.run_config`` in ``C``
  plain processes, each a loop over its share of the trials with one torch thread: the same cores and
  concurrency, nothing but the engine.

Prints both wall times and their ratio, then where the service's extra time goes, from its own records:
start-up until the first epoch row (Ray, Tune, the first trial actor, data), each trial's wall time beyond
its epochs' own seconds (actor start, checkpoint and row writes), and the rest (scheduling gaps, the report).

    .venv/bin/python benchmarks/tune_overhead.py                   # 4 trials of 20 epochs, 2 at a time
    .venv/bin/python benchmarks/tune_overhead.py --trials 6 --epochs 3  # short trials: start-up dominates
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spec_text(name: str, storage: Path, trials: int, epochs: int) -> str:
    seeds = ", ".join(str(s) for s in range(trials))
    return f"""\
name: {name}
storage: {storage}
data: {{dataset: digits}}
resources: {{cpu: 1, gpu: 0}}
retries: 0
stages:
  - name: retrain
    kind: retrain
    recipe: digits_retrain
    genotypes: [DARTS_V2]
    overrides: {{epochs: {epochs}}}
    seeds: [{seeds}]
"""


def _plain_worker(configs: list, workdir: str) -> None:
    """One plain process: a loop over its configs, one torch thread, no Ray, no results store."""
    import torch

    from trainers.run import run_config

    torch.set_num_threads(1)
    for i, config in enumerate(configs):
        run_config(config, workdir=Path(workdir) / str(i), device="cpu")


def run_plain(spec_path: Path, workdir: Path, processes: int) -> float:
    from nas_service.planner import plan
    from nas_service.spec import load_spec

    configs = [t.config for t in plan(load_spec(spec_path)).stages[0].trials]
    shares = [configs[i::processes] for i in range(processes)]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a Ray worker is
    started = time.perf_counter()
    workers = [context.Process(target=_plain_worker, args=(share, str(workdir / f"p{i}")))
               for i, share in enumerate(shares) if share]  # fmt: skip
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise SystemExit(f"a plain worker failed with exit code {w.exitcode}")
    return time.perf_counter() - started


def run_service(spec_path: Path, cpus: int, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nas_service.cli", "run", str(spec_path), "--num-cpus", str(cpus)],
                          cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"nas-service run failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall


def where_it_went(storage: Path, name: str, started_at: float, wall: float) -> dict[str, float]:
    """The service's own records split into training, per-trial overhead, start-up and the rest."""
    from nas_service.results import ResultsStore

    store = ResultsStore(str(storage), name)
    epochs, trials = store.epochs(), store.trials()
    first_row = epochs["written_at"].min().timestamp() - started_at
    first_epoch = float(epochs.sort_values("written_at")["epoch_seconds"].iloc[0])
    training = float(epochs["epoch_seconds"].sum())
    per_trial = float(trials["wall_seconds"].sum()) - training
    return {"training (sum over trials)": training, "start-up until the first epoch began": first_row - first_epoch,
            "per trial beyond its epochs (sum)": per_trial, "wall": wall}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20, help="per trial (about 1 s each on one core)")
    parser.add_argument("--cpus", type=int, default=2, help="trials at a time (1 CPU each) = plain processes")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="nas-bench-overhead-"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(work / "ray")}
    env.pop("RAY_ADDRESS", None)
    spec_path = work / "spec.yaml"
    spec_path.write_text(spec_text("overhead", work / "runs", args.trials, args.epochs))

    plain = run_plain(spec_path, work / "plain", args.cpus)
    started_at = time.time()
    service = run_service(spec_path, args.cpus, env)
    parts = where_it_went(work / "runs", "overhead", started_at, service)

    print(f"{args.trials} retrains of DARTS_V2 on digits, {args.epochs} epochs each, {args.cpus} at a time")
    print(f"{'':36} {'wall s':>8}")
    print(f"{'plain engine loops (' + str(args.cpus) + ' processes)':36} {plain:8.1f}")
    print(f"{'nas-service run on local Ray':36} {service:8.1f}")
    print(f"ratio service / plain: {service / plain:.2f}x")
    print("\nwhere the service's time goes (its own records):")
    for label, seconds in parts.items():
        if label != "wall":
            print(f"  {label:42} {seconds:8.1f} s")
    print(json.dumps({"plain_s": plain, "service_s": service, "ratio": service / plain, **parts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

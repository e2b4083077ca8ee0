"""Single-process retraining against DDP on Ray Train, same config and global batch, side by side in one run.

Both train ``digits_retrain`` (sized by the flags) for the same epochs. Prints, for each: wall seconds of
the whole call (DDP includes Ray Train's start-up: workers, process group, checkpoints through storage),
training seconds (sum of the epochs' own times) and training images per second, then the DDP / single
ratios. The single process gets as many torch threads as DDP has workers x threads, so both use the same
cores; a second single process with one worker's threads gives DDP's scaling (throughput of N workers over 1). Ray starts locally (bound to 127.0.0.1, its own temp folder) before timing starts.

    .venv/bin/python benchmarks/ddp_retrain.py                     # 2 workers, 3 epochs, C=16, 8 cells
    .venv/bin/python benchmarks/ddp_retrain.py --epochs 5 --init-channels 24 --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--init-channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per epoch (default: the whole epoch)")
    parser.add_argument("--no-sync-batchnorm", action="store_true",
                        help="per-worker batch norm statistics (saves two all-reduces per batch norm layer)")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: loopback only
    import torch

    from nas_service.ray_runtime import shutdown_ray, start_ray
    from nas_service.ray_runtime.train import ddp_trial_resources, run_ddp_retrain
    from trainers.config import with_overrides
    from trainers.engine import Hooks
    from trainers.recipes import get_recipe
    from trainers.retrain import run_retrain

    config = with_overrides(get_recipe("digits_retrain"), {
        "epochs": args.epochs, "init_channels": args.init_channels, "layers": args.layers,
        "data": {"batch_size": args.batch_size}, "max_steps_per_epoch": args.max_steps,
    })  # fmt: skip
    cores = args.workers * args.threads_per_worker
    work = Path(tempfile.mkdtemp(prefix="nas-bench-ddp-"))

    torch.set_num_threads(args.threads_per_worker)  # one worker's share: what DDP's scaling is measured against
    started = time.perf_counter()
    one_worker = run_retrain(config, workdir=work / "one", device="cpu", hooks=Hooks())
    one_worker_wall = time.perf_counter() - started

    torch.set_num_threads(cores)
    started = time.perf_counter()
    single = run_retrain(config, workdir=work / "single", device="cpu", hooks=Hooks())
    single_wall = time.perf_counter() - started

    start_ray(num_cpus=cores, dashboard=True)
    try:
        _, per_worker = ddp_trial_resources(args.workers, {"CPU": args.threads_per_worker})
        started = time.perf_counter()
        ddp = run_ddp_retrain(config, workdir=work / "ddp", workers=args.workers, run_name="bench",
                              storage_path=str(work / "storage"), resources_per_worker=per_worker, retries=0,
                              threads=args.threads_per_worker, sync_batchnorm=not args.no_sync_batchnorm)  # fmt: skip
        ddp_wall = time.perf_counter() - started
    finally:
        shutdown_ray()

    def train_seconds(summary: dict) -> float:
        return sum(m["epoch_seconds"] for m in summary.history)

    images = sum(m["images_per_second"] * m["epoch_seconds"] for m in single.history)
    rows = [
        (f"single process, {args.threads_per_worker} threads", one_worker_wall, train_seconds(one_worker),
         one_worker.history[-1]),
        (f"single process, {cores} threads", single_wall, train_seconds(single), single.history[-1]),
        (f"DDP, {args.workers} workers x {args.threads_per_worker} threads"
         + (", local BN" if args.no_sync_batchnorm else ""), ddp_wall, train_seconds(ddp),
         ddp.history[-1]),
    ]  # fmt: skip
    print(f"digits_retrain C={args.init_channels} layers={args.layers} global batch {args.batch_size}, "
          f"{args.epochs} epochs, {images / args.epochs:.0f} training images per epoch")  # fmt: skip
    print(f"{'':34} {'wall s':>8} {'train s':>8} {'img/s':>8} {'valid_top1':>10}")
    for name, wall, train, last in rows:
        print(f"{name:34} {wall:8.1f} {train:8.1f} {images / train:8.0f} {last['valid_top1']:10.4f}")
    print(f"ratio DDP / single: wall {ddp_wall / single_wall:.2f}x, training {train_seconds(ddp) / train_seconds(single):.2f}x")
    print(f"throughput DDP {args.workers} workers / 1 worker ({args.threads_per_worker} thread(s) each): "
          f"{train_seconds(one_worker) / train_seconds(ddp):.2f}x (training images per second)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

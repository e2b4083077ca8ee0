"""Images per second of one retraining step of a final network, per precision and memory format, side by
side in one run: the paper's CIFAR-10 retrain shape by default (DARTS_V2, C=36, 20 cells, batch 96,
auxiliary head at weight 0.4, drop path 0.2), on synthetic CIFAR-shaped batches so that only the model's
step is timed (Cutout and AutoAugment run in the data loader's workers, not in this step).

    .venv/bin/python benchmarks/retrain_step.py --device cuda                 # fp32 NCHW vs bf16 channels-last
    .venv/bin/python benchmarks/retrain_step.py --init-channels 8 --layers 5 --batch 16 --steps 2   # CPU, small
"""

from __future__ import annotations

import argparse
import time


def measure(args: argparse.Namespace, precision_name: str, memory_format_name: str) -> dict:
    import torch

    from search_spaces.networks import build_network
    from trainers.engine import apply_memory_format, train_one_epoch
    from trainers.precision import resolve_precision

    torch.manual_seed(0)
    device = torch.device(args.device)
    fmt = torch.channels_last if memory_format_name == "channels_last" else torch.contiguous_format
    model = build_network(args.genotype, C=args.init_channels, layers=args.layers,
                          num_classes=10, auxiliary=True, in_channels=3, input_size=32)  # fmt: skip
    model = apply_memory_format(model.to(device), fmt)
    model.drop_path_prob = 0.2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    precision = resolve_precision(precision_name, device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    batches = [(x, y)] * args.steps

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_one_epoch(model, batches, optimizer, epoch=1, device=device, memory_format=fmt, grad_clip=5.0,
                        aux_weight=0.4, precision=precision, scaler=precision.grad_scaler())  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run()  # warm-up: kernels chosen, allocator filled
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = min(run() for _ in range(args.repeats))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"images_per_second": args.batch * args.steps / seconds, "peak_mib": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--genotype", default="DARTS_V2")
    parser.add_argument("--init-channels", type=int, default=36)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--steps", type=int, default=10, help="per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["fp32:contiguous", "bf16:channels_last"],
                        help="PRECISION:MEMORY_FORMAT pairs; the first is the reference")  # fmt: skip
    args = parser.parse_args(argv)

    rows = []
    for variant in args.variants:
        precision, memory_format = variant.split(":")
        rows.append((variant, measure(args, precision, memory_format)))
    print(f"retrain step, {args.genotype} C={args.init_channels} {args.layers} cells, batch {args.batch}, aux head, "
          f"drop path 0.2, {args.device}")  # fmt: skip
    print(f"{'variant':<24}{'img/s':>10}{'peak MiB':>10}{'x first':>9}")
    reference = rows[0][1]["images_per_second"]
    for variant, r in rows:
        print(f"{variant:<24}{r['images_per_second']:>10.1f}{r['peak_mib']:>10.0f}{r['images_per_second'] / reference:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

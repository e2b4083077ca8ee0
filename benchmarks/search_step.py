"""Times one search step (architecture update + weight update) for every named space and weighting.

Each configuration runs in its own subprocess so its peak memory (max RSS) is its own. Prints seconds per
step, images per second, the memory before the first step (torch, the model, the batch) and at its peak,
and the ratio of each configuration's time to ``darts`` (same weighting, memory format and variant), side
by side in one run. Variants: activation checkpointing off/on, and the dilated depthwise convs computed
as polyphase undilated convs (``search_spaces.ops.DepthwiseConv2d``) or by PyTorch's native kernel.
Precisions (``--precisions``, fp32 and bf16 by default): the forward passes of both steps under
``trainers.precision``'s autocast; the bf16 / fp32 ratios of time and peak memory close the table.

    .venv/bin/python benchmarks/search_step.py                      # CIFAR shape, C=16, 8 cells, batch 32
    .venv/bin/python benchmarks/search_step.py --C 8 --layers 5 --batch 16 --repeats 2
    .venv/bin/python benchmarks/search_step.py --spaces darts --memory-formats contiguous channels_last
    .venv/bin/python benchmarks/search_step.py --spaces darts --weightings scalar --checkpointing off on \
        --dilated-conv polyphase native
    .venv/bin/python benchmarks/search_step.py --order 2 --precisions fp32      # the unrolled step
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_config(args: argparse.Namespace) -> dict:
    import torch

    from search_spaces import ops
    from search_spaces.supernet import build_search_network
    from trainers.architect import Architect
    from trainers.config import ArchOptimConfig, OptimConfig
    from trainers.engine import train_one_epoch
    from trainers.precision import resolve_precision

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    net = build_search_network(args.space, C=args.C, layers=args.layers, weighting=args.weighting,
                               in_channels=3, num_classes=10,
                               activation_checkpointing=args.checkpoint == "on").to(device, memory_format=fmt)  # fmt: skip
    if args.dilated == "native":  # PyTorch's own dilated kernel, for comparison
        for module in net.modules():
            if isinstance(module, ops.DepthwiseConv2d):
                module._polyphase = False
    sgd = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    precision = resolve_precision(args.precision, device)
    scaler = precision.grad_scaler()
    architect = Architect(net, ArchOptimConfig(order=args.order), OptimConfig(), precision, scaler)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def arch_step(step, xb, yb):
        architect.step(xb, yb, x, y, lr=0.025, weight_optimizer=sgd)

    def step() -> float:
        start = time.perf_counter()
        train_one_epoch(net, [(x, y)], sgd, epoch=1, device=device, memory_format=fmt,
                        grad_clip=5.0, clip_parameters=net.weight_parameters(), before_step=arch_step,
                        precision=precision, scaler=scaler)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()  # warm-up (allocator, oneDNN kernels)
    times = sorted(step() for _ in range(args.repeats))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":  # the device's memory, not the host process's
        base_mib, peak_mib = 0.0, torch.cuda.max_memory_allocated(device) / 2**20
    return {"seconds": times[len(times) // 2], "base_mib": base_mib, "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", nargs="+", default=["darts", "sharp_sep_conv_darts", "sharp_darts", "sharper_darts"])
    parser.add_argument("--weightings", nargs="+", default=["scalar", "max_w"])
    parser.add_argument("--memory-formats", nargs="+", default=["channels_last"])
    parser.add_argument("--checkpointing", nargs="+", default=["off"], choices=["off", "on"],
                        help="activation checkpointing of the supernet edges")
    parser.add_argument("--dilated-conv", nargs="+", default=["polyphase"], choices=["polyphase", "native"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--order", type=int, default=1, choices=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory is then the GPU's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--space", help=argparse.SUPPRESS)
    parser.add_argument("--weighting", help=argparse.SUPPRESS)
    parser.add_argument("--memory-format", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--dilated", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_config(args)))
        return

    rows = []
    variants = [(c, d) for c in args.checkpointing for d in args.dilated_conv]
    for fmt in args.memory_formats:
        for checkpoint, dilated in variants:
            for weighting in args.weightings:
                for space in args.spaces:
                    for precision in args.precisions:
                        cmd = [sys.executable, __file__, "--child", "--space", space, "--weighting", weighting,
                               "--memory-format", fmt, "--C", str(args.C), "--layers", str(args.layers),
                               "--batch", str(args.batch), "--size", str(args.size), "--order", str(args.order),
                               "--repeats", str(args.repeats), "--threads", str(args.threads),
                               "--checkpoint", checkpoint, "--dilated", dilated, "--precision", precision,
                               "--device", args.device]  # fmt: skip
                        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                        result = json.loads(out.strip().splitlines()[-1])
                        variant = f"ckpt {checkpoint}, {dilated}"
                        rows.append({"space": space, "weighting": weighting, "memory_format": fmt,
                                     "variant": variant, "precision": precision, **result})  # fmt: skip
                        print(f"  measured {space} {weighting} {fmt} {variant} {precision}: {result['seconds']:.2f} s",
                              file=sys.stderr)  # fmt: skip

    print(f"\none search step (arch + weights, order {args.order}), batch {args.batch}, "
          f"{args.size}x{args.size}, C={args.C}, {args.layers} cells, {args.threads} threads, {args.device}")  # fmt: skip
    header = (f"{'space':<22}{'weighting':<10}{'format':<15}{'variant':<24}{'prec':<6}{'s/step':>9}{'img/s':>9}"
              f"{'base MiB':>10}{'peak MiB':>10}{'x darts':>9}")  # fmt: skip
    print(header)
    print("-" * len(header))

    def same(r: dict, **keys: str) -> dict | None:
        want = {k: r[k] for k in ("space", "weighting", "memory_format", "variant", "precision")} | keys
        return next((o for o in rows if all(o[k] == v for k, v in want.items())), None)

    for row in rows:
        base = same(row, space="darts")
        ratio = row["seconds"] / base["seconds"] if base else float("nan")
        print(f"{row['space']:<22}{row['weighting']:<10}{row['memory_format']:<15}{row['variant']:<24}"
              f"{row['precision']:<6}{row['seconds']:>9.3f}{args.batch / row['seconds']:>9.1f}{row['base_mib']:>10.0f}"
              f"{row['peak_mib']:>10.0f}{ratio:>9.2f}")  # fmt: skip
    def ratios_against(key: str, first: str, title: str) -> None:
        """Each row's time and peak-memory ratio to the row that differs only in ``key`` (= ``first``)."""
        print(f"\neach {title} against {first!r}: time ratio, peak-memory ratio")
        for row in rows:
            ref = same(row, **{key: first})
            if ref and row is not ref:
                print(f"  {row['space']:<22}{row['weighting']:<10}{row['memory_format']:<15}{row['variant']:<24}"
                      f"{row['precision']:<6}{row['seconds'] / ref['seconds']:.2f}  "
                      f"{row['peak_mib'] / ref['peak_mib']:.2f}")  # fmt: skip

    if len(variants) > 1:
        ratios_against("variant", f"ckpt {variants[0][0]}, {variants[0][1]}", "variant")
    if len(args.memory_formats) > 1:
        print("\nchannels_last / contiguous time ratio:")
        for r in rows:
            if r["memory_format"] == "channels_last":
                c = same(r, memory_format="contiguous")
                if c:
                    print(f"  {r['space']:<22}{r['weighting']:<10}{r['variant']:<24}{r['precision']:<6}"
                          f"{r['seconds'] / c['seconds']:.2f}")  # fmt: skip
    if len(args.precisions) > 1:
        ratios_against("precision", args.precisions[0], "precision")


if __name__ == "__main__":
    main()

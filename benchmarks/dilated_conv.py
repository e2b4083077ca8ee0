"""Forward + backward of a dilated depthwise conv: PyTorch's ``nn.Conv2d`` against ``DepthwiseConv2d``.

``search_spaces.ops.DepthwiseConv2d`` computes a dilated depthwise conv as an undilated one on the
polyphase components of its input (see its docstring). This times both on the shapes of the DARTS supernet
at the default CIFAR size (batch 32; C=16 at 32x32, 32 at 16x16, 64 at 8x8; stride 1 and the reduction
cells' stride 2), alternating the two so drifts of the machine hit both alike, and prints the ratio.

    .venv/bin/python benchmarks/dilated_conv.py
    .venv/bin/python benchmarks/dilated_conv.py --batch 64 --repeats 20 --memory-format contiguous
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from search_spaces.ops import DepthwiseConv2d

# (channels, size, kernel, stride) of the dilated convs (dilation 2) in a C=16, 8-cell supernet
SHAPES = [(16, 32, 3, 1), (16, 32, 5, 1), (32, 16, 3, 1), (32, 16, 5, 1), (64, 8, 3, 1), (64, 8, 5, 1),
          (16, 32, 3, 2), (16, 32, 5, 2), (32, 16, 3, 2), (32, 16, 5, 2)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format

    print(f"dilated (d=2) depthwise conv, forward + backward, batch {args.batch}, {args.memory_format}, "
          f"{args.threads} threads, median of {args.repeats}")  # fmt: skip
    header = f"{'C':>4}{'size':>6}{'k':>3}{'stride':>8}{'nn.Conv2d ms':>14}{'polyphase ms':>14}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for channels, size, kernel, stride in SHAPES:
        fast = DepthwiseConv2d(channels, kernel, stride=stride, padding=kernel - 1, dilation=2)
        native = nn.Conv2d(channels, channels, kernel, stride, kernel - 1, dilation=2, groups=channels, bias=False)
        native.load_state_dict(fast.state_dict())
        x = torch.randn(args.batch, channels, size, size).contiguous(memory_format=fmt).requires_grad_()
        grad = torch.randn_like(native(x))
        times: dict[str, list[float]] = {"native": [], "fast": []}
        for _ in range(args.repeats + 1):  # the first round warms up both
            for name, conv in (("native", native), ("fast", fast)):
                start = time.perf_counter()
                torch.autograd.grad(conv(x), (x, conv.weight), grad)
                times[name].append(time.perf_counter() - start)
        native_ms = 1e3 * statistics.median(times["native"][1:])
        fast_ms = 1e3 * statistics.median(times["fast"][1:])
        print(f"{channels:>4}{size:>6}{kernel:>3}{stride:>8}{native_ms:>14.2f}{fast_ms:>14.2f}{fast_ms / native_ms:>8.2f}")


if __name__ == "__main__":
    main()

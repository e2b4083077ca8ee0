"""Start-up of the light commands against ``import torch``, side by side in one run.

Each command runs ``--repeats`` times in a fresh interpreter (imports included, as a user types it); the
median wall time is printed beside that of ``python -c "import torch"`` and of a bare interpreter, with
the ratio to the torch import. The light commands import neither torch nor Ray (tests/test_cli_light.py),
so their ratio stays well below 1; a ratio near 1 means torch crept back into one of them.

    .venv/bin/python benchmarks/cli_startup.py
    .venv/bin/python benchmarks/cli_startup.py --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "nas_service.cli"]
COMMANDS = {
    "python (bare)": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "--help": [*CLI, "--help"],
    "validate": [*CLI, "validate", "examples/quickstart.yaml"],
    "schedule": [*CLI, "schedule", "cpa", "--epochs", "120"],
}


def seconds(argv: list[str], repeats: int) -> float:
    """Median wall time of ``argv`` in a fresh process, over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per command (the median is printed)")
    args = parser.parse_args()
    results = {name: seconds(argv, args.repeats) for name, argv in COMMANDS.items()}
    torch_s = results["import torch"]
    print(f"{'command':<16}{'seconds':>9}{'vs import torch':>17}   (median of {args.repeats})")
    for name, s in results.items():
        print(f"{name:<16}{s:>9.3f}{s / torch_s:>16.2f}x")


if __name__ == "__main__":
    main()

"""The benchmarks still run (at toy sizes) and print their side-by-side ratios; no timing is asserted.

The compute benchmarks are `serial` (run alone, after the rest): they time subprocesses with as many threads
as the machine has cores, so beside another test they run several times slower (the second-order step took
188 s instead of 28 s). The ones that mostly wait on Ray or files run beside other tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
serial = pytest.mark.serial


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@serial
def test_search_step_benchmark_compares_the_variants():
    out = _run("search_step.py", "--C", "4", "--layers", "3", "--batch", "4", "--size", "8", "--repeats", "1",
               "--spaces", "darts", "--weightings", "scalar", "--checkpointing", "off", "on")  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("darts ")]
    assert len(rows) == 4 and all("ckpt" in row for row in rows)
    assert {row.split()[6] for row in rows} == {"fp32", "bf16"}
    assert "each variant against 'ckpt off, polyphase'" in out
    assert "each precision against 'fp32'" in out


@serial
def test_search_step_benchmark_runs_the_second_order_step():
    out = _run("search_step.py", "--C", "4", "--layers", "3", "--batch", "4", "--size", "8", "--repeats", "1",
               "--spaces", "darts", "sharper_darts", "--weightings", "max_w", "--order", "2", "--precisions", "fp32")  # fmt: skip
    assert "order 2" in out and len([line for line in out.splitlines() if " max_w " in line]) >= 2


@serial
def test_dilated_conv_benchmark_prints_a_ratio_per_shape():
    out = _run("dilated_conv.py", "--batch", "2", "--repeats", "1")
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 10 and all(float(row[-1]) > 0 for row in rows)


def test_results_store_benchmark_times_each_command_on_both_stores():
    out = _run("results_store.py", "--trials", "4", "--epochs", "2", "--small", "2")
    rows = {line.split()[0] for line in out.splitlines() if line.endswith("x")}
    assert {"plan", "status", "results", "report"} <= rows
    assert "large: 4 trials x 2 epochs written" in out and "2 Parquet files" in out


def test_tune_overhead_benchmark_prints_the_ratio_and_where_the_time_goes():
    out = _run("tune_overhead.py", "--trials", "2", "--epochs", "2")
    assert "ratio service / plain:" in out and "start-up until the first epoch began" in out


@serial
def test_retrain_step_benchmark_compares_precisions_and_formats():
    out = _run("retrain_step.py", "--init-channels", "4", "--layers", "3", "--batch", "8", "--steps", "1",
               "--repeats", "1", "--variants", "fp32:contiguous", "bf16:channels_last")  # fmt: skip
    assert "fp32:contiguous" in out and "bf16:channels_last" in out and "x first" in out


def test_ddp_benchmark_prints_its_scaling_over_one_worker():
    out = _run("ddp_retrain.py", "--epochs", "2", "--init-channels", "4", "--layers", "3", "--max-steps", "4")
    assert "ratio DDP / single:" in out and "throughput DDP 2 workers / 1 worker" in out


@serial
def test_gpu_check_script_runs_end_to_end_on_the_cpu_at_toy_size():
    """The GPU check's three parts, on the CPU at toy sizes (the device tool lends a GPU to some sessions only)."""
    import os

    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "REPEATS": "1",
           "SEARCH_ARGS": "--C 4 --layers 3 --batch 4 --size 8 --spaces darts --weightings max_w",
           "RETRAIN_ARGS": "--init-channels 4 --layers 3 --batch 8 --steps 1 --repeats 1",
           "TRAIN_ARGS": "--set max_steps_per_epoch=2 --set init_channels=4"}  # fmt: skip
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "each precision against 'fp32'" in done.stdout and "bf16:channels_last" in done.stdout
    assert "[cell_search] epoch 1/1" in done.stdout and "one-epoch search:" in done.stdout


def test_dhgs_seed_agreement_prints_each_arm():
    out = _run("dhgs_seed_agreement.py", "--seeds", "2", "--weightings", "scalar", "max_w", "--variant",
               '{"epochs": 2, "max_steps_per_epoch": 2, "schedule": {"warmup_epochs": 0}, "arch": {"warmup_epochs": 1}}')  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.rstrip().endswith("of 2")]
    assert [row[-7] for row in rows] == ["scalar", "max_w"], out


"""Values that `validate` and `plan` used to accept but that failed (or exhausted the machine) only once Ray ran a
trial are refused by all three of validate, plan and run, before Ray starts, in one line that names the field the
user wrote and the value (issue 17).

Before this change: `seeds: [-1]` and `[2**70]` crashed inside the trial (the results store takes no negative
seed, torch no seed past 64 bits); `epochs: 1000000000` and `schedule cpa --epochs 1000000000` allocated tens of
gigabytes; `batch_size: 10**12` failed in the data loader; a storage path that is a file passed `validate` and
`plan`; `name: ..` and `name: _private` passed `validate` but not `plan`; a key written twice silently kept the
last value; `1e-3` was "must be a number"; `--num-cpus 0` meant every CPU; `train --workdir FILE` failed after a
whole epoch; and `epochs: 1` was reported at `overrides.schedule.warmup_epochs`, which the user never wrote.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Runs the real CLI, then says on stdout whether Ray was imported: a command refused "before Ray starts" must
# not even import it. The exit code passes through.
_DRIVER = textwrap.dedent("""\
    import sys
    from nas_service.cli import main
    code = main(sys.argv[1:])
    print(f"ray imported: {'ray' in sys.modules}")
    sys.exit(code)
""")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "HOME": str(tmp_path), "RAY_TMPDIR": str(tmp_path / "ray-tmp"), "PYTHONPATH": str(ROOT),
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    return env


def _cli(tmp_path: Path, *args: str, memory_gb: int = 4) -> subprocess.CompletedProcess:
    def limit() -> None:  # the code before this change then fails with MemoryError, rather than eating the host
        resource.setrlimit(resource.RLIMIT_AS, (memory_gb << 30, memory_gb << 30))

    return subprocess.run([sys.executable, "-c", _DRIVER, *args], env=_env(tmp_path), cwd=ROOT, capture_output=True,
                          text=True, timeout=120, preexec_fn=limit)  # fmt: skip


def _refused(done: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    """The one line of a refusal (exit 2) that holds every fragment; Ray was not imported."""
    line = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "\n" not in line and line.startswith(f"nas-service {command}: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert "ray imported: False" in done.stdout, done.stdout
    return line


_SPEC = """\
name: {name}
storage: {storage}
data: {{dataset: digits}}
resources: {{cpu: 1, gpu: 0}}
stages:
  - name: search
    kind: cell_search
    recipe: digits_search
    overrides:
      space: darts
      epochs: {epochs}
      init_channels: 4
      max_steps_per_epoch: 1
{more}    seeds: {seeds}
"""


def _spec(tmp_path: Path, *, name: str = "bounds", storage: str | None = None, epochs: object = 2,
          more: str = "", seeds: str = "[0]", text: str | None = None) -> Path:  # fmt: skip
    path = tmp_path / "spec.yaml"
    storage = storage if storage is not None else str(tmp_path / "runs")
    path.write_text(text or _SPEC.format(name=name, storage=storage, epochs=epochs, more=more, seeds=seeds))
    return path


def _afile(tmp_path: Path) -> str:
    (tmp_path / "afile").write_text("not a folder")
    return str(tmp_path / "afile")


def _twice(tmp_path: Path) -> str:
    return _SPEC.format(name="bounds", storage=tmp_path / "runs", epochs=2, more="      epochs: 3\n", seeds="[0]")


# (spec edits, the fragments the one line holds: the field as the user wrote it, the rule, the value)
BAD = [
    pytest.param(dict(seeds="[-1]"), ["stages[0].seeds[0]", "must be in [0, 2**63 - 1]", "(got -1)"],
                 id="negative-seed"),
    pytest.param(dict(seeds=f"[{2**70}]"), ["stages[0].seeds[0]", "2**63 - 1", f"(got {2**70})"], id="huge-seed"),
    pytest.param(dict(epochs=1000000000), ["stages[0].overrides.epochs", "must be <= 100000", "(got 1000000000)"],
                 id="huge-epochs"),
    pytest.param(dict(more=f"      data.batch_size: {10**12}\n"),
                 ["stages[0].overrides.data.batch_size", "must be <= 1048576", f"(got {10**12})"], id="huge-batch"),
    pytest.param(dict(storage=_afile), ["storage: must be a folder", "is a file, not a folder", "afile"],
                 id="storage-is-a-file"),
    pytest.param(dict(name=".."), ["name: must match the pattern", "(got '..')"], id="name-dot-dot"),
    pytest.param(dict(name="_private"), ["name: must match the pattern", "(got '_private')"], id="name-underscore"),
    pytest.param(dict(text=_twice), ["stages[0].overrides.epochs: is written twice (lines 11 and 14)"],
                 id="duplicate-key"),
    pytest.param(dict(epochs=1), ["stages[0].overrides.epochs: conflicts with schedule.warmup_epochs (1, from recipe "
                                  "digits_search): schedule.warmup_epochs must be < epochs", "(got 1)"],
                 id="epochs-below-recipe-warmup"),
]  # fmt: skip


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
@pytest.mark.parametrize(("edits", "fragments"), BAD)
def test_refused_by_validate_plan_and_run_before_ray(tmp_path, command, edits, fragments) -> None:
    edits = {k: (v(tmp_path) if callable(v) else v) for k, v in edits.items()}
    spec = _spec(tmp_path, **edits)
    args = [command, str(spec)] + (["--num-cpus", "2"] if command == "run" else [])
    line = _refused(_cli(tmp_path, *args), command, *fragments)
    assert "overrides.schedule.warmup_epochs" not in line  # never a field the user did not write
    assert not (tmp_path / "ray-tmp").exists()  # Ray keeps its sessions there: it never started
    assert not (tmp_path / "runs").exists()


def test_run_refuses_a_storage_override_that_is_a_file(tmp_path) -> None:
    spec = _spec(tmp_path)
    done = _cli(tmp_path, "run", str(spec), "--storage", _afile(tmp_path), "--num-cpus", "2")
    _refused(done, "run", "--storage: must be a folder", "is a file, not a folder")
    assert not (tmp_path / "ray-tmp").exists()


def test_an_optuna_seed_beyond_numpys_range_is_refused(tmp_path) -> None:
    grid = ("  - name: grid\n    kind: grid\n    recipe: digits_retrain\n    channels: [8]\n    layers: 1\n"
            f"    optuna: {{trials: 2, seed: {2**32}}}\n")  # fmt: skip
    spec = _spec(tmp_path)
    spec.write_text(spec.read_text() + grid)
    _refused(_cli(tmp_path, "validate", str(spec)), "validate", "stages[1].optuna.seed", "2**32 - 1",
             f"(got {2**32})")  # fmt: skip


def test_num_cpus_zero_is_refused_not_every_cpu(tmp_path) -> None:
    done = _cli(tmp_path, "run", str(_spec(tmp_path)), "--num-cpus", "0")
    _refused(done, "run", "--num-cpus: must be >= 1, got 0")
    assert not (tmp_path / "ray-tmp").exists()


def test_scientific_notation_is_a_number_in_every_command(tmp_path) -> None:
    from nas_service.spec import load_spec, load_yaml

    assert load_yaml("[1e-3, 1E5, -2.5e+3, .5e-2, 2.0e3, 1_000e1, 1e3x]") == [
        0.001, 100000.0, -2500.0, 0.005, 2000.0, 10000.0, "1e3x"]  # fmt: skip
    spec = _spec(tmp_path, more="      arch.lr: 1e-3\n      optim.weight_decay: 3E-4\n")
    loaded = load_spec(spec)
    assert loaded.stages[0].overrides["arch.lr"] == 0.001
    done = _cli(tmp_path, "validate", str(spec))
    assert done.returncode == 0 and "valid" in done.stdout, done.stderr
    # `train --set` reads its values with the same loader: 1e-3 is a number there too.
    from nas_service.commands.train import parse_overrides

    assert parse_overrides(["arch.lr=1e-3", "data.batch_size=16", "weighting=max_w"]) == {
        "arch": {"lr": 0.001}, "data": {"batch_size": 16}, "weighting": "max_w"}  # fmt: skip


def test_duplicate_keys_anywhere_name_each_key_and_both_lines() -> None:
    from nas_service.spec import SpecError, load_yaml

    with pytest.raises(SpecError) as info:
        load_yaml("name: a\nstages:\n  - {name: s, kind: x, name: t}\nname: b\n")
    assert [str(i) for i in info.value.issues] == [
        "stages[0].name: is written twice (lines 3 and 3); YAML would keep only the last: write it once (got 'name')",
        "name: is written twice (lines 1 and 4); YAML would keep only the last: write it once (got 'name')",
    ]  # fmt: skip
    assert load_yaml("base: &b {x: 1}\nuse: {<<: *b, x: 2}\n") == {"base": {"x": 1}, "use": {"x": 2}}  # merge keys


def test_schedule_refuses_a_billion_epochs_without_allocating(tmp_path) -> None:
    done = _cli(tmp_path, "schedule", "cpa", "--epochs", "1000000000", memory_gb=1)
    _refused(done, "schedule", "epochs: must be <= 100000", "got 1000000000")
    assert done.stdout.strip() == "ray imported: False"  # not one table line


@pytest.mark.parametrize(("overrides", "fragment"), [
    pytest.param(["epochs=1000000000"], "epochs: must be <= 100000", id="epochs"),
    pytest.param(["data.batch_size=1000000000000"], "data.batch_size: must be <= 1048576", id="batch-size"),
    pytest.param(["data.eval_batch_size=0"], "data.eval_batch_size: must be >= 1", id="eval-batch-size"),
    pytest.param(["seed=-1"], "seed: must be in [0, 2**63 - 1]", id="seed"),
    pytest.param(["epochs=2", "epochs=3"], "--set: epochs is set twice ('epochs=2' and 'epochs=3')", id="set-twice"),
])  # fmt: skip
def test_train_refuses_bad_values_before_training(tmp_path, overrides, fragment) -> None:
    sets = [arg for pair in overrides for arg in ("--set", pair)]
    done = _cli(tmp_path, "train", "digits_search", "--workdir", str(tmp_path / "w"), *sets)
    _refused(done, "train", fragment)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("below", [False, True], ids=["workdir-is-a-file", "workdir-under-a-file"])
def test_train_refuses_a_workdir_that_is_a_file_before_training(tmp_path, below) -> None:
    workdir = Path(_afile(tmp_path)) / ("sub" if below else "")
    # Tiny, so that before this change (a refusal only when the first checkpoint is written) it ends soon.
    done = _cli(tmp_path, "train", "digits_search", "--workdir", str(workdir), "--device", "cpu", "--set", "epochs=1",
                "--set", "max_steps_per_epoch=1", "--set", "schedule.warmup_epochs=0", "--set", "init_channels=4",
                "--set", "space=darts")  # fmt: skip
    _refused(done, "train", "--workdir: must be a folder", f"'{tmp_path / 'afile'}' is a file, not a folder")
    assert "epoch" not in done.stdout  # refused before the first epoch, not after it

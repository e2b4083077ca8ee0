"""The checkpoint format: weights-only round trips, atomic writes, version and corruption errors, RNG replay,
per-epoch files with pruning."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from trainers import checkpoints as ck
from trainers.checkpoints import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    CheckpointVersionError,
    CorruptCheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    capture_rng_state,
    checksum_path,
    copy_run_files,
    latest_checkpoint,
    latest_intact_checkpoint,
    stage_run_files,
    verify_checkpoint,
    list_epoch_checkpoints,
    load_checkpoint,
    make_checkpoint_state,
    restore_rng_state,
    restore_training_state,
    save_checkpoint,
    write_epoch_checkpoint,
)
from trainers.schedules import ScheduleSpec


class _TinyNet(nn.Module):
    """A conv net with a registered architecture parameter, like the search networks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.alphas = nn.Parameter(1e-3 * torch.randn(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(h) * self.alphas.softmax(-1).sum()


def _train_steps(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer], steps: int = 2) -> None:
    for _ in range(steps):
        x, y = torch.randn(2, 1, 6, 6), torch.randint(0, 3, (2,))
        loss = nn.functional.cross_entropy(model(x), y)
        for opt in optimizers.values():
            opt.zero_grad()
        loss.backward()
        for opt in optimizers.values():
            opt.step()


def _setup() -> tuple[_TinyNet, dict[str, torch.optim.Optimizer]]:
    model = _TinyNet()
    weights = [p for n, p in model.named_parameters() if n != "alphas"]
    optimizers = {
        "weights": torch.optim.SGD(weights, lr=0.1, momentum=0.9, weight_decay=3e-4),
        "arch": torch.optim.Adam([model.alphas], lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3),
    }
    return model, optimizers


def _state(model, optimizers, epoch=1, **extra):
    return make_checkpoint_state(
        kind="cell_search", epoch=epoch, model=model, optimizers=optimizers,
        spec={"space": "sharp_darts", "steps": 2}, config={"epochs": 4, "channels": [8, 16]},
        schedule=ScheduleSpec(kind="cpa", warmup_epochs=1), history=json.dumps([{"epoch": 1, "loss": 1.5}]),
        **extra,
    )  # fmt: skip


def _draws() -> tuple[torch.Tensor, np.ndarray, list[float], torch.Tensor]:
    return torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], torch.randn(3)


def test_round_trip_resumes_training_exactly(tmp_path):
    model, optimizers = _setup()
    _train_steps(model, optimizers)
    path = save_checkpoint(tmp_path / "run.pt", _state(model, optimizers, epoch=2))

    # continue the original for two steps, remembering the result
    _train_steps(model, optimizers)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    state = load_checkpoint(path)
    assert state["format_version"] == CHECKPOINT_FORMAT_VERSION
    assert state["kind"] == "cell_search" and state["epoch"] == 2
    assert "alphas" in state["model"]  # architecture weights travel with the model
    assert ScheduleSpec.from_dict(state["schedule"]) == ScheduleSpec(kind="cpa", warmup_epochs=1)
    assert state["config"] == {"epochs": 4, "channels": [8, 16]}

    torch.manual_seed(123)  # scramble: the restore must bring the RNG back
    fresh, fresh_opts = _setup()
    epoch = restore_training_state(state, model=fresh, optimizers=fresh_opts)
    assert epoch == 2
    _train_steps(fresh, fresh_opts)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)


def test_rng_restore_repeats_every_generator():
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    np.random.randn()  # leaves numpy's cached gaussian set, which must round-trip too
    state = capture_rng_state()
    first = _draws()
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(state)
    second = _draws()
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    torch.testing.assert_close(first[3], second[3], rtol=0, atol=0)


def test_rng_state_survives_weights_only_file(tmp_path):
    state = capture_rng_state()
    first = _draws()
    path = save_checkpoint(tmp_path / "rng.pt", {"kind": "retrain", "epoch": 0, "model": {}, "rng": state})
    json.dumps({k: v for k, v in state.items() if k in ("numpy", "python")})  # JSON-able parts
    restore_rng_state(load_checkpoint(path)["rng"])
    second = _draws()
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)


def test_restore_rng_rejects_malformed_state():
    with pytest.raises(CheckpointError, match=r"rng: missing part\(s\) \['python'\]"):
        restore_rng_state({"torch": torch.get_rng_state(), "numpy": {}})
    state = capture_rng_state()
    state["numpy"] = {"bit_generator": "MT19937"}
    with pytest.raises(CheckpointError, match=r"rng: malformed state"):
        restore_rng_state(state)


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    model, optimizers = _setup()
    path = save_checkpoint(tmp_path / "run.pt", _state(model, optimizers, epoch=1))
    before = path.read_bytes()

    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes of a zip archive")  # something on disk, then the crash
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", half_save)
    _train_steps(model, optimizers)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _state(model, optimizers, epoch=2))
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1  # the old bytes still match the old digest
    assert sorted(os.listdir(tmp_path)) == ["run.pt", "run.pt.sha256"]


def test_unsafe_objects_fail_at_save_not_at_resume(tmp_path):
    target = tmp_path / "run.pt"
    good = {"kind": "retrain", "epoch": 0, "model": {"w": torch.ones(2)}}
    save_checkpoint(target, good)
    with pytest.raises(CorruptCheckpointError, match=r"weights_only=True .*numpy.*float\(x\) for numpy scalars"):
        save_checkpoint(target, {**good, "epoch": 1, "extra": {"best": np.float64(0.5)}})
    assert load_checkpoint(target)["epoch"] == 0
    assert sorted(os.listdir(tmp_path)) == ["run.pt", "run.pt.sha256"]


def test_atomic_text_and_bytes(tmp_path, monkeypatch):
    target = atomic_write_text(tmp_path / "sub" / "summary.json", '{"top1": 0.9}')
    assert json.loads(target.read_text()) == {"top1": 0.9}
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"

    def crash(src, dst):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(target, "new")
    assert target.read_bytes() == b"{}"
    assert os.listdir(target.parent) == ["summary.json"]


def test_version_mismatch(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format_version": 0, "kind": "retrain", "epoch": 3, "model": {}}, path)
    with pytest.raises(CheckpointVersionError, match=rf"{path}: format_version 0, but this code reads version 1"):
        load_checkpoint(path)
    torch.save({"kind": "retrain", "epoch": 3, "model": {}}, path)
    with pytest.raises(CheckpointVersionError, match=rf"{path}: has no 'format_version'"):
        load_checkpoint(path)
    with pytest.raises(CheckpointVersionError, match=r"this code writes 1"):
        save_checkpoint(path, {"format_version": 2, "kind": "retrain", "epoch": 3, "model": {}})


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"not a checkpoint at all" * 4, id="garbage"),
        pytest.param(lambda data: data[:64] + bytes(64) + data[128:], id="zeroed_header"),
    ],
)
@pytest.mark.parametrize("checksum", [True, False], ids=["checksummed", "no_sidecar"])
def test_corrupt_file_names_the_path(tmp_path, damage, checksum):
    state = {"kind": "retrain", "epoch": 1, "model": {"w": torch.ones(64)}}
    path = save_checkpoint(tmp_path / "epoch_0001.pt", state)
    if not checksum:  # written before checksums existed: the weights-only read still catches the damage
        checksum_path(path).unlink()
    path.write_bytes(damage(path.read_bytes()))
    rule = "SHA-256 .* does not match .* recorded in epoch_0001.pt.sha256" if checksum else \
        "not a readable weights-only checkpoint"
    with pytest.raises(CorruptCheckpointError, match=rf"{path}: {rule}"):
        load_checkpoint(path)
    with pytest.raises(CorruptCheckpointError, match=rf"{path}: {rule}"):
        verify_checkpoint(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"checkpoint file not found: {tmp_path / 'nope.pt'}"):
        load_checkpoint(tmp_path / "nope.pt")


def test_non_dict_and_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2], path)
    with pytest.raises(CorruptCheckpointError, match=r"must hold a dict, got list"):
        load_checkpoint(path)
    unsafe = {"format_version": 1, "kind": "retrain", "epoch": 0, "model": {}, "extra": {"obj": ScheduleSpec()}}
    torch.save(unsafe, path)
    with pytest.raises(CorruptCheckpointError, match=r"not a readable weights-only checkpoint.*ScheduleSpec"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        pytest.param({"kind": "retrain", "epoch": 0}, r"missing required key\(s\) \['model'\]", id="no_model"),
        pytest.param({"kind": "search", "epoch": 0, "model": {}}, r"'kind' must be one of", id="bad_kind"),
        pytest.param({"kind": "retrain", "epoch": -1, "model": {}}, r"'epoch' must be an integer >= 0", id="neg_epoch"),
        pytest.param({"kind": "retrain", "epoch": 0, "model": {}, "best_acc": 0.9},
                     r"unknown key\(s\) \['best_acc'\].*'extra'", id="unknown_key"),  # fmt: skip
        pytest.param({"kind": "retrain", "epoch": 0, "model": {}, "config": {"x": torch.ones(1)}},
                     r"'config' must be JSON-able", id="config_not_json"),  # fmt: skip
        pytest.param({"kind": "retrain", "epoch": 0, "model": {}, "optimizers": {"w": 1}},
                     r"'optimizers' maps names to state dicts", id="bad_optimizers"),  # fmt: skip
    ],
)
def test_schema_is_enforced_on_save(tmp_path, state, match):
    with pytest.raises(CheckpointError, match=match):
        save_checkpoint(tmp_path / "x.pt", state)
    assert list(tmp_path.iterdir()) == []


def test_restore_training_state_names_missing_optimizer():
    model, optimizers = _setup()
    only_weights = {"weights": optimizers["weights"]}
    state = make_checkpoint_state(kind="retrain", epoch=0, model=model, optimizers=only_weights)
    with pytest.raises(CheckpointError, match=r"no state for 'arch' in the checkpoint; it has \['weights'\]"):
        restore_training_state(state, model=model, optimizers=optimizers)


def test_write_epoch_checkpoint_prunes_after_writing(tmp_path):
    folder = tmp_path / "checkpoints"
    assert latest_checkpoint(folder) is None
    model, optimizers = _setup()
    for epoch in range(1, 6):
        path = write_epoch_checkpoint(folder, epoch, _state(model, optimizers, epoch=epoch), keep_last=2)
        assert path == folder / f"epoch_{epoch:04d}.pt"
        assert latest_checkpoint(folder) == path
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0004.pt", "epoch_0004.pt.sha256",
                                                         "epoch_0005.pt", "epoch_0005.pt.sha256"]
    assert load_checkpoint(latest_checkpoint(folder))["epoch"] == 5

    write_epoch_checkpoint(folder, 6, _state(model, optimizers, epoch=6), keep_last=1)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0006.pt", "epoch_0006.pt.sha256"]
    write_epoch_checkpoint(folder, 7, _state(model, optimizers, epoch=7), keep_last=None)
    assert [n for n, _ in list_epoch_checkpoints(folder)] == [6, 7]


def test_pruning_never_runs_when_the_write_fails(tmp_path, monkeypatch):
    model, optimizers = _setup()
    for epoch in (1, 2):
        write_epoch_checkpoint(tmp_path, epoch, _state(model, optimizers, epoch=epoch))

    def failing_save(obj, f, *args, **kwargs):
        raise OSError("simulated")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        write_epoch_checkpoint(tmp_path, 3, _state(model, optimizers, epoch=3), keep_last=1)
    assert [n for n, _ in list_epoch_checkpoints(tmp_path)] == [1, 2]


def test_latest_checkpoint_orders_numerically_and_ignores_other_files(tmp_path):
    model, optimizers = _setup()
    for epoch in (9999, 10000):
        write_epoch_checkpoint(tmp_path, epoch, _state(model, optimizers, epoch=epoch), keep_last=None)
    (tmp_path / ".epoch_20000.pt.123.abcd.tmp").write_bytes(b"partial")
    (tmp_path / "epoch_final.pt").write_bytes(b"x")
    (tmp_path / "best.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch_10000.pt"


def test_write_epoch_checkpoint_checks_epoch(tmp_path):
    model, optimizers = _setup()
    with pytest.raises(CheckpointError, match=r"file is for epoch 3 but state\['epoch'\] is 2"):
        write_epoch_checkpoint(tmp_path, 3, _state(model, optimizers, epoch=2))
    with pytest.raises(CheckpointError, match=r"keep_last: must be an integer >= 1 or None, got 0"):
        write_epoch_checkpoint(tmp_path, 3, _state(model, optimizers, epoch=3), keep_last=0)
    state = _state(model, optimizers, epoch=3)
    del state["epoch"]
    assert load_checkpoint(write_epoch_checkpoint(tmp_path, 3, state))["epoch"] == 3


def test_load_maps_to_cpu_by_default(tmp_path):
    path = save_checkpoint(tmp_path / "x.pt", {"kind": "retrain", "epoch": 0, "model": {"w": torch.ones(2)}})
    assert load_checkpoint(path)["model"]["w"].device.type == "cpu"


def test_module_names_no_ray():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ck))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "ray" not in imported


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA fallback")
def test_cuda_state_without_cuda_warns_and_restores_the_rest():
    state = capture_rng_state()
    assert "cuda" not in state  # never captured without an initialised CUDA
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    first = _draws()
    with pytest.warns(RuntimeWarning, match=r"CUDA states of 1 device\(s\), this process sees 0"):
        restore_rng_state(state)
    torch.testing.assert_close(_draws()[0], first[0], rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_round_trip(tmp_path):
    torch.cuda.init()
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = torch.rand(4, device="cuda")
    path = save_checkpoint(tmp_path / "rng.pt", {"kind": "retrain", "epoch": 0, "model": {}, "rng": state})
    torch.cuda.manual_seed_all(1234)
    restore_rng_state(load_checkpoint(path)["rng"])
    torch.testing.assert_close(torch.rand(4, device="cuda"), first, rtol=0, atol=0)


def test_latest_intact_checkpoint_sets_damaged_files_aside_and_names_both(tmp_path):
    model, optimizers = _setup()
    for epoch in (1, 2, 3):
        write_epoch_checkpoint(tmp_path, epoch, _state(model, optimizers, epoch=epoch), keep_last=None)
    (tmp_path / "epoch_0003.pt").write_bytes(b"")  # truncated to nothing, and (older files) no sidecar
    checksum_path(tmp_path / "epoch_0003.pt").unlink()
    (tmp_path / "epoch_0002.pt.sha256").write_text("0" * 64 + "  epoch_0002.pt\n")  # digest says: changed
    logged = []
    with pytest.warns(ck.CheckpointFallbackWarning) as caught:
        assert latest_intact_checkpoint(tmp_path, log=logged.append) == tmp_path / "epoch_0001.pt"
    message = str(caught[0].message)
    assert "epoch_0003.pt (not a readable" in message and "epoch_0002.pt (SHA-256" in message
    assert "resuming from epoch_0001.pt instead" in message and logged == [message]
    assert [n for n, _ in list_epoch_checkpoints(tmp_path)] == [1]
    assert (tmp_path / "epoch_0003.pt.damaged").exists() and (tmp_path / "epoch_0002.pt.damaged.sha256").exists()
    (tmp_path / "epoch_0001.pt").write_bytes(b"junk")
    with pytest.warns(ck.CheckpointFallbackWarning, match="no intact checkpoint left: starting over"):
        assert latest_intact_checkpoint(tmp_path) is None


def test_a_checkpoint_without_sidecar_still_loads(tmp_path):
    """Files written before checksums (or a kill between the rename and the sidecar) are still resumable."""
    path = save_checkpoint(tmp_path / "epoch_0001.pt", {"kind": "retrain", "epoch": 1, "model": {"w": torch.ones(3)}})
    assert checksum_path(path).read_text().split() == [ck._file_sha256(path), "epoch_0001.pt"]
    checksum_path(path).unlink()
    verify_checkpoint(path)
    assert load_checkpoint(path)["epoch"] == 1 and latest_intact_checkpoint(tmp_path) == path


def test_malformed_sidecar_counts_as_damage(tmp_path):
    path = save_checkpoint(tmp_path / "epoch_0001.pt", {"kind": "retrain", "epoch": 1, "model": {}})
    checksum_path(path).write_text("not a digest")
    with pytest.raises(CorruptCheckpointError, match=r"epoch_0001.pt.sha256 must hold a SHA-256 hex digest"):
        load_checkpoint(path)


def test_copy_run_files_replaces_a_damaged_newest_file_with_an_intact_copy(tmp_path):
    """A scheduler's copy of the same epoch beats falling back one epoch."""
    model, optimizers = _setup()
    source, workdir = tmp_path / "ray_checkpoint", tmp_path / "trial"
    written = write_epoch_checkpoint(workdir / "checkpoints", 2, _state(model, optimizers, epoch=2))
    stage_run_files(written, workdir, source)
    assert sorted(p.name for p in source.iterdir()) == ["epoch_0002.pt", "epoch_0002.pt.sha256"]
    assert copy_run_files(source, workdir, only_if_newer=True) == 0  # the same epoch, intact: nothing to do
    written.write_bytes(written.read_bytes()[:100])
    with pytest.warns(ck.CheckpointFallbackWarning):
        assert copy_run_files(source, workdir, only_if_newer=True) == 2
    assert load_checkpoint(workdir / "checkpoints" / "epoch_0002.pt")["epoch"] == 2

"""End-to-end runs of the training engine on the embedded digits data: accuracy floors, exact resume,
divergence handling and bad input. Small presets; each run takes seconds to a minute on one CPU thread."""

from __future__ import annotations

import json

import pytest
import torch

from search_spaces.spaces import list_search_spaces
from search_spaces.weighting import list_weightings
from trainers.architect import Architect
from trainers.checkpoints import CheckpointFallbackWarning, latest_checkpoint, list_epoch_checkpoints
from trainers.config import ConfigError, config_from_dict, with_overrides
from trainers.engine import DivergedError, Hooks
from trainers.identity import without_result_neutral_fields
from trainers.loop import ResumeMismatchError
from trainers.recipes import get_recipe
from trainers.retrain import run_retrain, score_checkpoint
from trainers.search import run_cell_search, run_hypercuboid_search

# Search presets sized for tests: two epochs of the digits recipe at C=6, no warm-up.
FAST_SEARCH = {"epochs": 2, "init_channels": 6, "schedule": {"warmup_epochs": 0, "max_lr": 0.05}}
TIMING_KEYS = {"epoch_seconds", "images_per_second"}


def _without_timing(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


class _StopAfter:
    """Hooks that stop a run after ``n`` epochs, as a Ctrl-C between epochs would."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def hooks(self) -> Hooks:
        def report(metrics, checkpoint):
            self.seen += 1
            assert checkpoint is not None and checkpoint.exists()

        return Hooks(report=report, should_stop=lambda: self.seen >= self.n)


@pytest.mark.slow
@pytest.mark.parametrize("weighting", list_weightings())
@pytest.mark.parametrize("space", list_search_spaces())
def test_cell_search_on_digits_reaches_80_percent_in_two_epochs(space, weighting, tmp_path):
    config = with_overrides(get_recipe("digits_search"), {"space": space, "weighting": weighting, **FAST_SEARCH})
    summary = run_cell_search(config, workdir=tmp_path)
    assert summary.finished and summary.epochs_run == 2
    assert summary.best_valid_acc >= 0.80
    last = summary.history[-1]
    for key in ("train_loss", "valid_loss", "arch_entropy_normal", "param_free_share", "param_free_share_no_hack",
                "images_per_second", "lr", "genotype_no_hack"):
        assert key in last
    assert summary.best_genotype == summary.history[summary.best_epoch - 1]["genotype"]


@pytest.mark.slow
@pytest.mark.parametrize("weighting", list_weightings())
def test_dhgs_on_digits_reaches_80_percent(weighting, tmp_path):
    config = with_overrides(get_recipe("digits_hypercuboid_search"), {"weighting": weighting, "epochs": 4})
    summary = run_hypercuboid_search(config, workdir=tmp_path)
    assert summary.best_valid_acc >= 0.80
    path = summary.best_path
    assert path["head_channels"] == config.head_channels and len(path["stages"]) == 2 * config.layers
    last = summary.history[-1]
    assert len(last["arch_entropy_groups_nats"]) == 2 and last["path_weight"] > 0


@pytest.mark.slow
def test_retrain_darts_v2_on_digits_reaches_90_percent_test(tmp_path):
    summary = run_retrain(get_recipe("digits_retrain"), workdir=tmp_path)  # 8 epochs
    assert summary.protocol == "validation-selected"
    assert summary.test_top1_at_best >= 0.90
    assert summary.params > 0
    scored = score_checkpoint(tmp_path / "best.pt", "digits")
    assert scored["epoch"] == summary.best_epoch
    assert scored["top1"] == pytest.approx(summary.test_top1_at_best)


@pytest.mark.parametrize("kind", ["cell_search", "hypercuboid_search"])
def test_an_architecture_warmup_trains_weights_only_and_is_never_selected(kind, tmp_path, monkeypatch):
    recipe = {"cell_search": "digits_search", "hypercuboid_search": "digits_hypercuboid_search"}[kind]
    config = with_overrides(get_recipe(recipe), {"epochs": 2, "max_steps_per_epoch": 2, "arch": {"warmup_epochs": 1},
                                                 "schedule": {"warmup_epochs": 0}})  # fmt: skip
    steps, per_epoch = [], []  # architecture steps taken; their count at the end of each epoch
    real_step = Architect.step
    monkeypatch.setattr(Architect, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))

    run = run_cell_search if kind == "cell_search" else run_hypercuboid_search
    summary = run(config, workdir=tmp_path, hooks=Hooks(report=lambda metrics, checkpoint: per_epoch.append(len(steps))))
    assert per_epoch == [0, 2]  # epoch 1: weights only; epoch 2: an architecture step before each weight step
    history = summary.history
    assert "arch_loss" not in history[0] and "arch_loss" in history[1]
    assert summary.best_epoch == 2  # the warm-up epoch is no candidate


def test_an_architecture_warmup_must_leave_an_epoch_to_search_and_is_part_of_the_identity():
    from trainers.config import config_to_dict
    from trainers.identity import same_computation

    plain = config_to_dict(get_recipe("digits_search"))
    assert "warmup_epochs" not in without_result_neutral_fields(plain)["arch"]  # at 0: ids recorded before stay
    warm = config_to_dict(with_overrides(get_recipe("digits_search"), {"arch": {"warmup_epochs": 2}}))
    assert not same_computation(plain, warm)
    with pytest.raises(ConfigError, match=r"arch.warmup_epochs: must be < epochs"):
        with_overrides(get_recipe("digits_search"), {"epochs": 3, "arch": {"warmup_epochs": 3}})
    with pytest.raises(ConfigError, match=r"arch.warmup_epochs: must be >= 0"):
        with_overrides(get_recipe("digits_hypercuboid_search"), {"arch": {"warmup_epochs": -1}})


def test_retrain_of_a_path_and_the_paper_protocol_label(tmp_path):
    config = with_overrides(get_recipe("digits_retrain"), {
        "genotype": None, "path": "MULTI_CHANNEL_HANDMADE_PATH", "epochs": 1, "select_on_test": True, "schedule": {"warmup_epochs": 0},
        "max_steps_per_epoch": 3,
    })  # fmt: skip
    summary = run_retrain(config, workdir=tmp_path)
    assert summary.protocol.startswith("paper")
    assert summary.spec["model"] == "path"


@pytest.mark.parametrize(("kind", "precision"), [
    (kind, precision) for kind in ("cell_search", "hypercuboid_search", "retrain") for precision in ("fp32", "bf16")
] + [("cell_search", "fp16"), ("retrain", "fp16")])  # fmt: skip
def test_resume_continues_the_same_trajectory(kind, precision, tmp_path):
    recipe = {"cell_search": "digits_search", "hypercuboid_search": "digits_hypercuboid_search",
              "retrain": "digits_retrain"}[kind]  # fmt: skip
    config = with_overrides(get_recipe(recipe), {"epochs": 3, "max_steps_per_epoch": 4, "precision": precision})
    if kind == "cell_search":
        config = with_overrides(config, {"init_channels": 4, "space": "darts"})
    run = {"cell_search": run_cell_search, "hypercuboid_search": run_hypercuboid_search, "retrain": run_retrain}[kind]

    straight = run(config, workdir=tmp_path / "straight")
    stopper = _StopAfter(2)
    partial = run(config, workdir=tmp_path / "resumed", hooks=stopper.hooks())
    assert partial.epochs_run == 2 and not partial.finished
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    if kind == "cell_search":  # a result-neutral field may change on resume and changes no number
        config = with_overrides(config, {"activation_checkpointing": True})
    resumed = run(config, workdir=tmp_path / "resumed")
    assert resumed.finished and resumed.epochs_run == 3
    assert _without_timing(resumed.history) == _without_timing(straight.history)
    assert {h["precision"] for h in resumed.history} == {precision}
    # Only the last epochs' checkpoints are kept.
    assert [e for e, _ in list_epoch_checkpoints(tmp_path / "resumed" / "checkpoints")] == [2, 3]


@pytest.mark.parametrize("damage", ["truncated", "bit_flip"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(damage, tmp_path):
    """Issue 17 item 2: before, a truncated newest epoch file failed every resume (and every retry)."""
    config = with_overrides(get_recipe("digits_retrain"), {"epochs": 3, "max_steps_per_epoch": 3})
    straight = run_retrain(config, workdir=tmp_path / "straight")
    run_retrain(config, workdir=tmp_path / "resumed", hooks=_StopAfter(2).hooks())
    folder = tmp_path / "resumed" / "checkpoints"
    newest = folder / "epoch_0002.pt"
    data = bytearray(newest.read_bytes())
    if damage == "truncated":
        newest.write_bytes(bytes(data[: len(data) // 3]))
    else:  # a flipped bit in tensor bytes: torch.load reads it without complaint, the checksum does not
        data[len(data) // 2] ^= 0x10
        newest.write_bytes(bytes(data))
    lines = []
    with pytest.warns(CheckpointFallbackWarning, match=r"epoch_0002.pt .*resuming from epoch_0001.pt instead"):
        resumed = run_retrain(config, workdir=tmp_path / "resumed", hooks=Hooks(log=lines.append))
    assert any("resuming from epoch_0001.pt" for line in lines) and any("at epoch 1/3" in line for line in lines)
    assert _without_timing(resumed.history) == _without_timing(straight.history)
    assert (folder / "epoch_0002.pt.damaged").exists()  # set aside, not deleted
    assert [e for e, _ in list_epoch_checkpoints(folder)] == [2, 3]


def test_finished_run_is_not_repeated(tmp_path):
    config = with_overrides(get_recipe("digits_retrain"), {"epochs": 1, "max_steps_per_epoch": 2, "schedule": {"warmup_epochs": 0}})
    first = run_retrain(config, workdir=tmp_path)
    calls = []
    second = run_retrain(config, workdir=tmp_path, hooks=Hooks(report=lambda m, c: calls.append(m)))
    assert calls == [] and second.history == first.history


def test_a_different_config_refuses_to_resume_the_run_folder(tmp_path):
    config = with_overrides(get_recipe("digits_retrain"), {"epochs": 1, "max_steps_per_epoch": 2, "schedule": {"warmup_epochs": 0}})
    run_retrain(config, workdir=tmp_path)
    with pytest.raises(ResumeMismatchError, match="different configuration"):
        run_retrain(with_overrides(config, {"seed": 1}), workdir=tmp_path)


class _NaNAfterFirstEpoch(torch.nn.Module):
    """Wraps a model so its outputs turn NaN once ``poisoned`` is set (a diverging run)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.poisoned = model, False

    def forward(self, x):
        logits, aux = self.model(x)
        return (logits * float("nan"), aux) if self.poisoned else (logits, aux)


def test_nan_loss_raises_diverged_with_epoch_and_step_and_keeps_checkpoints(tmp_path):
    config = with_overrides(get_recipe("digits_retrain"), {"epochs": 3, "max_steps_per_epoch": 2})
    wrapper = {}

    def wrap(model):
        wrapper["m"] = _NaNAfterFirstEpoch(model)
        return wrapper["m"]

    def report(metrics, checkpoint):
        wrapper["m"].poisoned = True

    with pytest.raises(DivergedError, match=r"epoch 2, step 0") as err:
        run_retrain(config, workdir=tmp_path, hooks=Hooks(wrap_model=wrap, report=report))
    assert err.value.epoch == 2 and err.value.step == 0
    assert latest_checkpoint(tmp_path / "checkpoints").name == "epoch_0001.pt"
    assert (tmp_path / "best.pt").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"kind": "retrain", "genotype": "DARTS_V2", "epochs": 0}, "epochs: must be >= 1", id="epochs"),
        pytest.param({"kind": "retrain"}, "exactly one of genotype or path", id="no-architecture"),
        pytest.param({"kind": "cell_search", "weighting": "maxw"}, "weighting", id="weighting"),
        pytest.param({"kind": "cell_search", "data": {"batchsize": 2}}, "data.batchsize: unknown field", id="field"),
        pytest.param({"kind": "nope"}, "kind: must be one of", id="kind"),
        pytest.param({"kind": "cell_search", "schedule": {"power": 0.5}}, "schedule.power", id="power"),
    ],
)
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_missing_dataset_fails_with_the_path(tmp_path):
    config = with_overrides(get_recipe("digits_retrain"), {"data": {"dataset": "cifar10", "root": str(tmp_path)}})
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        run_retrain(config, workdir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_space_fails_before_training(tmp_path):
    config = with_overrides(get_recipe("digits_search"), {"space": "darts_v9"})
    with pytest.raises(KeyError, match="known search spaces"):
        run_cell_search(config, workdir=tmp_path)


def test_second_order_search_runs(tmp_path):
    config = with_overrides(get_recipe("digits_search"), {
        "space": "darts", "epochs": 1, "schedule": {"warmup_epochs": 0}, "init_channels": 4, "max_steps_per_epoch": 2, "arch": {"order": 2}})  # fmt: skip
    summary = run_cell_search(config, workdir=tmp_path)
    assert summary.epochs_run == 1
    json.dumps(summary.to_dict())  # the summary is JSON-able as a whole
    assert type(summary).from_dict(json.loads(json.dumps(summary.to_dict()))) == summary

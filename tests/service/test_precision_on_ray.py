"""A spec that asks for reduced precision runs end to end on a real local Ray instance."""

from __future__ import annotations


import pytest

from tests.helpers import tiny_search_spec
from tests.service.test_ray_experiments import cli_env, finish, start_run, store_of

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.timeout(600)]


def test_a_precision_sweep_runs_fp32_and_bf16_trials_as_different_trials(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_search_spec("tiny", tmp_path / "runs", seeds=[0], epochs=2, max_steps_per_epoch=3)
                    + "    sweep:\n      precision: [fp32, bf16]\n")  # fmt: skip
    code, out = finish(start_run(spec, cli_env(tmp_path)))
    assert code == 0, out
    store = store_of(tmp_path)
    trials, epochs = store.trials(), store.epochs()
    assert len(trials) == 2 and trials["trial_id"].is_unique and set(trials["status"]) == {"finished"}
    by_trial = dict(zip(trials["trial_id"], trials["config.precision"]))
    assert sorted(by_trial.values()) == ["bf16", "fp32"]  # precision is part of the trial's identity
    assert len(epochs) == 4
    for trial_id, used in zip(epochs["trial_id"], epochs["precision"]):
        assert used == by_trial[trial_id]  # what each epoch really ran in
    assert trials["arm"].nunique() == 2  # and so is it of its arm

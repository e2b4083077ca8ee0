"""``nas-service schedule``: the printed table parses back to the schedule, plots are written atomically, bad
input exits 2 with one clear line."""

from __future__ import annotations

import numpy as np
import pytest

from nas_service import cli
from trainers.schedules import cosine, cosine_power_annealing


@pytest.fixture(autouse=True)
def _only_schedule_command(monkeypatch):
    # Test this subcommand through the real cli.main without depending on the other subcommand modules.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("schedule",))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["schedule", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _parse(out: str) -> tuple[list[int], np.ndarray]:
    rows = [line.split(" ") for line in out.splitlines()]
    assert all(len(r) == 2 for r in rows), out
    return [int(e) for e, _ in rows], np.array([float(v) for _, v in rows])


def test_cpa_table_matches_function_and_closed_form(capsys):
    code, out, err = _run(capsys, "cpa", "--epochs", "120", "--max-lr", "0.025", "--min-lr", "1e-4",
                          "--power", "2", "--warmup", "5")  # fmt: skip
    assert code == 0 and err == ""
    epochs, values = _parse(out)
    assert epochs == list(range(1, 121))
    expected = cosine_power_annealing(120, 0.025, 1e-4, 2, warmup_epochs=5)
    # {:.10g} keeps 10 significant digits: relative error at most 5e-10.
    np.testing.assert_allclose(values, expected, rtol=5e-10, atol=0)
    after = np.arange(7, 121)
    c = (1 + np.cos(np.pi * (after - 5) / 115)) / 2
    np.testing.assert_allclose(values[6:], 1e-4 + (0.025 - 1e-4) * (2 ** (c + 1) - 2) / 2, rtol=5e-10, atol=0)
    assert values[5] == 0.025 and values[-1] == 1e-4


def test_defaults_are_the_cifar_search_setting(capsys):
    code, out, _ = _run(capsys, "cpa", "--epochs", "120")
    assert code == 0
    np.testing.assert_allclose(_parse(out)[1], cosine_power_annealing(120, 0.025, 1e-4, 2, warmup_epochs=5), rtol=5e-10)


def test_cosine_and_constant(capsys):
    code, out, _ = _run(capsys, "cosine", "--epochs", "60", "--max-lr", "0.025", "--min-lr", "0.001")
    assert code == 0
    np.testing.assert_allclose(_parse(out)[1], cosine(60, 0.025, 0.001), rtol=5e-10)
    for flag in ("--lr", "--max-lr"):
        code, out, _ = _run(capsys, "constant", "--epochs", "3", flag, "0.1")
        assert code == 0 and out == "1 0.1\n2 0.1\n3 0.1\n"


@pytest.mark.parametrize("log_y", [pytest.param(False, id="linear"), pytest.param(True, id="log_y")])
def test_plot_writes_png(capsys, tmp_path, log_y):
    target = tmp_path / "cpa.png"
    args = ["cpa", "--epochs", "30", "--warmup", "2", "--plot", str(target)] + (["--log-y"] if log_y else [])
    code, out, err = _run(capsys, *args)
    assert code == 0
    assert len(out.splitlines()) == 30  # the table on stdout stays clean
    assert str(target) in err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cpa.png"]  # no temp file left behind


def test_plot_replaces_existing_file_atomically_and_cleans_up_on_error(capsys, tmp_path):
    target = tmp_path / "curve.png"
    target.write_bytes(b"old")
    assert _run(capsys, "cosine", "--epochs", "10", "--plot", str(target))[0] == 0
    assert target.read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "curve.notaformat"
    code, out, err = _run(capsys, "cosine", "--epochs", "10", "--plot", str(bad))
    assert code == 2 and out == "" and "notaformat" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["cpa", "--epochs", "0"], "epochs: must be >= 1, got 0", id="zero_epochs"),
        pytest.param(["cpa", "--epochs", "10", "--warmup", "10"], "warmup_epochs: must be < epochs", id="warmup"),
        pytest.param(["cpa", "--epochs", "10", "--power", "0.5"], "power: must be >= 1, got 0.5", id="power"),
        pytest.param(["cpa", "--epochs", "10", "--max-lr", "0.01", "--min-lr", "0.1"], "0 <= min_lr <= max_lr",
                     id="min_above_max"),  # fmt: skip
        pytest.param(["cosine", "--epochs", "10", "--warmup", "2"], "--warmup: not used by schedule 'cosine'",
                     id="flag_for_other_kind"),  # fmt: skip
        pytest.param(["constant", "--epochs", "10", "--lr", "-1"], "lr: must be >= 0, got -1.0", id="negative_lr"),
        pytest.param(["cpa", "--epochs", "10", "--plot", "/nonexistent-dir/x.png"], "does not exist", id="plot_dir"),
        pytest.param(["cpa", "--epochs", "10", "--min-lr", "0", "--log-y", "--plot", "{tmp}/x.png"], "--log-y",
                     id="log_y_with_zero"),  # fmt: skip
    ],
)
def test_bad_input_exits_2_with_message(capsys, tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("nas-service schedule: error:") and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["cpa"], id="missing_epochs"),
        pytest.param(["cpa", "--epochs", "ten"], id="non_integer_epochs"),
        pytest.param(["step", "--epochs", "3"], id="unknown_kind"),
    ],
)
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(["schedule", *argv])
    assert info.value.code == 2


def test_output_format_is_ten_significant_digits(capsys):
    _, out, _ = _run(capsys, "cpa", "--epochs", "4", "--max-lr", "0.1", "--min-lr", "0", "--power", "1", "--warmup", "0")
    _, values = _parse(out)
    c = (1 + np.cos(np.pi * np.arange(1, 5) / 4)) / 2
    for line, v in zip(out.splitlines(), 0.1 * c / c[0]):
        assert line.split(" ")[1] == f"{v:.10g}"
    assert values[0] == 0.1 and values[-1] == 0.0

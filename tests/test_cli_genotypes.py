"""``nas-service genotypes``: lists every published genotype with its final network's size and cost."""

from __future__ import annotations

import json

import pytest

from nas_service import cli
from search_spaces.genotypes import get_published, list_published
from search_spaces.networks import build_network, count_multiply_adds, count_parameters


@pytest.fixture(autouse=True)
def _only_this_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registers only the ``genotypes`` subcommand: these tests do not depend on other commands' imports."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("genotypes",))


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    assert cli.main(["genotypes", "--format", "json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_table_lists_every_published_genotype_in_aligned_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["genotypes", "--no-madds"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# cifar10: C=36, 20 cells, mid channels 32, 10 classes, input 3x32x32")
    header, rows = lines[1], lines[2:]
    assert [row.split()[0] for row in rows] == list_published()
    # Aligned: the op-set column starts at the same offset in every line, numbers end where "params" ends.
    op_col, params_end = header.index("op set"), header.index("params") + len("params")
    for row in rows:
        assert row[op_col - 2 : op_col] == "  " and row[op_col] != " "
        assert row[params_end - 1] == "M" and row[params_end] == " "
    row = next(r for r in rows if r.startswith("SHARPSEPCONV_DARTS "))
    assert row.split()[1:3] == ["sharp", "3.56M"]


def test_json_rows_carry_counts_of_the_published_op_set(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(capsys, "--no-madds")
    assert [r["name"] for r in rows] == list_published()
    by_name = {r["name"]: r for r in rows}
    assert by_name["DARTS_V2"]["op_set"] == "darts"
    sharp = by_name["SHARP_DARTS"]
    assert sharp["op_set"] == "sharp" and sharp["multiply_adds"] is None and sharp["error"] is None
    assert sharp["params"] == count_parameters(build_network("SHARP_DARTS", kind="cifar"))
    sizes = (sharp["init_channels"], sharp["layers"], sharp["mid_channels"], sharp["input_shape"])
    assert sizes == (36, 20, 32, [3, 32, 32])


def test_ops_override_builds_darts_v2_with_sharp_ops(capsys: pytest.CaptureFixture[str]) -> None:
    (row,) = _json(capsys, "DARTS_V2", "--ops", "sharp", "--no-madds")
    assert row["op_set"] == "sharp" and row["published_op_set"] == "darts"
    assert round(row["params"] / 1e6, 1) == 3.5  # the paper's "DARTS+SSC, no search"


def test_ops_override_that_lacks_ops_reports_them_per_row(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(capsys, "SHARP_DARTS", "DARTS_V1", "--ops", "darts", "--no-madds")
    assert rows[0]["params"] is None
    assert "choke_conv_3x3" in rows[0]["error"] and "'sharp'" in rows[0]["error"]
    assert rows[1]["params"] is not None and rows[1]["error"] is None
    assert cli.main(["genotypes", "SHARP_DARTS", "--ops", "darts", "--no-madds"]) == 0
    assert "choke_conv_3x3" in capsys.readouterr().out


def test_imagenet_defaults_and_mid_channels(capsys: pytest.CaptureFixture[str]) -> None:
    (default,) = _json(capsys, "SHARP_DARTS", "--dataset", "imagenet", "--no-madds")
    (choked,) = _json(capsys, "SHARP_DARTS", "--dataset", "imagenet", "--mid-channels", "32", "--no-madds")
    assert (default["init_channels"], default["layers"], default["mid_channels"]) == (48, 14, 96)
    assert default["num_classes"] == 1000 and default["input_shape"] == [3, 224, 224]
    assert round(default["params"] / 1e6, 2) == 3.71 and round(choked["params"] / 1e6, 2) == 3.17


def test_size_flags_change_the_network(capsys: pytest.CaptureFixture[str]) -> None:
    (small,) = _json(capsys, "SHARPSEPCONV_DARTS", "--init-channels", "8", "--layers", "5", "--no-madds")
    expected = build_network("SHARPSEPCONV_DARTS", kind="cifar", C=8, layers=5)
    assert small["params"] == count_parameters(expected)


@pytest.mark.slow
def test_multiply_adds_for_cifar10(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(capsys)
    assert all(isinstance(r["multiply_adds"], int) and r["multiply_adds"] > 0 for r in rows)
    assert all(r["madds_convention"] == "conv_linear" for r in rows)
    by_name = {r["name"]: r for r in rows}
    net = build_network("SHARP_DARTS", kind="cifar")
    assert by_name["SHARP_DARTS"]["multiply_adds"] == count_multiply_adds(net, (3, 32, 32))
    assert cli.main(["genotypes", "SHARP_DARTS", "--madds-convention", "reference"]) == 0
    out = capsys.readouterr().out
    assert " 0.357B " in out.splitlines()[-1]  # the paper's 0.357B for sharpDARTS on CIFAR-10


def test_unknown_name_and_bad_sizes_fail_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["genotypes", "NOT_A_GENOTYPE", "--no-madds"]) == 2
    err = capsys.readouterr().err
    assert "NOT_A_GENOTYPE" in err and "SHARP_DARTS" in err and "Traceback" not in err
    assert cli.main(["genotypes", "--layers", "0", "--no-madds"]) == 2
    assert "--layers must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["genotypes", "--ops", "nope"])


def test_published_op_set_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(capsys, "--no-madds")
    assert all(r["op_set"] == get_published(r["name"]).op_set for r in rows)

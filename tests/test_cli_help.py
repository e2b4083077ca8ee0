"""`nas-service --help` and every command's --help print (argparse expands % in help texts: a stray one crashes)."""

from __future__ import annotations

import argparse

import pytest

from nas_service.cli import build_parser, main


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in _commands()], ids=lambda a: " ".join(a))
def test_help_prints(argv, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    assert "usage: nas-service" in capsys.readouterr().out

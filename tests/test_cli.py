"""The command line: help on every step, clear errors naming the file and line."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.main import build_parser, main
from services.settings import load_settings

COMMANDS = [
    ["data", "generate"],
    ["features", "apply"],
    ["features", "materialize"],
    ["model", "train"],
    ["serve"],
    ["demo"],
    ["bench", "serving"],
    ["bench", "capacity"],
    ["bench", "telemetry"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*cmd, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: creditauth " + " ".join(cmd) in out
    assert "--data-dir" in out


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "creditauth"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "serve" in out.stdout and "demo" in out.stdout


def test_settings_file_errors_name_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("serving:\n  port: 50051\n  max_batch_sise: 10\n")
    with pytest.raises(SystemExit) as info:
        main(["model", "train", "--config", str(cfg)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "settings.yaml" in err and "serving.max_batch_sise" in err


def test_settings_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    from services.errors import ConfigError

    cfg = tmp_path / "s.yaml"
    cfg.write_text("serving:\n  port: 1\n   bad: [\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:\d+: invalid YAML"):
        load_settings(cfg)


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["features", "apply", "--data-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "run `creditauth data generate` first" in capsys.readouterr().err


def test_version() -> None:
    from importlib import metadata

    out = subprocess.run([sys.executable, "-m", "services.cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"creditauth {metadata.version('creditauth')}"


def _undocumented(parser: argparse.ArgumentParser, path: list[str]) -> list[str]:
    """Every option and positional without a help text, in a parser and its sub-commands."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _undocumented(sub, [*path, name])
        elif not action.help:
            out.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    return out


def test_every_option_says_what_it_does() -> None:
    from loadtest.cli import build_parser as loadtest_parser


    assert _undocumented(build_parser(), ["creditauth"]) == []
    lt = loadtest_parser()
    assert _undocumented(lt, ["creditauth", "loadtest"]) == []
    assert lt.format_usage().startswith("usage: creditauth loadtest "), "named as the user calls it"

"""docs/settings.md is what ``creditauth settings reference`` prints: the settings models' own
keys, defaults, bounds and comments, never a hand-kept copy that drifts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.cli.settings_doc import reference
from services.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_the_reference_in_docs_is_current() -> None:
    assert DOC.read_text() == reference(), "regenerate: creditauth settings reference > docs/settings.md"


def test_every_key_of_every_section_is_listed() -> None:
    text = reference()
    for section in ("features", "serving", "ray", "ray.autoscaling", "telemetry", "security", "decision_log"):
        assert f"## `{section}`" in text, section
    for name in Settings.model_fields["serving"].annotation.model_fields:  # type: ignore[union-attr]
        assert f"| `{name}` |" in text, name
    assert "| `max_wait_ms` | float | `2.0` | >= 0 | ... and, while earlier batches" in text


def test_the_command_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "services.cli.main", "settings", "reference"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == reference()

"""The API's protos pass ``buf lint`` (proto/buf.yaml says which naming rules the published
API keeps, and why), and ``buf breaking`` holds them to the released API (the image in
proto/released/) and catches a breaking change. buf comes from PyPI (``buf-bin``, the dev extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parents[1] / "proto"
RELEASED = PROTO / "released" / "creditauth-v1-0.1.0.binpb"


@pytest.fixture(scope="module")
def buf() -> str:
    beside = Path(sys.executable).parent / "buf"
    found = str(beside) if beside.exists() else shutil.which("buf")
    if found is None:
        pytest.skip("buf is not installed (pip install buf-bin; the dev extra has it)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


def test_buf_lint_is_clean(buf: str) -> None:
    out = _run(buf, "lint", str(PROTO))
    assert out.returncode == 0, out.stdout + out.stderr


def test_nothing_breaks_the_released_api(buf: str) -> None:
    out = _run(buf, "breaking", str(PROTO), "--against", str(RELEASED))
    assert out.returncode == 0, out.stdout + out.stderr


def test_buf_breaking_catches_a_removed_field(buf: str, tmp_path: Path) -> None:
    changed = tmp_path / "proto"
    shutil.copytree(PROTO, changed, ignore=shutil.ignore_patterns("python", "released"))
    api = changed / "creditauth" / "v1" / "authorization.proto"
    text = api.read_text()
    lines = [ln for ln in text.splitlines() if "string merchant_id" not in ln]
    assert len(lines) < len(text.splitlines()), "the field the test removes is in the API"
    api.write_text("\n".join(lines) + "\n")
    broken = _run(buf, "breaking", str(changed), "--against", str(RELEASED))
    assert broken.returncode != 0 and "merchant_id" in broken.stdout + broken.stderr

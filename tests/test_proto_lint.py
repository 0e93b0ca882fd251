"""The API's protos pass ``buf lint`` (proto/buf.yaml says which naming rules the published
API keeps, and why), and ``buf breaking`` catches a breaking change. buf comes from npm
(@bufbuild/buf), installed once into a cache directory; skipped where npm is absent."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parents[1] / "proto"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "creditauth-buf"
BUF_VERSION = "1.75.0"


@pytest.fixture(scope="module")
def buf() -> str:
    found = shutil.which("buf")
    if found:
        return found
    local = CACHE / "node_modules" / ".bin" / "buf"
    if not local.exists():
        if shutil.which("npm") is None:
            pytest.skip("buf is not installed and npm is absent (npm install @bufbuild/buf)")
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(CACHE),
             f"@bufbuild/buf@{BUF_VERSION}"],
            capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0 or not local.exists():
            pytest.skip(f"could not install buf from npm: {done.stderr.strip()[-300:]}")
    return str(local)


def test_buf_lint_is_clean(buf: str) -> None:
    out = subprocess.run([buf, "lint", str(PROTO)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_buf_breaking_catches_a_removed_field(buf: str, tmp_path: Path) -> None:
    changed = tmp_path / "proto"
    shutil.copytree(PROTO, changed, ignore=shutil.ignore_patterns("python"))
    api = changed / "creditauth" / "v1" / "authorization.proto"
    text = api.read_text()
    lines = [ln for ln in text.splitlines() if "string merchant_id" not in ln]
    assert len(lines) < len(text.splitlines()), "the field the test removes is in the API"
    api.write_text("\n".join(lines) + "\n")
    same = subprocess.run([buf, "breaking", str(PROTO), "--against", str(PROTO)],
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0, same.stdout + same.stderr
    broken = subprocess.run([buf, "breaking", str(changed), "--against", str(PROTO)],
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0 and "merchant_id" in broken.stdout + broken.stderr

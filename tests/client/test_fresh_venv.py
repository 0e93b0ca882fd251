"""The client installs on its own: a fresh virtual environment, ``pip install`` of the
package from a copy of ``proto/`` (PyPI for its dependencies and build tools), no Ray, no
Feast, typed stubs that mypy uses, and real calls against a real front end.

Slow (a minute or two: pip downloads grpcio-tools to build and grpcio to run); skipped when
the package index cannot be reached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.frontend import FrontEnd

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PIP_TIMEOUT_S = 600
# What a caller's environment holds after installing the client (pip's own tools aside).
ALLOWED = {"creditauth-client", "grpcio", "protobuf", "googleapis-common-protos", "typing-extensions",
           "pip", "setuptools", "wheel"}


def _index_reachable() -> str | None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/") + "/grpcio/"
    try:
        with urllib.request.urlopen(index, timeout=10) as r:
            return None if r.status == 200 else f"{index} answered {r.status}"
    except (urllib.error.URLError, OSError) as err:
        return f"{index} unreachable: {err}"


def _copy_sources(dest: Path) -> Path:
    """proto/python and the .proto files only: the build must need nothing else of the repo."""
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*_pb2*.py", "*_pb2*.pyi")
    shutil.copytree(ROOT / "proto" / "python", dest / "proto" / "python", ignore=ignore)
    (dest / "proto" / "creditauth" / "v1").mkdir(parents=True)
    for proto in (ROOT / "proto" / "creditauth" / "v1").glob("*.proto"):
        shutil.copy2(proto, dest / "proto" / "creditauth" / "v1" / proto.name)
    return dest / "proto" / "python"


def _run(argv: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{argv} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out  # type: ignore[no-any-return]


def test_installs_alone_and_calls(front_end: FrontEnd, tmp_path: Path) -> None:
    reason = _index_reachable()
    if reason:
        pytest.skip(f"the package index is needed to install the client: {reason}")
    source = _copy_sources(tmp_path / "src")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", "--timeout", "30"]
    _run([*pip, "install", str(source)], timeout=PIP_TIMEOUT_S)
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
           "CREDITAUTH_TARGET": f"127.0.0.1:{front_end.port}"}

    report = json.loads(_run([python, "-I", str(HERE / "venv_check.py")], timeout=120, env=env,
                             cwd=tmp_path).stdout)
    assert report["absent"] == {"ray": True, "feast": True, "lightgbm": True, "services": True, "creditauth": True}
    assert set(report["distributions"]) <= ALLOWED, set(report["distributions"]) - ALLOWED
    assert {"creditauth-client", "grpcio", "protobuf"} <= set(report["distributions"])
    assert report["version"] == "0.1.0" and report["py_typed"]
    assert report["stubs"] == ["authorization_pb2.pyi", "authorization_pb2_grpc.pyi",
                               "controls_pb2.pyi", "controls_pb2_grpc.pyi"]
    assert report["decision"] in (1, 2, 3) and report["decision_id"]
    assert report["refusal"] == {"code": "INVALID_ARGUMENT", "reason": "INVALID_FIELD",
                                 "fields": ["requested_amount.currency"]}

    # The examples run as shipped.
    for example, expect in (("authorize.py", "INVALID_ARGUMENT INVALID_FIELD"), ("authorize_async.py", "stream")):
        out = _run([python, "-I", str(source / "examples" / example)], timeout=120, env=env, cwd=tmp_path)
        assert expect in out.stdout, out.stdout

    _typed_stubs_check(pip, python, source, tmp_path)


def _typed_stubs_check(pip: list[str], python: str, source: Path, tmp_path: Path) -> None:
    """mypy (the project's) reads the installed stubs: the examples pass --strict, and a
    wrongly typed field is caught, so the stubs are not just Any."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.skip("mypy is not installed in the project's environment")
    _run([*pip, "install", "types-protobuf"], timeout=PIP_TIMEOUT_S)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from creditauth_client import AuthorizationClient\n"
        "from creditauth_client.v1 import authorization_pb2 as pb\n"
        "pb.AuthorizeRequest(term_months='twelve')\n"
        "reveal_type(AuthorizationClient.authorize)\n"
    )
    base = [mypy, "--python-executable", python, "--no-incremental", "--ignore-missing-imports"]
    _run([*base, "--strict", str(source / "examples")], timeout=300, cwd=tmp_path)
    out = subprocess.run([*base, str(bad)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 1, out.stdout
    assert 'Argument "term_months" to "AuthorizeRequest" has incompatible type "str"' in out.stdout, out.stdout
    assert "AuthorizeResponse" in out.stdout, out.stdout

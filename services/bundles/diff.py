"""What differs between two bundles: files, policy keys, model and training metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from services.bundles.manifest import POLICY, TRAINING, Bundle


@dataclass(frozen=True)
class Change:
    section: str  # "file", "policy", "model", "training"
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.section} {self.key}: {_short(self.old)} -> {_short(self.new)}"


def _short(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


_ABSENT = object()


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """A nested document as ``{"grades[1].max_pd": 0.04, ...}``."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = doc
    return out


def _changes(section: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    keys = sorted(set(old) | set(new))
    return [Change(section, k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys
            if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def _policy(b: Bundle) -> dict[str, Any]:
    try:
        return flatten(yaml.safe_load(b.files[POLICY]))
    except yaml.YAMLError:
        return {"<unparseable>": True}


def diff(a: Bundle, b: Bundle) -> list[Change]:
    """Every difference from ``a`` to ``b`` (empty: the same bundle)."""
    ma, mb = a.manifest, b.manifest
    out = _changes("file", ma["files"], mb["files"])
    out += _changes("model", flatten(ma["model"]), flatten(mb["model"]))
    out += _changes("policy", _policy(a), _policy(b))
    out += _changes("training", flatten(json.loads(a.files[TRAINING])), flatten(json.loads(b.files[TRAINING])))
    return out

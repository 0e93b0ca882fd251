"""Strict reading of a YAML document, with errors that name the file, line and key.

PyYAML's ``safe_load`` forgets where values came from and silently keeps the
last of duplicate keys. Campaign files gate launches, so a typo must fail
loudly and point at itself: we compose the node tree (which keeps marks) and
check every key and value against what the schema expects.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class SchemaError(ValueError):
    """Every problem found in one file, one ``file:line:col: key: message`` per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Reader:
    """Typed accessors over composed YAML nodes; problems are collected, not raised one by one."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.problems: list[str] = []
        self._construct = SafeConstructor()

    def compose(self, text: str) -> yaml.Node | None:
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{self.path}:{mark.line + 1}:{mark.column + 1}" if mark else self.path
            self.problems.append(f"{where}: invalid YAML: {exc.problem}")
        except yaml.YAMLError as exc:
            self.problems.append(f"{self.path}: invalid YAML: {exc}")
        return None

    def fail(self, node: yaml.Node | None, where: str, message: str) -> None:
        if node is None:
            self.problems.append(f"{self.path}: {where}: {message}")
        else:
            m = node.start_mark
            self.problems.append(f"{self.path}:{m.line + 1}:{m.column + 1}: {where}: {message}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise SchemaError(self.problems)

    # --- structure ------------------------------------------------------------

    def mapping(
        self, node: yaml.Node, where: str, allowed: Collection[str], required: Collection[str] = ()
    ) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, where or "document", "must be a mapping of keys to values")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            at = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str):
                self.fail(key_node, where or "document", "keys must be plain strings")
            elif key in out:
                self.fail(key_node, at, "duplicate key")
            elif key not in allowed:
                hint = difflib.get_close_matches(key, list(allowed), n=1)
                tail = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.fail(key_node, at, f"unknown key{tail}; allowed: {', '.join(sorted(allowed))}")
            else:
                out[key] = value
        for key in required:
            if key not in out:
                self.fail(node, where or "document", f"missing required key {key!r}")
        return out

    def sequence(self, node: yaml.Node, where: str, *, min_len: int = 0) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, where, "must be a list")
            return []
        if len(node.value) < min_len:
            self.fail(node, where, f"must have at least {min_len} item(s)")
        return list(node.value)

    # --- scalars --------------------------------------------------------------

    def _scalar(self, node: yaml.Node, where: str) -> tuple[bool, Any]:
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, where, "must be a single value, not a list or mapping")
            return False, None
        return True, self._construct.construct_object(node, deep=True)

    def string(self, node: yaml.Node, where: str, *, pattern: str | None = None) -> str | None:
        ok, v = self._scalar(node, where)
        if not ok:
            return None
        if not isinstance(v, str) or not v:
            self.fail(node, where, f"must be a non-empty string, got {v!r}")
            return None
        if pattern is not None and not re.fullmatch(pattern, v):
            self.fail(node, where, f"must match {pattern}, got {v!r}")
            return None
        return v

    def boolean(self, node: yaml.Node, where: str) -> bool | None:
        ok, v = self._scalar(node, where)
        if ok and not isinstance(v, bool):
            self.fail(node, where, f"must be true or false, got {v!r}")
            return None
        return v if ok else None

    def choice(self, node: yaml.Node, where: str, choices: Collection[str]) -> str | None:
        v = self.string(node, where)
        if v is not None and v not in choices:
            self.fail(node, where, f"must be one of {', '.join(choices)}, got {v!r}")
            return None
        return v

    def number(
        self,
        node: yaml.Node,
        where: str,
        *,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
        integer: bool = False,
    ) -> float | None:
        ok, v = self._scalar(node, where)
        if not ok:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
            self.fail(node, where, f"must be {'an integer' if integer else 'a number'}, got {v!r}")
            return None
        return self._bounded(node, where, float(v), lo=lo, hi=hi, lo_open=lo_open)

    def integer(self, node: yaml.Node, where: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self.number(node, where, lo=lo, hi=hi, integer=True)
        return None if v is None else int(v)

    def duration(
        self, node: yaml.Node, where: str, *, lo: float = 0.0, hi: float | None = None, lo_open: bool = True
    ) -> float | None:
        """Seconds, from a number (seconds) or a string such as ``500ms``, ``30s``, ``2m``, ``1h30m``."""
        ok, v = self._scalar(node, where)
        if not ok:
            return None
        if isinstance(v, int | float) and not isinstance(v, bool):
            seconds = float(v)
        elif isinstance(v, str) and _DURATION.fullmatch(v.strip()):
            seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(v))
        else:
            self.fail(node, where, f"must be a duration like 500ms, 30s, 2m or 1h, got {v!r}")
            return None
        return self._bounded(node, where, seconds, lo=lo, hi=hi, lo_open=lo_open)

    def _bounded(
        self, node: yaml.Node, where: str, v: float, *, lo: float | None, hi: float | None, lo_open: bool
    ) -> float | None:
        if lo is not None and (v < lo or (lo_open and v == lo)):
            self.fail(node, where, f"must be {'>' if lo_open else '>='} {lo:g}, got {v:g}")
            return None
        if hi is not None and v > hi:
            self.fail(node, where, f"must be <= {hi:g}, got {v:g}")
            return None
        return v

"""Policy rules: vectorised conjunctions of feature thresholds and tag tests.

Spec (a plain dict)::

    {
      "n_features": 40,          # width of X (required if any feature condition)
      "n_tags": 1024,            # tags per row (required if any tag condition)
      "rules": [
        {"name": "thin_file_high_util",
         "all": [
           {"feature": 3, "op": ">", "value": 0.9},
           {"feature": 7, "op": "is_missing"},
           {"tag": 17, "op": "has"},
           {"tag": 4, "op": "lacks"},
           {"tags": [100, 101, 102], "op": "any"},
           {"tags": [5, 6], "op": "all"},
         ]},
        ...
      ]
    }

Feature ops: ``<, <=, >, >=, ==, !=`` against ``value``, ``is_missing`` and
``not_missing``. A missing (NaN) value satisfies no comparison, not even
``!=``: write ``is_missing`` to catch it. float32 inputs are widened exactly
to double and compared with the double ``value``.

Tags: each row carries ``n_tags`` booleans packed as little-endian uint64
words, tag ``t`` is bit ``t % 64`` of word ``t // 64`` (so ``tags`` is a
``(n_rows, ceil(n_tags / 64))`` uint64 array). Tag ops: ``has``, ``lacks``
(one ``tag``), ``any``, ``all``, ``none`` (a list of ``tags``).

A rule fires when all its conditions hold. :meth:`PolicyRules.evaluate`
returns a bool matrix ``(n_rows, n_rules)``; :meth:`PolicyRules.evaluate_packed`
returns uint64 ``(n_rows, ceil(n_rules / 64))`` with rule ``j`` at bit
``j % 64`` of word ``j // 64`` (the same layout as the tags).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels._rules import RulesKernel
from kernels._validate import check_matrix
from kernels.errors import InputDtypeError, InputShapeError, SpecError

__all__ = ["Condition", "PolicyRules", "Rule", "pack_tags"]

FEATURE_OPS = {"<": 0, "<=": 1, ">": 2, ">=": 3, "==": 4, "!=": 5, "is_missing": 6,
               "not_missing": 7}
_VALUELESS = frozenset({"is_missing", "not_missing"})
TAG_OPS = {"has": 0, "all": 0, "any": 1, "lacks": 2, "none": 2}
_SINGLE_TAG = frozenset({"has", "lacks"})
_U64 = np.dtype("<u8")


@dataclass(frozen=True)
class Condition:
    """A feature condition (``feature`` set) or a tag condition (``tags`` set)."""

    op: str
    feature: int | None = None
    value: float | None = None
    tags: tuple[int, ...] = ()


@dataclass(frozen=True)
class Rule:
    name: str
    conditions: tuple[Condition, ...]


def _int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"{where}: {what} must be an int >= 0, got {value!r}")
    return value


def _parse_condition(raw: Any, where: str) -> Condition:
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: a condition must be a mapping, got {raw!r}")
    if "feature" in raw:
        return _feature_condition(raw, where)
    return _tag_condition(raw, where)


def _feature_condition(raw: Mapping[str, Any], where: str) -> Condition:
    op = raw.get("op")
    if set(raw) - {"feature", "op", "value"}:
        raise SpecError(f"{where}: unknown keys {sorted(set(raw) - {'feature', 'op', 'value'})}")
    if op not in FEATURE_OPS:
        raise SpecError(f"{where}: feature op must be one of {sorted(FEATURE_OPS)}, got {op!r}")
    feature = _int(raw["feature"], "'feature'", where)
    if op in _VALUELESS:
        if "value" in raw:
            raise SpecError(f"{where}: op {op!r} takes no 'value'")
        return Condition(op=op, feature=feature)
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SpecError(f"{where}: op {op!r} needs a numeric, non-NaN 'value'")
    return Condition(op=op, feature=feature, value=float(value))


def _tag_condition(raw: Mapping[str, Any], where: str) -> Condition:
    op = raw.get("op")
    if op not in TAG_OPS:
        raise SpecError(
            f"{where}: condition needs 'feature' or a tag op in {sorted(TAG_OPS)}, got {op!r}"
        )
    if op in _SINGLE_TAG:
        if set(raw) != {"tag", "op"}:
            raise SpecError(f"{where}: op {op!r} takes exactly one 'tag'")
        return Condition(op=op, tags=(_int(raw["tag"], "'tag'", where),))
    if set(raw) != {"tags", "op"}:
        raise SpecError(f"{where}: op {op!r} takes a 'tags' list")
    tags_raw = raw["tags"]
    if not isinstance(tags_raw, Sequence) or isinstance(tags_raw, str) or not tags_raw:
        raise SpecError(f"{where}: 'tags' must be a non-empty list of tag indices")
    return Condition(op=op, tags=tuple(sorted({_int(t, "tag", where) for t in tags_raw})))


class PolicyRules:
    """A validated, compiled rule set. Build with :meth:`from_dict`."""

    __slots__ = ("_kernel", "_n_features", "_n_tags", "_rules")

    def __init__(self, rules: Sequence[Rule], n_features: int = 0, n_tags: int = 0) -> None:
        self._rules = tuple(rules)
        if not self._rules:
            raise SpecError("a rule set needs at least one rule")
        self._n_features = int(n_features)
        self._n_tags = int(n_tags)
        for rule in self._rules:
            for c in rule.conditions:
                if c.feature is not None and c.feature >= self._n_features:
                    raise SpecError(
                        f"rule {rule.name!r}: feature {c.feature} >= n_features {self._n_features}"
                    )
                if c.tags and max(c.tags) >= self._n_tags:
                    raise SpecError(
                        f"rule {rule.name!r}: tag {max(c.tags)} >= n_tags {self._n_tags}"
                    )
        self._kernel = RulesKernel(self._compile(), self._n_features, self.n_tag_words)

    def _compile(self) -> dict[str, np.ndarray]:
        f_off: list[int] = [0]
        f_col: list[int] = []
        f_op: list[int] = []
        f_val: list[float] = []
        t_off: list[int] = [0]
        t_op: list[int] = []
        t_w0: list[int] = []
        t_nw: list[int] = []
        t_moff: list[int] = []
        masks: list[int] = []
        for rule in self._rules:
            for c in rule.conditions:
                if c.feature is not None:
                    f_col.append(c.feature)
                    f_op.append(FEATURE_OPS[c.op])
                    f_val.append(0.0 if c.value is None else c.value)
                else:
                    w0 = c.tags[0] // 64
                    w1 = c.tags[-1] // 64 + 1
                    words = [0] * (w1 - w0)
                    for t in c.tags:
                        words[t // 64 - w0] |= 1 << (t % 64)
                    t_op.append(TAG_OPS[c.op])
                    t_w0.append(w0)
                    t_nw.append(w1 - w0)
                    t_moff.append(len(masks))
                    masks.extend(words)
            f_off.append(len(f_col))
            t_off.append(len(t_op))
        return {
            "f_off": np.array(f_off, dtype=np.int32),
            "f_col": np.array(f_col, dtype=np.int32),
            "f_op": np.array(f_op, dtype=np.int32),
            "f_val": np.array(f_val, dtype=np.float64),
            "t_off": np.array(t_off, dtype=np.int32),
            "t_op": np.array(t_op, dtype=np.int32),
            "t_word0": np.array(t_w0, dtype=np.int32),
            "t_nwords": np.array(t_nw, dtype=np.int32),
            "t_mask_off": np.array(t_moff, dtype=np.int32),
            "masks": np.array(masks, dtype=np.uint64),
        }

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> PolicyRules:
        """Validate a spec dict; SpecError messages name the offending rule."""
        if not isinstance(spec, Mapping):
            raise SpecError(f"rules spec must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - {"rules", "n_features", "n_tags"}
        if unknown:
            raise SpecError(f"rules spec: unknown keys {sorted(unknown)}")
        nf = spec.get("n_features", 0)
        nt = spec.get("n_tags", 0)
        _int(nf, "'n_features'", "rules spec")
        _int(nt, "'n_tags'", "rules spec")
        raw_rules = spec.get("rules")
        if not isinstance(raw_rules, Sequence) or isinstance(raw_rules, str) or not raw_rules:
            raise SpecError("rules spec: 'rules' must be a non-empty list")
        rules: list[Rule] = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_rules):
            if not isinstance(raw, Mapping):
                raise SpecError(f"rule #{i}: must be a mapping")
            name = raw.get("name")
            if not isinstance(name, str) or not name:
                raise SpecError(f"rule #{i}: 'name' must be a non-empty string")
            where = f"rule {name!r}"
            if name in seen:
                raise SpecError(f"{where}: duplicate name")
            seen.add(name)
            if set(raw) != {"name", "all"}:
                raise SpecError(f"{where}: expected keys 'name' and 'all' (a list of conditions)")
            conds = raw["all"]
            if not isinstance(conds, Sequence) or isinstance(conds, str) or not conds:
                raise SpecError(f"{where}: 'all' must be a non-empty list of conditions")
            rules.append(Rule(name, tuple(_parse_condition(c, where) for c in conds)))
        return cls(rules, nf, nt)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self._rules)

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def n_tags(self) -> int:
        return self._n_tags

    @property
    def n_tag_words(self) -> int:
        return (self._n_tags + 63) // 64

    def _inputs(
        self, X: npt.NDArray[Any] | None, tags: npt.NDArray[Any] | None
    ) -> tuple[np.ndarray | None, np.ndarray | None, int]:
        n: int | None = None
        x = None
        t = None
        if self._n_features:
            if X is None:
                raise InputShapeError(f"these rules read features: pass X (n, {self._n_features})")
            x = check_matrix(X, self._n_features)
            n = x.shape[0]
        if self._n_tags:
            if tags is None:
                raise InputShapeError(f"these rules read tags: pass tags (n, {self.n_tag_words})")
            if not isinstance(tags, np.ndarray) or tags.dtype != _U64:
                raise InputDtypeError("tags must be a uint64 (little-endian) numpy array")
            if tags.ndim != 2 or tags.shape[1] != self.n_tag_words:
                raise InputShapeError(
                    f"tags must have shape (n_rows, {self.n_tag_words}), got {tags.shape}"
                )
            if not (tags.flags.c_contiguous and tags.flags.aligned):
                raise InputDtypeError("tags must be C-contiguous; pass np.ascontiguousarray(tags)")
            if n is not None and tags.shape[0] != n:
                raise InputShapeError(f"X has {n} rows but tags has {tags.shape[0]}")
            t = tags
            n = tags.shape[0]
        if n is None:
            n = X.shape[0] if isinstance(X, np.ndarray) and X.ndim >= 1 else 0
        return x, t, n

    def evaluate(
        self, X: npt.NDArray[Any] | None = None, tags: npt.NDArray[Any] | None = None
    ) -> npt.NDArray[np.bool_]:
        """Which rules fire per row: bool (n_rows, n_rules)."""
        x, t, n = self._inputs(X, tags)
        out = np.empty((n, len(self._rules)), dtype=np.bool_)
        self._kernel.evaluate(x, t, n, out, False)
        return out

    def evaluate_packed(
        self, X: npt.NDArray[Any] | None = None, tags: npt.NDArray[Any] | None = None
    ) -> npt.NDArray[np.uint64]:
        """Fired rules as bits: uint64 (n_rows, ceil(n_rules / 64)), rule j = bit j % 64
        of word j // 64."""
        x, t, n = self._inputs(X, tags)
        out = np.empty((n, (len(self._rules) + 63) // 64), dtype=np.uint64)
        self._kernel.evaluate(x, t, n, out, True)
        return out

    def fired_names(self, fired: npt.NDArray[np.bool_]) -> list[list[str]]:
        """Names of the fired rules per row, from :meth:`evaluate`'s matrix."""
        names = self.names
        return [[names[j] for j in np.flatnonzero(row)] for row in np.asarray(fired)]


def pack_tags(tag_lists: Sequence[Sequence[int]], n_tags: int) -> npt.NDArray[np.uint64]:
    """Helper: pack per-row lists of tag indices into the (n, ceil(n_tags/64)) layout."""
    words = (n_tags + 63) // 64
    out = np.zeros((len(tag_lists), words), dtype=np.uint64)
    for i, tl in enumerate(tag_lists):
        for t in tl:
            if not 0 <= t < n_tags:
                raise InputShapeError(f"row {i}: tag {t} outside [0, {n_tags})")
            out[i, t // 64] |= np.uint64(1) << np.uint64(t % 64)
    return out

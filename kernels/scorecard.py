"""Scorecards: binned points tables with adverse-action reasons.

Spec (a plain dict, JSON/YAML friendly)::

    {
      "base_points": 600,
      "n_features": 40,                      # optional: exact X width to require
      "characteristics": [
        {"name": "utilization", "feature": 3,
         "edges": [0.0, 0.1, 0.3, 0.6, 1.0],  # 4 bins: [0,.1) [.1,.3) [.3,.6) [.6,1]
         "points": [55, 40, 22, 5],
         "missing_points": 15,
         "out_of_range": "clamp"},           # or {"points": -10}
        ...
      ]
    }

Binning: ``m + 1`` strictly increasing edges make ``m`` bins; bin ``i`` is
``[edges[i], edges[i+1])`` and the last bin also contains ``edges[m]``. NaN
scores ``missing_points``. Values below the first / above the last edge
(including +-inf unless the edge itself is infinite) are *out of range*:
``"clamp"`` (default) scores the first / last bin, ``{"points": p}`` scores
``p``. float32 inputs are compared exactly (widened to double).

Score = base_points + sum of the characteristics' points. Adverse-action
reasons rank characteristics by points lost, ``max_points - points``, where
``max_points`` is the best score the characteristic can give (over its bins,
its missing points and its out-of-range points). Only characteristics that
lost points are reported; ties go to the earlier characteristic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels._scorecard import ScorecardKernel
from kernels._validate import check_matrix, check_top_k
from kernels.errors import InputShapeError, SpecError

__all__ = ["Characteristic", "Scorecard"]

_CHAR_KEYS = frozenset({"name", "feature", "edges", "points", "missing_points", "out_of_range"})
_TOP_KEYS = frozenset({"base_points", "characteristics", "n_features", "name"})


@dataclass(frozen=True)
class Characteristic:
    """One validated characteristic (see the module docstring)."""

    name: str
    feature: int
    edges: tuple[float, ...]
    points: tuple[float, ...]
    missing_points: float
    out_of_range_points: float | None  # None: clamp

    @property
    def max_points(self) -> float:
        best = max(*self.points, self.missing_points)
        if self.out_of_range_points is not None:
            best = max(best, self.out_of_range_points)
        return best


def _number(value: Any, what: str, where: str, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}: {what} must be a number, got {value!r}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise SpecError(f"{where}: {what} must be finite, got {value!r}")
    return v


def _parse_characteristic(i: int, raw: Any, names: set[str]) -> Characteristic:
    where = f"characteristic #{i}"
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: must be a mapping, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}: 'name' must be a non-empty string")
    where = f"characteristic {name!r}"
    if name in names:
        raise SpecError(f"{where}: duplicate name")
    unknown = set(raw) - _CHAR_KEYS
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}")
    feature = raw.get("feature")
    if isinstance(feature, bool) or not isinstance(feature, int) or feature < 0:
        raise SpecError(f"{where}: 'feature' must be a column index >= 0, got {feature!r}")
    edges, points = _bins(raw, where)
    if "missing_points" not in raw:
        raise SpecError(f"{where}: 'missing_points' is required (points for a missing value)")
    missing = _number(raw["missing_points"], "missing_points", where)
    return Characteristic(name, feature, edges, points, missing, _out_of_range(raw, where))


def _bins(raw: Mapping[str, Any], where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(edges, points)``: strictly increasing edges and one points value per bin."""
    edges_raw = raw.get("edges")
    if not isinstance(edges_raw, Sequence) or isinstance(edges_raw, str) or len(edges_raw) < 2:
        raise SpecError(f"{where}: 'edges' must be a list of at least 2 numbers")
    edges = tuple(_number(e, "edge", where, allow_inf=True) for e in edges_raw)
    if any(b <= a for a, b in pairwise(edges)):
        raise SpecError(f"{where}: 'edges' must be strictly increasing")
    points_raw = raw.get("points")
    if not isinstance(points_raw, Sequence) or isinstance(points_raw, str):
        raise SpecError(f"{where}: 'points' must be a list of numbers")
    points = tuple(_number(p, "points", where) for p in points_raw)
    if len(points) != len(edges) - 1:
        raise SpecError(
            f"{where}: {len(edges)} edges make {len(edges) - 1} bins but {len(points)} points given"
        )
    return edges, points


def _out_of_range(raw: Mapping[str, Any], where: str) -> float | None:
    """Points for an out-of-range value, or None to clamp to the first / last bin."""
    oor_raw = raw.get("out_of_range", "clamp")
    if oor_raw == "clamp":
        return None
    if isinstance(oor_raw, Mapping) and set(oor_raw) == {"points"}:
        return _number(oor_raw["points"], "out_of_range points", where)
    raise SpecError(f"{where}: 'out_of_range' must be \"clamp\" or {{\"points\": number}}")


class Scorecard:
    """A validated, compiled scorecard. Build with :meth:`from_dict`."""

    __slots__ = ("_base", "_chars", "_declared", "_kernel", "_n_features", "_name")

    def __init__(
        self,
        characteristics: Sequence[Characteristic],
        base_points: float = 0.0,
        n_features: int | None = None,
        name: str = "",
    ) -> None:
        chars = tuple(characteristics)
        if not chars:
            raise SpecError("a scorecard needs at least one characteristic")
        need = max(c.feature for c in chars) + 1
        # Without a declared width X may be wider than the columns used.
        self._declared = n_features
        if n_features is None:
            n_features = need
        elif n_features < need:
            bad = max(chars, key=lambda c: c.feature)
            raise SpecError(
                f"characteristic {bad.name!r}: feature {bad.feature} >= n_features {n_features}"
            )
        self._chars = chars
        self._base = float(base_points)
        self._n_features = int(n_features)
        self._name = name
        edge_off = np.cumsum([0] + [len(c.edges) for c in chars]).astype(np.int32)
        pts_off = np.cumsum([0] + [len(c.points) for c in chars]).astype(np.int32)[:-1]
        arrays: dict[str, np.ndarray] = {
            "feature": np.array([c.feature for c in chars], dtype=np.int32),
            "edge_off": edge_off,
            "edges": np.array([e for c in chars for e in c.edges], dtype=np.float64),
            "pts_off": pts_off,
            "points": np.array([p for c in chars for p in c.points], dtype=np.float64),
            "missing": np.array([c.missing_points for c in chars], dtype=np.float64),
            "oor": np.array([c.out_of_range_points or 0.0 for c in chars], dtype=np.float64),
            "oor_mode": np.array(
                [0 if c.out_of_range_points is None else 1 for c in chars], dtype=np.int32
            ),
            "max_points": np.array([c.max_points for c in chars], dtype=np.float64),
        }
        self._kernel = ScorecardKernel(arrays, self._base)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Scorecard:
        """Validate a spec dict; SpecError messages name the offending characteristic."""
        if not isinstance(spec, Mapping):
            raise SpecError(f"scorecard spec must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - _TOP_KEYS
        if unknown:
            raise SpecError(f"scorecard spec: unknown keys {sorted(unknown)}")
        base = _number(spec.get("base_points", 0.0), "base_points", "scorecard spec")
        raw_chars = spec.get("characteristics")
        if not isinstance(raw_chars, Sequence) or isinstance(raw_chars, str) or not raw_chars:
            raise SpecError("scorecard spec: 'characteristics' must be a non-empty list")
        names: set[str] = set()
        chars = []
        for i, raw in enumerate(raw_chars):
            ch = _parse_characteristic(i, raw, names)
            names.add(ch.name)
            chars.append(ch)
        nf = spec.get("n_features")
        if nf is not None and (isinstance(nf, bool) or not isinstance(nf, int) or nf < 1):
            raise SpecError(f"scorecard spec: 'n_features' must be a positive int, got {nf!r}")
        return cls(chars, base, nf, str(spec.get("name", "")))

    def to_dict(self) -> dict[str, Any]:
        """The spec back as a plain dict (round-trips through from_dict)."""
        out: dict[str, Any] = {
            "base_points": self._base,
            "characteristics": [
                {
                    "name": c.name,
                    "feature": c.feature,
                    "edges": list(c.edges),
                    "points": list(c.points),
                    "missing_points": c.missing_points,
                    "out_of_range": (
                        "clamp" if c.out_of_range_points is None
                        else {"points": c.out_of_range_points}
                    ),
                }
                for c in self._chars
            ],
        }
        if self._name:
            out["name"] = self._name
        if self._declared is not None:
            out["n_features"] = self._declared
        return out

    @property
    def characteristics(self) -> tuple[Characteristic, ...]:
        return self._chars

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._chars)

    @property
    def n_features(self) -> int:
        """Columns X must have (declared), or at least have (max feature index + 1)."""
        return self._n_features

    @property
    def base_points(self) -> float:
        return self._base

    def _check(self, X: npt.NDArray[Any]) -> np.ndarray:
        if isinstance(X, np.ndarray) and X.ndim == 2:
            width = X.shape[1]
            if self._declared is not None and width != self._declared:
                raise InputShapeError(
                    f"X has {width} columns; the scorecard declares n_features={self._declared}"
                )
            if width < self._n_features:
                raise InputShapeError(
                    f"X has {width} columns; the scorecard reads columns up to "
                    f"{self._n_features - 1}"
                )
            return check_matrix(X, width)
        return check_matrix(X, self._n_features)

    def score(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Scores for a (n_rows, n_features) float32/float64 C-contiguous matrix."""
        x = self._check(X)
        out = np.empty(x.shape[0], dtype=np.float64)
        self._kernel.score(x, out, None, 0, None, None)
        return out

    def points(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Per-characteristic points, (n_rows, n_characteristics)."""
        x = self._check(X)
        out = np.empty(x.shape[0], dtype=np.float64)
        pts = np.empty((x.shape[0], len(self._chars)), dtype=np.float64)
        self._kernel.score(x, out, pts, 0, None, None)
        return pts

    def score_with_reasons(
        self, X: npt.NDArray[Any], top_k: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        """(score (n,), characteristic index int32 (n, k), points lost float64 (n, k)).

        Most points lost first; -1 / 0.0 where fewer than k characteristics lost points.
        """
        x = self._check(X)
        k = check_top_k(top_k, len(self._chars))
        n = x.shape[0]
        out = np.empty(n, dtype=np.float64)
        idx = np.empty((n, k), dtype=np.int32)
        lost = np.empty((n, k), dtype=np.float64)
        self._kernel.score(x, out, None, k, idx, lost)
        return out, idx, lost

    def reason_names(self, idx: npt.NDArray[np.int32]) -> list[list[str]]:
        """Map a (n, k) index matrix to characteristic names (drops -1)."""
        names = self.names
        return [[names[j] for j in row if j >= 0] for row in np.asarray(idx).tolist()]

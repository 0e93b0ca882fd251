"""Scorecards served as PD models: the points table, its calibration, its reasons.

A scorecard file in a bundle (``scorecard.json``)::

    {
      "scorecard": {"base_points": 600, "characteristics": [...]},   # kernels.Scorecard's spec;
                                                                   # "feature" by index or by name
      "feature_names": ["rev_mean_30d", "apps_24h", ...],           # column k of X is feature k
      "calibration": {"base_score": 600, "base_odds": 30, "pdo": 20}
    }

Points become a PD through the usual points-to-double-the-odds calibration: at
``base_score`` the odds good:bad are ``base_odds``, and every ``pdo`` points doubles them,
so ``PD = 1 / (1 + base_odds * 2 ** ((score - base_score) / pdo))``. The adverse-action
reasons are the characteristics that lost most points, reported as the feature each one
bins, with the points lost as the contribution (positive: adverse), which is how the
decider's policy turns tree models' contributions into reason codes.

The parity gate for a scorecard compares the compiled kernel with ``reference_points``, a
plain numpy evaluation of the same spec written independently of the kernel (bin search
with ``np.searchsorted``): the "source library" of a scorecard is its spec.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels import KernelError, Scorecard

_KEYS = frozenset({"scorecard", "feature_names", "calibration"})


class ScorecardError(ValueError):
    """A scorecard file that cannot be served; the message starts with the field (``field: why``),
    ``line`` is the JSON line where the file is unreadable (0: not known)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Calibration:
    base_score: float
    base_odds: float
    pdo: float

    @classmethod
    def parse(cls, doc: Any) -> Calibration:
        if not isinstance(doc, Mapping) or set(doc) != {"base_score", "base_odds", "pdo"}:
            raise ScorecardError("calibration: needs exactly base_score, base_odds and pdo")
        vals = {}
        for k in ("base_score", "base_odds", "pdo"):
            v = doc[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ScorecardError(f"calibration.{k}: a finite number, got {v!r}")
            vals[k] = float(v)
        if vals["base_odds"] <= 0 or vals["pdo"] == 0:
            raise ScorecardError("calibration: base_odds must be > 0 and pdo non-zero")
        return cls(**vals)

    def pd(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        odds = self.base_odds * np.exp2((points - self.base_score) / self.pdo)
        return 1.0 / (1.0 + odds)


class ScorecardModel:
    """The decider's model interface over a compiled scorecard."""

    objective = "scorecard"
    n_trees = 0

    def __init__(self, card: Scorecard, feature_names: tuple[str, ...], calibration: Calibration,
                 spec: Mapping[str, Any]) -> None:
        self.card = card
        self.feature_names = feature_names
        self.calibration = calibration
        self.spec = spec
        self._char_feature = np.array([c.feature for c in card.characteristics] + [-1], dtype=np.int32)

    @classmethod
    def from_json(cls, data: bytes) -> ScorecardModel:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise ScorecardError(f"<json>: unreadable: {exc}", getattr(exc, "lineno", 0)) from exc
        if not isinstance(doc, dict) or set(doc) != _KEYS:
            raise ScorecardError(f"<file>: needs exactly the keys {sorted(_KEYS)}")
        names = doc["feature_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ScorecardError("feature_names: a list of distinct feature names")
        spec = _by_index(doc["scorecard"], names)
        try:
            card = Scorecard.from_dict({**spec, "n_features": len(names)})
        except (KernelError, TypeError) as exc:
            raise ScorecardError(f"scorecard: {exc}") from exc
        return cls(card, tuple(names), Calibration.parse(doc["calibration"]), spec)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def predict(self, x: npt.NDArray[Any], raw_score: bool = False) -> npt.NDArray[np.float64]:
        points = self.card.score(x)
        return points if raw_score else self.calibration.pd(points)

    def predict_with_reasons(
        self, x: npt.NDArray[Any], top_k: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        """PD, the feature of each of the ``top_k`` characteristics that lost most points, and those points."""
        k = min(top_k, len(self.card.characteristics))
        points, chars, lost = self.card.score_with_reasons(x, k)
        feats = np.full((len(points), top_k), -1, dtype=np.int32)
        contrib = np.zeros((len(points), top_k))
        feats[:, :k] = self._char_feature[chars]  # -1 (no reason) reads the sentinel slot
        contrib[:, :k] = lost
        return self.calibration.pd(points), feats, contrib


def _by_index(spec: Any, names: list[str]) -> dict[str, Any]:
    """The spec with each characteristic's ``feature`` as a column index: a file may name the
    feature (one of ``feature_names``), which is what a risk team writes and reads."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("characteristics"), list):
        raise ScorecardError("scorecard.characteristics: a list of characteristics")
    chars = []
    for i, ch in enumerate(spec["characteristics"]):
        f = ch.get("feature") if isinstance(ch, Mapping) else None
        if isinstance(f, str) and f not in names:
            raise ScorecardError(f"scorecard.characteristics[{i}].feature: {f!r} is not in feature_names")
        chars.append({**ch, "feature": names.index(f)} if isinstance(f, str) else ch)
    return {**spec, "characteristics": chars}


def reference_points(spec: Mapping[str, Any], x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The spec's points for ``x``, evaluated with numpy alone (the scorecard's parity reference)."""
    xs = np.asarray(x, dtype=np.float64)
    total = np.full(len(xs), float(spec.get("base_points", 0.0)))
    for ch in spec["characteristics"]:
        v = xs[:, int(ch["feature"])]
        edges = np.asarray(ch["edges"], dtype=np.float64)
        pts = np.asarray(ch["points"], dtype=np.float64)
        b = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(pts) - 1)  # last bin holds its top edge
        got = pts[b]
        oor = ch.get("out_of_range", "clamp")
        if isinstance(oor, Mapping):
            got = np.where((v < edges[0]) | (v > edges[-1]), float(oor["points"]), got)
        got = np.where(np.isnan(v), float(ch.get("missing_points", 0.0)), got)
        total += got
    return total


def reference_pd(data: bytes, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The file's PD for ``x`` by ``reference_points`` (what a bundle's parity gate holds the kernel to)."""
    doc = json.loads(data)
    spec = _by_index(doc["scorecard"], doc["feature_names"])
    return Calibration.parse(doc["calibration"]).pd(reference_points(spec, x))

"""Scorecards against a pure-Python reference, plus spec validation."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import InputDtypeError, InputShapeError, Scorecard, SpecError

SPEC: dict[str, Any] = {
    "base_points": 600,
    "characteristics": [
        {"name": "utilization", "feature": 2, "edges": [0.0, 0.1, 0.3, 0.6, 1.0],
         "points": [55, 40, 22, 5], "missing_points": 15},
        {"name": "age", "feature": 0, "edges": [18, 25, 35, 50, 120],
         "points": [5, 12, 20, 28], "missing_points": 0, "out_of_range": {"points": -10}},
        {"name": "inquiries", "feature": 1, "edges": [-math.inf, 1, 3, math.inf],
         "points": [30, 15, 0], "missing_points": 40},
    ],
}


def ref_points(ch: dict[str, Any], x: float) -> float:
    """Reference binning, written independently of the kernel's search."""
    edges = [float(e) for e in ch["edges"]]
    pts = [float(p) for p in ch["points"]]
    if math.isnan(x):
        return float(ch["missing_points"])
    oor = ch.get("out_of_range", "clamp")
    if x < edges[0]:
        return pts[0] if oor == "clamp" else float(oor["points"])
    if x > edges[-1]:
        return pts[-1] if oor == "clamp" else float(oor["points"])
    for i in range(len(pts)):
        last = i == len(pts) - 1
        if edges[i] <= x and (x < edges[i + 1] or (last and x <= edges[i + 1])):
            return pts[i]
    raise AssertionError("unreachable")


def ref_scorecard(spec: dict[str, Any], X: np.ndarray, k: int):  # type: ignore[no-untyped-def]
    chars = spec["characteristics"]
    n = X.shape[0]
    scores = np.full(n, float(spec.get("base_points", 0.0)))
    pts = np.zeros((n, len(chars)))
    for i in range(n):
        for c, ch in enumerate(chars):
            pts[i, c] = ref_points(ch, float(X[i, ch["feature"]]))
        scores[i] += pts[i].sum()
    maxp = []
    for ch in chars:
        cands = [float(p) for p in ch["points"]] + [float(ch["missing_points"])]
        if ch.get("out_of_range", "clamp") != "clamp":
            cands.append(float(ch["out_of_range"]["points"]))
        maxp.append(max(cands))
    lost = np.array(maxp)[None, :] - pts
    idx = np.full((n, k), -1, dtype=np.int32)
    val = np.zeros((n, k))
    for i in range(n):
        order = sorted((-lost[i, c], c) for c in range(len(chars)) if lost[i, c] > 0)
        for p, (negl, c) in enumerate(order[:k]):
            idx[i, p] = c
            val[i, p] = -negl
    return scores, pts, idx, val


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.uniform(10, 130, n), rng.integers(-1, 6, n).astype(float),
                         rng.uniform(-0.2, 1.2, n)])
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0, 18.0, 120.0, 0.6, 3.0, 25.0])
    mask = rng.random(X.shape) < 0.2
    X[mask] = rng.choice(specials, int(mask.sum()))
    return X


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference(dtype: type) -> None:
    sc = Scorecard.from_dict(SPEC)
    X = _rows(500, 1).astype(dtype)
    scores, pts, idx, val = ref_scorecard(SPEC, X.astype(np.float64), 2)
    np.testing.assert_array_equal(sc.score(X), scores)
    np.testing.assert_array_equal(sc.points(X), pts)
    s2, i2, v2 = sc.score_with_reasons(X, top_k=2)
    np.testing.assert_array_equal(s2, scores)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_array_equal(v2, val)
    names = sc.reason_names(i2)
    assert names[0] == [sc.names[j] for j in i2[0] if j >= 0]


def test_edges_are_left_closed_and_last_bin_closed() -> None:
    sc = Scorecard.from_dict(SPEC)
    X = np.array([[18.0, 1.0, 0.1], [120.0, 3.0, 1.0], [17.999, 0.999, 1.0000001]])
    pts = sc.points(X)
    assert pts[0].tolist() == [40.0, 5.0, 15.0]  # 0.1 opens bin 2; 18 opens bin 1; 1 -> bin 2
    assert pts[1].tolist() == [5.0, 28.0, 0.0]  # last edges belong to the last bins
    assert pts[2].tolist() == [5.0, -10.0, 30.0]  # 17.999 out of range -> -10; 1.0000001 clamps


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    edges=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=12, unique=True),
    data=st.data(),
)
def test_property_random_tables(edges: list[float], data: st.DataObject) -> None:
    edges = sorted(edges)
    n_bins = len(edges) - 1
    points = data.draw(st.lists(st.integers(-50, 50), min_size=n_bins, max_size=n_bins))
    oor = data.draw(st.sampled_from(["clamp", {"points": -7}, {"points": 99}]))
    spec = {"base_points": 1, "characteristics": [
        {"name": "c", "feature": 0, "edges": edges, "points": points, "missing_points": 3,
         "out_of_range": oor}]}
    sc = Scorecard.from_dict(spec)
    probes = edges + [np.nextafter(e, np.inf) for e in edges] + \
        [np.nextafter(e, -np.inf) for e in edges] + [np.nan, np.inf, -np.inf]
    X = np.array(probes, dtype=np.float64)[:, None]
    scores, pts, idx, val = ref_scorecard(spec, X, 1)
    np.testing.assert_array_equal(sc.points(X), pts)
    s2, i2, v2 = sc.score_with_reasons(X, 1)
    np.testing.assert_array_equal(s2, scores)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_array_equal(v2, val)


def test_round_trip_and_json() -> None:
    sc = Scorecard.from_dict(SPEC)
    again = Scorecard.from_dict(json.loads(json.dumps(sc.to_dict())))
    X = _rows(50, 2)
    np.testing.assert_array_equal(again.score(X), sc.score(X))


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda s: s["characteristics"][1].update(edges=[18, 25, 25, 50, 120]), "'age'.*increasing"),
        (lambda s: s["characteristics"][0].update(points=[1, 2]), "'utilization'.*bins"),
        (lambda s: s["characteristics"][2].pop("missing_points"), "'inquiries'.*missing_points"),
        (lambda s: s["characteristics"][1].update(feature=-1), "'age'.*feature"),
        (lambda s: s["characteristics"][1].update(out_of_range="wrap"), "'age'.*out_of_range"),
        (lambda s: s["characteristics"][0].update(points=[1, 2, math.nan, 4]), "'utilization'"),
        (lambda s: s["characteristics"][0].update(colour="red"), "'utilization'.*unknown"),
        (lambda s: s["characteristics"][2].update(name="age"), "'age'.*duplicate"),
        (lambda s: s.update(characteristics=[]), "characteristics"),
        (lambda s: s.update(n_features=2), "'utilization'.*n_features"),
        (lambda s: s["characteristics"][1].update(edges=[18, "x", 50, 120]), "'age'.*number"),
    ],
)
def test_spec_errors_name_the_characteristic(mutate, pattern) -> None:  # type: ignore[no-untyped-def]
    spec = copy.deepcopy(SPEC)
    mutate(spec)
    with pytest.raises(SpecError, match=pattern):
        Scorecard.from_dict(spec)


def test_wider_matrices_and_declared_width() -> None:
    sc = Scorecard.from_dict(SPEC)
    X = _rows(40, 3)
    wide = np.ascontiguousarray(np.column_stack([X, np.full((40, 5), 7.0)]))
    np.testing.assert_array_equal(sc.score(wide), sc.score(X))  # extra columns ignored
    declared = Scorecard.from_dict({**SPEC, "n_features": 3})
    with pytest.raises(InputShapeError, match="n_features=3"):
        declared.score(wide)
    np.testing.assert_array_equal(declared.score(X), sc.score(X))


def test_bad_inputs() -> None:
    sc = Scorecard.from_dict(SPEC)
    with pytest.raises(InputShapeError):
        sc.score(np.zeros((3, 2)))
    with pytest.raises(InputShapeError):
        sc.score(np.zeros(3))
    with pytest.raises(InputDtypeError):
        sc.score(np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(InputDtypeError):
        sc.score(np.zeros((3, 6))[:, ::2])
    with pytest.raises(InputShapeError):
        sc.score_with_reasons(np.zeros((3, 3)), top_k=4)

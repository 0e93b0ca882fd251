"""Scorecards served from bundles: import, the parity gate, answers with adverse-action reasons.

- a scorecard file (characteristics naming catalogue features) imports as a bundle whose
  parity gate holds the compiled kernel to an independent numpy evaluation of the spec;
- served alone, every answer's PD is the scorecard's on the feature values the decision log
  recorded, and its model reasons are, in order, the codes of the characteristics that lost
  most points (the kernel's reasons recomputed here from the spec);
- served as a challenger beside a tree model, its rows decide as the scorecard alone;
- a broken scorecard is refused at import and at validate, naming the file and the field,
  and ``promote`` refuses it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features import MATRIX_COLUMNS
from features.settings import FeatureSettings
from features.training import MODEL_COLUMNS, training_frame
from services.bundles import BundleError, Registry, load_bundle
from services.bundles.build import from_artifact, import_model
from services.bundles.deploy import promote, set_arm
from services.decisionlog.reader import scan
from services.models.scorecard import reference_points
from services.policy import load_policy
from services.schema.codes import Code
from services.schema.records import REQUEST_DTYPE, RequestBatch
from services.scoring.swap import SwappableEngine
from services.settings import Settings, load_settings
from tests.conftest import World, feature_settings
from tests.services.test_bundles import rebundle, tags_of

# Stored features only (the log records each one's value) with distinct reason codes.
CARD = ("rev_mean_30d", "business_age_days", "delinquencies_12m", "credit_utilisation", "refund_ratio_30d")
Setup = tuple[Registry, str, str, Path, dict[str, Any]]


def card_doc(rows: np.ndarray, seed: int = 5) -> dict[str, Any]:
    """Quartile bins of each feature with points drawn at random: reasons do not depend on
    a direction, only on which bin scores below the characteristic's best."""
    rng = np.random.default_rng(seed)
    chars = []
    for name in CARD:
        v = rows[:, MODEL_COLUMNS.index(name)]
        edges = np.unique(np.nanquantile(v, [0.0, 0.25, 0.5, 0.75, 1.0]))
        chars.append({"name": f"c_{name}", "feature": name, "edges": edges.tolist(),
                      "points": rng.integers(0, 60, len(edges) - 1).tolist(), "missing_points": 10})
    return {"scorecard": {"base_points": 400, "characteristics": chars}, "feature_names": list(CARD),
            "calibration": {"base_score": 550, "base_odds": 20, "pdo": 40}}


@pytest.fixture(scope="module")
def setup(clean_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    missing = [f for f in CARD if f not in MATRIX_COLUMNS or f not in MODEL_COLUMNS]
    assert not missing, f"the catalogue renamed {missing}: pick others for the test scorecard"
    tmp = tmp_path_factory.mktemp("scorecard")
    reg = Registry(tmp / "registry")
    tags = tags_of(clean_world)
    rows = training_frame(FeatureSettings(data_dir=clean_world.data_dir))[0]
    doc = card_doc(rows)
    (tmp / "card.json").write_text(json.dumps(doc, indent=2))
    card = reg.put(import_model(tmp / "card.json", policy_path=None, tags=tags, catalogue_sample=rows,
                                version="card-1"))
    trees = reg.put(from_artifact(clean_world.data_dir, clean_world.model_version, policy_path=None, tags=tags))
    promote(reg, "card", card, tags=tags)
    promote(reg, "split", trees, tags=tags)
    set_arm(reg, "split", card, arm="card", share=0.4, tags=tags)
    yield reg, card, trees, tmp, doc


def _settings(world: World, tmp: Path, deployment: str, log_dir: Path | None = None) -> Settings:
    return load_settings(None, {
        "features": feature_settings(world).model_dump(),
        "bundle": {"registry": str(tmp / "registry"), "deployment": deployment, "poll_interval_s": 60},
        "decision_log": {"enabled": log_dir is not None, **({"directory": str(log_dir)} if log_dir else {})},
    })


def _batch(n: int, tag: str) -> RequestBatch:
    rng = np.random.default_rng(3)
    r = np.zeros(n, REQUEST_DTYPE)
    r["application_id"] = [f"{tag}-{uuid.uuid4().hex[:20]}".encode() for _ in range(n)]
    r["merchant_id"] = [f"M{int(i):08d}".encode() for i in rng.choice(3000, n, replace=False)]
    r["amount_minor"], r["currency"], r["term_months"], r["product"], r["channel"] = 300_000, 0, 12, 1, 1
    r["declared_revenue_minor"] = float("nan")
    r["deadline"] = time.time() + 600
    return RequestBatch.of_records([row.tobytes() for row in r])


def _expected_reasons(spec: dict[str, Any], x: np.ndarray, k: int) -> list[list[int]]:
    """Per row, the characteristics that lost points, most first (ties: the earlier one)."""
    lost = []
    for j, ch in enumerate(spec["characteristics"]):
        one = {"base_points": 0, "characteristics": [ch]}
        best = max([*ch["points"], ch["missing_points"]])
        lost.append(best - reference_points(one, x))
        assert ch["feature"] == j  # the test's card: characteristic j reads feature j
    m = np.stack(lost, axis=1)
    out = []
    for row in m:
        order = sorted((i for i in range(len(row)) if row[i] > 0), key=lambda i: (-row[i], i))
        out.append(order[:k])
    return out


def test_a_scorecard_bundle_gates_on_its_spec(setup: Setup, clean_world: World) -> None:
    reg, card, _, _, _ = setup
    loaded = load_bundle(reg, card, tags=tags_of(clean_world), source_check=True)
    assert loaded.manifest["model"]["kind"] == "scorecard" and loaded.manifest["model"]["file"] == "scorecard.json"
    assert loaded.parity.passed and loaded.parity.rows > 100 and loaded.parity.max_abs_error <= 1e-12
    assert loaded.artifact.feature_names == CARD


def test_served_alone_pd_and_reasons_follow_the_card(setup: Setup, clean_world: World, tmp_path: Path) -> None:
    reg, card, _, tmp, _doc = setup
    engine = SwappableEngine.open(_settings(clean_world, tmp, "card", tmp_path / "log"))
    try:
        answer = engine.score(_batch(300, "sc"))
    finally:
        engine.close()
    rows = answer.rows
    assert (rows["status"] == Code.OK).all() and (rows["bundle_id"] == card.encode()).all()
    logged = scan(tmp_path / "log")
    assert logged is not None and logged.height == len(rows)
    logged = logged.sort("row")
    x = np.stack([logged[f"f_{f}"].to_numpy().astype(np.float32) for f in CARD], axis=1)
    spec = load_bundle(reg, card).artifact.ensemble.spec  # type: ignore[attr-defined]
    calibration = json.loads(reg.read(card).files["scorecard.json"])["calibration"]
    points = reference_points(spec, x)
    odds = calibration["base_odds"] * np.exp2((points - calibration["base_score"]) / calibration["pdo"])
    scored = ~np.isnan(rows["pd"])
    assert scored.mean() > 0.9
    np.testing.assert_allclose(rows["pd"][scored], (1 / (1 + odds))[scored], rtol=0, atol=1e-12)
    # Model reasons: the policy's code of each characteristic's feature, most points lost first.
    policy = load_policy()
    code = {i: policy.reason_for(f).code for i, f in enumerate(CARD)}  # type: ignore[union-attr]
    expected = _expected_reasons(spec, x, policy.max_model_reasons)
    model_codes = set(code.values())
    checked = 0
    for i in np.flatnonzero(scored):
        got = [c for c in answer.reason_codes(int(i)) if c in model_codes]
        assert got == [code[j] for j in expected[i]], (i, got, expected[i])
        checked += bool(got)
    assert checked > len(rows) // 2  # most answers carry scorecard reasons


def test_a_scorecard_challenger_decides_as_the_card_alone(setup: Setup, clean_world: World) -> None:
    _reg, card, trees, tmp, _ = setup
    batch = _batch(400, "ch")
    split = SwappableEngine.open(_settings(clean_world, tmp, "split"))
    alone = SwappableEngine.open(_settings(clean_world, tmp, "card"))
    try:
        now = time.time()
        got, solo = split.score(batch, now), alone.score(batch, now)
    finally:
        split.close()
        alone.close()
    rows = got.rows
    arm = rows["variant"] == b"card"
    assert 0.25 < arm.mean() < 0.55
    assert (rows["bundle_id"][arm] == card.encode()).all() and (rows["bundle_id"][~arm] == trees.encode()).all()
    idx = np.flatnonzero(arm)
    for col in ("decision", "approved_minor", "apr_bps", "risk_grade"):
        assert (rows[col][idx] == solo.rows[col][idx]).all(), col
    np.testing.assert_allclose(rows["pd"][idx], solo.rows["pd"][idx], rtol=0, atol=1e-12)
    assert [got.reason_codes(int(i)) for i in idx] == [solo.reason_codes(int(i)) for i in idx]


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d["calibration"].pop("pdo"), "calibration"),
    (lambda d: d["scorecard"]["characteristics"][1].update(feature="nope"), "characteristics[1].feature"),
    (lambda d: d["scorecard"]["characteristics"][0]["points"].pop(), "scorecard"),
    (lambda d: d.update(extra=1), "<file>"),
])
def test_a_broken_scorecard_is_refused_naming_file_and_field(
    setup: Setup, clean_world: World, tmp_path: Path, edit: Any, field: str,
) -> None:
    reg, card, _, _, doc = setup
    broken = json.loads(json.dumps(doc))
    edit(broken)
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    rows = training_frame(FeatureSettings(data_dir=clean_world.data_dir))[0]
    with pytest.raises(BundleError) as err:
        import_model(tmp_path / "bad.json", policy_path=None, tags=None, catalogue_sample=rows)
    assert "bad.json" in str(err.value) and field in str(err.value)
    # Re-hashed inside a stored bundle (checksums pass): validate and promote refuse it.
    bad = rebundle(reg, card, **{"scorecard.json": json.dumps(broken).encode()})
    with pytest.raises(BundleError) as err:
        load_bundle(reg, bad)
    assert "scorecard.json" in str(err.value) and field in str(err.value)
    before = reg.index().version
    with pytest.raises(BundleError):
        promote(reg, "card", bad, tags=tags_of(clean_world))
    assert reg.index().version == before

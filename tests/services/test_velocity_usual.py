"""``velocity.above_usual``: application velocity against the merchant's own usual rate.

Decision tables on the vectorized policy (fires, does not fire, no usual rate, with the
absolute thresholds), the policy file's checks, and the rule in the real engine on the
test world, where each application counts itself in the velocity view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from services.errors import ConfigError
from services.policy import Policy, PolicyInputs, load_policy
from services.policy.config import DEFAULT_POLICY
from services.policy.decide import APPROVE, DECLINE, REVIEW
from services.policy.lines import validate_policy_text
from services.schema.codes import Code
from tests.conftest import World, feature_settings
from tests.faults.support import batch
from tests.services.policy_inputs import policy_inputs

FEATURES = ("rev_cv_30d", "rev_mean_30d")
COLUMNS = ("apps_1h", "apps_24h", "apps_usual_per_day")
CODE = "EW_VELOCITY_ABOVE_USUAL"
ABOVE_USUAL_DESCRIPTION = "Early warning: many more credit applications than the merchant's usual rate"
# Floors below the absolute thresholds of the default policy (review_apps_1h 5, review_apps_24h 20).
ABOVE_USUAL: dict[str, Any] = {"multiple": 5.0, "min_apps_24h": 5, "min_apps_1h": 3}


def _doc(above_usual: dict[str, Any] | None = ABOVE_USUAL, **velocity: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY.read_text())
    doc["rules"] = []  # the shipped rules read tags: not what these tables are about
    doc["velocity"] = {"review_apps_1h": 5, "review_apps_24h": 20, **velocity}
    if above_usual is not None:
        doc["velocity"]["above_usual"] = above_usual
    return doc


def _policy(tmp_path: Path, doc: dict[str, Any], columns: tuple[str, ...] = COLUMNS) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Policy(load_policy(path), FEATURES, feature_columns=columns)


def _inputs(usual: list[float], apps_1h: list[float], apps_24h: list[float], **over: object) -> PolicyInputs:
    n = len(usual)
    fields: dict[str, object] = {
        "apps_1h": np.asarray(apps_1h, dtype=np.float64),
        "apps_24h": np.asarray(apps_24h, dtype=np.float64),
        "model_reason_features": np.full((n, 4), -1, dtype=np.int32),
        "model_reason_contrib": np.zeros((n, 4)),
        "features": np.column_stack([apps_1h, apps_24h, usual]).astype(np.float32),
    }
    return policy_inputs(n, **{**fields, **over})


def _codes(policy: Policy, reason: np.ndarray) -> list[list[str]]:
    return [[policy.reason_table[r][0] for r in row if r >= 0] for row in reason]


NAN = float("nan")
# usual/day, apps_1h, apps_24h -> decision, codes. multiple 5, floors 5 (24 h) and 3 (1 h);
# thresholds: 24 h max(5, 5 x usual), 1 h max(3, 5 x usual / 24); absolute: 1 h >= 5, 24 h >= 20.
TABLE: list[tuple[float, float, float, int, list[str]]] = [
    (0.1, 1, 6, REVIEW, [CODE]),  # 6 > max(5, 0.5): a rare applier's burst
    (0.1, 1, 5, APPROVE, []),  # at the floor, not above it
    (2.0, 1, 10, APPROVE, []),  # 10 = 5 x 2: not above
    (2.0, 1, 11, REVIEW, [CODE]),  # 11 > 10
    (2.0, 4, 4, REVIEW, [CODE]),  # the hour: 4 > max(3, 10 / 24)
    (24.0, 4, 19, APPROVE, []),  # a busy merchant: 19 < 120 and 4 < max(3, 5) (row 1 would fire)
    (24.0, 1, 20, REVIEW, ["HIGH_VELOCITY"]),  # the absolute threshold alone
    (0.1, 1, 25, REVIEW, ["HIGH_VELOCITY", CODE]),  # both; the policy reason first
    (0.0, 1, 6, REVIEW, [CODE]),  # usual rate known to be nil: the floor alone
    (NAN, 4, 19, APPROVE, []),  # no usual rate: does not fire ...
    (NAN, 1, 20, REVIEW, ["HIGH_VELOCITY"]),  # ... and the absolute thresholds still apply
]


def test_the_decision_table(tmp_path: Path) -> None:
    policy = _policy(tmp_path, _doc())
    usual, h1, h24, want, codes = zip(*TABLE, strict=True)
    out = policy.decide(_inputs(list(usual), list(h1), list(h24)))
    assert out.decision.tolist() == list(want)
    assert _codes(policy, out.reason) == [list(c) for c in codes]
    assert out.reason.shape[1] == policy.reason_columns(4)
    # Referred, not declined: a referral keeps the limit the merchant would have had.
    fired = np.array([CODE in c for c in codes])
    assert (out.approved_minor[fired] == 5_000_000).all()


def test_unknown_degraded_declined_and_no_hourly_test(tmp_path: Path) -> None:
    policy = _policy(tmp_path, _doc())
    # An unknown merchant has no features: the rule cannot read a usual rate.
    out = policy.decide(_inputs([0.1], [1], [6], known=np.array([False]), pd=np.array([np.nan])))
    assert out.decision[0] == REVIEW and _codes(policy, out.reason)[0] == ["NO_HISTORY"]
    # Features unreadable: nothing to compare with (the degraded mode decides).
    out = policy.decide(_inputs([0.1], [1], [6], degraded=True))
    assert CODE not in _codes(policy, out.reason)[0]
    # A decline stays a decline, with the warning named beside it.
    out = policy.decide(_inputs([0.1], [1], [6], pd=np.array([0.3])))
    assert out.decision[0] == DECLINE and CODE in _codes(policy, out.reason)[0]
    # min_apps_1h null: the hour is not compared, the day still is.
    daily = _policy(tmp_path, _doc({**ABOVE_USUAL, "min_apps_1h": None}))
    out = daily.decide(_inputs([2.0, 2.0], [4, 1], [4, 11]))
    assert out.decision.tolist() == [APPROVE, REVIEW] and CODE in _codes(daily, out.reason)[1]


def test_off_by_default_and_the_reason_table_only_grows_at_its_end(tmp_path: Path) -> None:
    shipped = load_policy()
    assert shipped.velocity.above_usual is None  # the shipped policy decides as it did
    off = _policy(tmp_path, _doc(None))
    on = _policy(tmp_path, _doc())
    assert on.reason_table[: len(off.reason_table)] == off.reason_table
    assert on.reason_table[len(off.reason_table):] == ((CODE, ABOVE_USUAL_DESCRIPTION),)
    assert on.reason_columns(4) == off.reason_columns(4) + 1
    # Off, the same counts are only the absolute thresholds' business.
    usual, h1, h24, _, _ = zip(*TABLE, strict=True)
    out = off.decide(_inputs(list(usual), list(h1), list(h24)))
    assert out.decision.tolist() == [REVIEW if a >= 5 or b >= 20 else APPROVE for a, b in zip(h1, h24, strict=True)]
    assert not any(CODE in c for c in _codes(off, out.reason))
    # Its code and description are the policy's to name, like a rule's.
    named = _policy(tmp_path, _doc({**ABOVE_USUAL, "code": "EW_APPS_BURST", "description": "Burst"}))
    assert named.reason_table[-1] == ("EW_APPS_BURST", "Burst")


@pytest.mark.parametrize(
    ("above_usual", "velocity", "match"),
    [
        ({**ABOVE_USUAL, "multipel": 5}, {}, r"velocity\.above_usual\.multipel"),  # unknown key refused
        ({**ABOVE_USUAL, "multiple": 1.0}, {}, r"velocity\.above_usual\.multiple: Input should be greater than 1"),
        ({**ABOVE_USUAL, "multiple": 101}, {}, r"velocity\.above_usual\.multiple"),
        ({**ABOVE_USUAL, "min_apps_24h": 0}, {}, r"velocity\.above_usual\.min_apps_24h"),
        ({**ABOVE_USUAL, "min_apps_24h": 20}, {}, r"min_apps_24h 20 must be below review_apps_24h 20"),
        ({**ABOVE_USUAL, "min_apps_1h": 6}, {"review_apps_1h": 6}, r"min_apps_1h 6 must be below review_apps_1h 6"),
        ({**ABOVE_USUAL, "code": "lower"}, {}, r"velocity\.above_usual\.code"),
    ],
)
def test_the_policy_file_is_checked(
    tmp_path: Path, above_usual: dict[str, Any], velocity: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        _policy(tmp_path, _doc(above_usual, **velocity))


def test_the_check_names_the_line(tmp_path: Path) -> None:
    doc = _doc({**ABOVE_USUAL, "min_apps_24h": 25})
    text = yaml.safe_dump(doc, sort_keys=False)
    line = next(i + 1 for i, s in enumerate(text.splitlines()) if "min_apps_24h: 25" in s)
    config, problems = validate_policy_text("p.yaml", text, COLUMNS, None)
    assert config is None and [(p.line, p.field) for p in problems] == [(line, "velocity.above_usual.min_apps_24h")]
    # A serving matrix without the usual rate: refused, at validation and at load.
    config, problems = validate_policy_text("p.yaml", yaml.safe_dump(_doc(), sort_keys=False), ("apps_1h",), None)
    assert config is None and [p.field for p in problems] == ["velocity.above_usual"]
    assert "apps_usual_per_day" in problems[0].message
    with pytest.raises(ConfigError, match="apps_usual_per_day"):
        _policy(tmp_path, _doc(), columns=("apps_1h", "apps_24h"))


def test_in_the_engine_each_application_counts_toward_the_burst(clean_world: World, tmp_path: Path) -> None:
    """The materialized usual rate, the live counts and the rule, end to end: merchants with a
    usual rate (about 1/90 a day in this world) are referred with the code from their 4th
    application within the hour (4 > 3); merchants the store does not know are not (referred
    for having no history, and the absolute 5 is not reached)."""
    from services.scoring.factory import build_engine
    from services.settings import load_settings

    doc = yaml.safe_load(DEFAULT_POLICY.read_text())  # the shipped rules stay: they read tags too
    doc["velocity"]["above_usual"] = ABOVE_USUAL
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    s = load_settings(None, {"features": feature_settings(clean_world).model_dump(), "policy_path": str(path)})
    engine = build_engine(s)
    base = pl.read_parquet(clean_world.data_dir / "offline" / "merchant_baseline.parquet")
    usual = base.filter(pl.col("apps_usual_per_day").is_not_null())["merchant_id"].head(8).to_list()
    assert len(usual) == 8
    # Every merchant of this world trades long enough to have a usual rate (the missing case is
    # the decision table's); merchants the store does not know have no features to read one from.
    unknown = [f"NOT-A-MERCHANT-{k}" for k in range(3)]
    merchants = [*usual, *unknown]
    for k in range(1, 5):  # one batch per application, so each sees the counts the last one left
        resp = engine.score(batch(len(merchants), merchants=merchants, deadline_s=3600))
        assert (resp.rows["status"] == Code.OK).all(), resp.rows["status"]
        fired = [CODE in resp.reason_codes(i) for i in range(len(merchants))]
        assert fired == [k > 3] * len(usual) + [False] * len(unknown), k
    assert not (resp.rows["decision"][: len(usual)] == APPROVE).any()

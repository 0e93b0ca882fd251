"""The vectorized policy against a plain-Python reading of the same rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.errors import ConfigError
from services.policy import CURRENCIES, Policy, currency_index, load_policy
from services.policy.decide import APPROVE, DECLINE, POLICY_REASONS, REVIEW
from tests.services.policy_inputs import policy_inputs as _inputs

FEATURES = ("rev_cv_30d", "rev_mean_30d", "credit_utilisation", "term_months", "unmapped_feature")




@pytest.fixture(scope="module")
def policy() -> Policy:
    # The rules of the default policy read named features and tags: covered below.
    return Policy(load_policy().model_copy(update={"rules": ()}), FEATURES)


def _reference_grade(cfg_grades: list[tuple[str, float]], pd: float) -> str:
    for letter, max_pd in cfg_grades:
        if pd <= max_pd:
            return letter
    raise AssertionError


def test_grades_and_thresholds_match_reference(policy: Policy) -> None:
    cfg = policy.config
    pds = np.array([0.0, 0.005, 0.02, 0.0200001, 0.05, 0.09, 0.11, 0.12, 0.2, 0.2499, 0.25, 0.9, 1.0])
    out = policy.decide(_inputs(len(pds), pd=pds))
    grades = [(g.grade, g.max_pd) for g in cfg.grades]
    for i, p in enumerate(pds):
        assert policy.grade_letters[out.decision.dtype.type(out.grade[i])] == _reference_grade(grades, p)
        want = DECLINE if p >= cfg.decline_pd else REVIEW if p >= cfg.review_pd else APPROVE
        if want == APPROVE and policy.grade_letters[out.grade[i]] == "E":
            want = DECLINE  # grade E has no limit: LIMIT_TOO_LOW
        assert out.decision[i] == want, (p, out.decision[i])


def test_limit_is_min_of_request_multiple_and_cap(policy: Policy) -> None:
    cfg = policy.config
    # Grade A (pd 0.01): limit multiple 3.0 x 100,000 = 300,000 > 50,000 requested: full amount.
    out = policy.decide(_inputs(1))
    assert out.decision[0] == APPROVE and out.approved_minor[0] == 5_000_000
    # Request 1,000,000: capped by 3 x monthly revenue = 300,000.00 ...
    out = policy.decide(_inputs(1, amount_minor=np.array([100_000_000], dtype=np.int64)))
    assert out.approved_minor[0] == 30_000_000
    # ... or, for a bigger merchant, by the product cap (WORKING_CAPITAL 500,000.00).
    rich = np.array([1e9])
    out = policy.decide(
        _inputs(1, amount_minor=np.array([100_000_000], dtype=np.int64), monthly_revenue_base_minor=rich)
    )
    assert out.approved_minor[0] == cfg.product_caps_base_minor["WORKING_CAPITAL"]
    reasons = [policy.reason_table[r][0] for r in out.reason[0] if r >= 0]
    assert "AMOUNT_REDUCED" in reasons


def test_foreign_currency_is_converted_both_ways(policy: Policy) -> None:
    usd = currency_index("USD")
    fx = policy.config.fx_to_base["USD"]
    # Ask for 1,000,000.00 USD: far above every cap, so the limit is the cap converted to USD.
    out = policy.decide(
        _inputs(
            1,
            currency=np.array([usd], dtype=np.int8),
            amount_minor=np.array([100_000_000], dtype=np.int64),
            monthly_revenue_base_minor=np.array([1e9]),
        )
    )
    cap_cny = policy.config.product_caps_base_minor["WORKING_CAPITAL"] / 100
    assert out.approved_minor[0] == int(np.floor(cap_cny / fx * 100))
    # A small USD request is approved in full, to the cent, with no FX round trip.
    out = policy.decide(
        _inputs(1, currency=np.array([usd], dtype=np.int8), amount_minor=np.array([123_457], dtype=np.int64))
    )
    assert out.approved_minor[0] == 123_457


def test_jpy_has_no_minor_units(policy: Policy) -> None:
    jpy = currency_index("JPY")
    assert CURRENCIES[jpy].exponent == 0
    base = policy.to_base_minor(np.array([1_000_000]), np.array([jpy], dtype=np.int8))
    assert base[0] == pytest.approx(1_000_000 * policy.config.fx_to_base["JPY"] * 100)


def test_unknown_stale_velocity_and_degraded_go_to_review(policy: Policy) -> None:
    n = 4
    out = policy.decide(
        _inputs(
            n,
            known=np.array([False, True, True, True]),
            stale=np.array([False, True, False, False]),
            apps_1h=np.array([0.0, 0.0, 99.0, 0.0]),
            pd=np.array([np.nan, 0.01, 0.01, 0.01]),
        )
    )
    assert out.decision.tolist() == [REVIEW, REVIEW, REVIEW, APPROVE]
    codes = [[policy.reason_table[r][0] for r in row if r >= 0] for row in out.reason]
    assert codes[0][0] == "NO_HISTORY" and out.approved_minor[0] == 0
    assert "STALE_FEATURES" in codes[1]
    assert "HIGH_VELOCITY" in codes[2]
    deg = policy.decide(_inputs(2, pd=np.full(2, np.nan), degraded=True))
    assert (deg.decision == REVIEW).all()
    assert all(policy.reason_table[row[0]][0] == "DEGRADED_MODE" for row in deg.reason)


def test_model_reasons_are_mapped_deduplicated_and_ordered(policy: Policy) -> None:
    out = policy.decide(
        _inputs(
            1,
            model_reason_features=np.array([[0, 4, 2, 1]], dtype=np.int32),
            model_reason_contrib=np.array([[0.9, 0.5, 0.4, -0.1]]),
        )
    )
    model = out.reason[0, len(POLICY_REASONS) :]
    codes = [policy.reason_table[r][0] for r in model if r >= 0]
    # unmapped_feature gives no code; the negative contribution is not adverse.
    assert codes == ["R_REVENUE_VOLATILITY", "R_HIGH_UTILISATION"]
    contrib = out.reason_contrib[0, len(POLICY_REASONS) :]
    assert contrib[0] == pytest.approx(0.9)


def test_apr_grid_by_grade_and_term(policy: Policy) -> None:
    terms = np.array([1, 3, 4, 12, 13, 36, 60], dtype=np.int16)
    out = policy.decide(_inputs(len(terms), term_months=terms))
    grid = policy.config.grades[0].apr_bps
    buckets = policy.config.apr_term_buckets
    for t, apr in zip(terms, out.apr_bps, strict=True):
        k = next(i for i, b in enumerate(buckets) if t <= b)
        assert apr == grid[k]


def test_policy_file_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    text = load_policy().model_dump_json()
    import json

    import yaml

    doc = json.loads(text)
    doc["decline_pdd"] = 0.3
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"p\.yaml.*decline_pdd"):
        load_policy(bad)
    doc.pop("decline_pdd")
    doc["review_pd"] = 0.9
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="review_pd must not exceed decline_pd"):
        load_policy(bad)
    bad.write_text("version: x\n  grades: [\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:\d+: invalid YAML"):
        load_policy(bad)


COLUMNS = ("rev_growth_30d", "active_days_90d", "apps_1h")
TAGS = {
    "behaviour.flag.sudden_drop_7d": 0,
    "behaviour.flag.dormant_7d": 1,
    "behaviour.flag.no_history": 2,
    "behaviour.flag.very_high_refunds": 70,
    "behaviour.flag.night_trader": 3,
    "behaviour.flag.high_refunds": 4,
}


def _tag_words(rows: list[set[int]]) -> np.ndarray:
    out = np.zeros((len(rows), 2), dtype=np.uint64)
    for i, ids in enumerate(rows):
        for t in ids:
            out[i, t // 64] |= np.uint64(1) << np.uint64(t % 64)
    return out


def test_named_rules_review_decline_and_explain() -> None:
    policy = Policy(load_policy(), FEATURES, feature_columns=COLUMNS, tag_index=TAGS, n_tags=128)
    matrix = np.array(
        [
            [0.1, 80, 0],  # nothing fires
            [-0.6, 80, 0],  # regional_downturn (feature rule) -> review
            [-0.6, 10, 0],  # too few active days: no rule
            [0.1, 80, 0],  # sudden drop tag -> review
            [0.1, 80, 0],  # very high refunds -> decline
            [0.1, 80, 0],  # night trader + high refunds (all) -> review
            [0.1, 80, 0],  # only night trader: no rule
        ],
        dtype=np.float32,
    )
    tags = _tag_words([set(), set(), set(), {0}, {70}, {3, 4}, {3}])
    fired = policy.fire_rules(matrix, tags)
    assert fired is not None
    names = [r.name for r in policy.config.rules]
    got = [[names[j] for j in np.flatnonzero(row)] for row in fired]
    assert got == [[], ["regional_downturn"], [], ["sudden_revenue_drop"], ["refund_abuse"], ["night_refunds"], []]
    # The policy fires its rules itself, from the features and tags it is given.
    out = policy.decide(_inputs(7, features=matrix, tag_words=tags))
    assert out.decision.tolist() == [APPROVE, REVIEW, APPROVE, REVIEW, DECLINE, REVIEW, APPROVE]
    assert out.reason.shape[1] == policy.reason_columns(4)
    codes = [[policy.reason_table[r][0] for r in row if r >= 0] for row in out.reason]
    assert "EW_BUSINESS_SHOCK" in codes[1] and "HS_REFUND_ABUSE" in codes[4] and "EW_REVENUE_DROP" in codes[3]
    assert out.approved_minor[4] == 0
    # Degraded: no features to trust, no rule fires, everything referred.
    degraded = policy.decide(_inputs(7, features=matrix, tag_words=tags, degraded=True))
    assert set(degraded.decision.tolist()) == {REVIEW}
    assert not any(policy.reason_table[r][0] == "HS_REFUND_ABUSE" for r in degraded.reason[4] if r >= 0)


def test_rules_naming_unknown_things_fail_at_load() -> None:
    with pytest.raises(ConfigError, match="unknown tag"):
        Policy(load_policy(), FEATURES, feature_columns=COLUMNS, tag_index={}, n_tags=128)
    with pytest.raises(ConfigError, match="unknown feature"):
        Policy(load_policy(), FEATURES, feature_columns=("x",), tag_index=TAGS, n_tags=128)

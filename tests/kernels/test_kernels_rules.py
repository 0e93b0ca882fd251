"""Policy rules against a pure-Python reference, plus spec validation."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import InputDtypeError, InputShapeError, PolicyRules, SpecError, pack_tags

N_TAGS = 1100  # not a multiple of 64 on purpose


def ref_condition(c: dict[str, Any], x: np.ndarray, tags: set[int]) -> bool:
    op = c["op"]
    if "feature" in c:
        v = float(x[c["feature"]])
        if op == "is_missing":
            return math.isnan(v)
        if op == "not_missing":
            return not math.isnan(v)
        if math.isnan(v):
            return False
        w = c["value"]
        return {"<": v < w, "<=": v <= w, ">": v > w, ">=": v >= w, "==": v == w,
                "!=": v != w}[op]
    if op == "has":
        return c["tag"] in tags
    if op == "lacks":
        return c["tag"] not in tags
    hits = [t in tags for t in c["tags"]]
    return {"any": any(hits), "all": all(hits), "none": not any(hits)}[op]


def ref_rules(spec: dict[str, Any], X: np.ndarray, tag_lists: list[set[int]]) -> np.ndarray:
    out = np.zeros((len(tag_lists), len(spec["rules"])), dtype=bool)
    for i, tags in enumerate(tag_lists):
        for j, rule in enumerate(spec["rules"]):
            out[i, j] = all(ref_condition(c, X[i], tags) for c in rule["all"])
    return out


SPEC: dict[str, Any] = {
    "n_features": 4,
    "n_tags": N_TAGS,
    "rules": [
        {"name": "high_util", "all": [{"feature": 1, "op": ">", "value": 0.9}]},
        {"name": "thin_file", "all": [{"feature": 2, "op": "is_missing"},
                                      {"tag": 17, "op": "has"}]},
        {"name": "not_blocked", "all": [{"tag": 1099, "op": "lacks"},
                                        {"feature": 0, "op": "!=", "value": 0}]},
        {"name": "fraud_any", "all": [{"tags": [3, 64, 700, 1099], "op": "any"}]},
        {"name": "kyc_all", "all": [{"tags": [5, 6, 63, 64], "op": "all"},
                                    {"feature": 3, "op": "<=", "value": 2.5}]},
        {"name": "clean", "all": [{"tags": [100, 200, 300], "op": "none"},
                                  {"feature": 3, "op": "not_missing"},
                                  {"feature": 0, "op": "==", "value": 1.0},
                                  {"feature": 1, "op": ">=", "value": 0.0},
                                  {"feature": 2, "op": "<", "value": 5.0}]},
    ],
}


def _data(n: int, seed: int) -> tuple[np.ndarray, list[set[int]]]:
    rng = np.random.default_rng(seed)
    X = rng.choice([0.0, 1.0, 0.5, 0.9, 0.95, 2.5, 3.0, 5.0, -1.0, np.nan, np.inf], size=(n, 4))
    interesting = [3, 5, 6, 17, 63, 64, 100, 200, 300, 700, 1099]
    tag_lists = []
    for _ in range(n):
        base = set(rng.choice(interesting, rng.integers(0, 7), replace=False).tolist())
        base |= set(rng.integers(0, N_TAGS, rng.integers(0, 20)).tolist())
        tag_lists.append(base)
    return X, tag_lists


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference(dtype: type) -> None:
    rules = PolicyRules.from_dict(SPEC)
    X, tag_lists = _data(400, 1)
    X = X.astype(dtype)
    tags = pack_tags([sorted(t) for t in tag_lists], N_TAGS)
    assert tags.shape == (400, 18)
    want = ref_rules(SPEC, X.astype(np.float64), tag_lists)
    assert want.any(axis=0).all(), "every rule should fire somewhere in the sample"
    assert (~want).any(axis=0).all()
    got = rules.evaluate(X, tags)
    np.testing.assert_array_equal(got, want)
    packed = rules.evaluate_packed(X, tags)
    assert packed.shape == (400, 1) and packed.dtype == np.uint64
    bits = ((packed[:, :1] >> np.arange(len(SPEC["rules"]), dtype=np.uint64)) & 1).astype(bool)
    np.testing.assert_array_equal(bits, want)
    assert rules.fired_names(got[:1]) == [[rules.names[j] for j in np.flatnonzero(want[0])]]


def test_tag_bit_layout_is_little_endian_words() -> None:
    tags = pack_tags([[0, 63, 64, 1099]], N_TAGS)
    assert tags[0, 0] == (1 | (1 << 63))
    assert tags[0, 1] == 1
    assert tags[0, 17] == 1 << (1099 % 64)
    assert tags.dtype == np.dtype("<u8")


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_property_random_rules(data: st.DataObject) -> None:
    n_rules = data.draw(st.integers(1, 70))  # > 64 exercises a second packed word
    feature_cond = st.one_of(
        st.builds(lambda f, op, v: {"feature": f, "op": op, "value": v},
                  st.integers(0, 3), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
                  st.sampled_from([0.0, 0.5, 1.0, 2.5, -1.0])),
        st.builds(lambda f, op: {"feature": f, "op": op}, st.integers(0, 3),
                  st.sampled_from(["is_missing", "not_missing"])),
    )
    tag = st.integers(0, N_TAGS - 1)
    tag_cond = st.one_of(
        st.builds(lambda t, op: {"tag": t, "op": op}, tag, st.sampled_from(["has", "lacks"])),
        st.builds(lambda ts, op: {"tags": ts, "op": op}, st.lists(tag, min_size=1, max_size=6),
                  st.sampled_from(["any", "all", "none"])),
    )
    rules_raw = [
        {"name": f"r{j}", "all": data.draw(st.lists(st.one_of(feature_cond, tag_cond),
                                                    min_size=1, max_size=4))}
        for j in range(n_rules)
    ]
    spec = {"n_features": 4, "n_tags": N_TAGS, "rules": rules_raw}
    rules = PolicyRules.from_dict(spec)
    X, tag_lists = _data(60, data.draw(st.integers(0, 100)))
    # Make the random rules' tags actually appear.
    for i, tl in enumerate(tag_lists):
        for r in rules_raw[i % n_rules]["all"]:
            if "tag" in r:
                tl.add(r["tag"])
            if "tags" in r:
                tl.update(r["tags"])
    tags = pack_tags([sorted(t) for t in tag_lists], N_TAGS)
    want = ref_rules(spec, X, tag_lists)
    np.testing.assert_array_equal(rules.evaluate(X, tags), want)
    packed = rules.evaluate_packed(X, tags)
    for j in range(n_rules):
        bit = (packed[:, j // 64] >> np.uint64(j % 64)) & np.uint64(1)
        np.testing.assert_array_equal(bit.astype(bool), want[:, j])


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda s: s["rules"][0]["all"][0].update(op="=>"), "'high_util'.*op"),
        (lambda s: s["rules"][1]["all"][1].update(tag=N_TAGS), "'thin_file'.*tag"),
        (lambda s: s["rules"][0]["all"][0].update(feature=9), "'high_util'.*feature 9"),
        (lambda s: s["rules"][0]["all"][0].update(value="x"), "'high_util'.*value"),
        (lambda s: s["rules"][0]["all"][0].update(value=math.nan), "'high_util'.*value"),
        (lambda s: s["rules"][1]["all"][0].update(value=1), "'thin_file'.*no 'value'"),
        (lambda s: s["rules"][3]["all"][0].update(tags=[]), "'fraud_any'.*tags"),
        (lambda s: s["rules"][4].update(all=[]), "'kyc_all'.*non-empty"),
        (lambda s: s["rules"][5].update(name="high_util"), "'high_util'.*duplicate"),
        (lambda s: s["rules"][2]["all"][0].update(tags=[1]), "'not_blocked'"),
        (lambda s: s.update(rules=[]), "non-empty"),
        (lambda s: s.update(colour=1), "unknown keys"),
    ],
)
def test_spec_errors_name_the_rule(mutate, pattern) -> None:  # type: ignore[no-untyped-def]
    spec = copy.deepcopy(SPEC)
    mutate(spec)
    with pytest.raises(SpecError, match=pattern):
        PolicyRules.from_dict(spec)


def test_bad_inputs() -> None:
    rules = PolicyRules.from_dict(SPEC)
    X, tag_lists = _data(5, 3)
    tags = pack_tags([sorted(t) for t in tag_lists], N_TAGS)
    with pytest.raises(InputShapeError):
        rules.evaluate(X, None)
    with pytest.raises(InputShapeError):
        rules.evaluate(None, tags)
    with pytest.raises(InputDtypeError):
        rules.evaluate(X, tags.astype(np.int64))
    with pytest.raises(InputShapeError):
        rules.evaluate(X, tags[:, :-1].copy())
    with pytest.raises(InputShapeError):
        rules.evaluate(X[:4].copy(), tags)
    with pytest.raises(InputDtypeError):
        rules.evaluate(X, np.asfortranarray(tags))
    with pytest.raises(InputShapeError):
        rules.evaluate(X[:, :3].copy(), tags)

"""Champion/challenger and shadow scoring on the real store, from a real registry.

- the split is sticky: a merchant's bucket depends on its id and the deployment alone (the
  same in another process, whatever the column width), and two engines opened separately
  (two replicas) assign every merchant the same variant;
- the shares hold within binomial bounds;
- a challenger's rows are decided exactly as its bundle decides them alone (decision,
  limit, PD, reason codes), its bundle and variant named on the answer; the champion's rows
  are untouched; a shadow never changes an answer and is on record per decision;
- challenge / shadow / retire validate like promote and refuse what cannot be served.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.settings import FeatureSettings
from features.training import training_frame
from services.bundles import BundleError, Registry
from services.bundles.build import from_artifact, import_model
from services.bundles.deploy import promote, retire, set_arm
from services.decisionlog.reader import scan
from services.schema.codes import Code
from services.schema.records import REQUEST_DTYPE, DecisionBatch, RequestBatch
from services.scoring.swap import SwappableEngine
from services.scoring.variants import BUCKETS, buckets
from services.settings import Settings, load_settings
from tests.conftest import World, feature_settings
from tests.services.test_bundles import SMALL, _lgb_model, policy_variant, tags_of

Setup = tuple[Registry, str, str, Path]
SHARE = 0.3


def _ids(n: int, start: int = 0) -> np.ndarray:
    return np.array([f"M{i:08d}".encode() for i in range(start, start + n)], dtype="S64")


def test_buckets_depend_on_the_id_and_salt_only() -> None:
    ids = _ids(2000)
    here = buckets(ids, "prod")
    assert (here == buckets(ids.astype("S16"), "prod")).all()  # the column's width does not matter
    assert (here >= 0).all() and (here < BUCKETS).all()
    assert (here != buckets(ids, "other")).mean() > 0.99  # another deployment: another split
    # Another process (a restart, another replica): the same buckets.
    code = ("import numpy as np; from services.scoring.variants import buckets; "
            "ids = np.array([f'M{i:08d}'.encode() for i in range(2000)], dtype='S64'); "
            "print(','.join(map(str, buckets(ids, 'prod').tolist())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert [int(x) for x in out.stdout.strip().split(",")] == here.tolist()


@pytest.mark.parametrize("share", [0.01, 0.1, 0.5])
def test_shares_hold_within_binomial_bounds(share: float) -> None:
    n = 200_000
    got = (buckets(_ids(n), "prod") < round(share * BUCKETS)).mean()
    sigma = (share * (1 - share) / n) ** 0.5
    assert abs(got - share) < 5 * sigma, (got, share)


@pytest.fixture(scope="module")
def setup(clean_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("variants")
    reg = Registry(tmp / "registry")
    tags = tags_of(clean_world)
    a = reg.put(from_artifact(clean_world.data_dir, clean_world.model_version, policy_path=None, tags=tags))
    model = _lgb_model(clean_world, list(SMALL), tmp / "small.txt")
    rows = training_frame(FeatureSettings(data_dir=clean_world.data_dir))[0]
    b = reg.put(import_model(model, policy_path=policy_variant(tmp, "policy-challenger", 2.0), tags=tags,
                             catalogue_sample=rows, version="small-challenger"))
    promote(reg, "prod", a, tags=tags)
    set_arm(reg, "prod", b, arm="fast", share=SHARE, tags=tags)
    set_arm(reg, "prod", b, arm="watch", share=None, tags=tags)
    promote(reg, "solo", b, tags=tags)  # the challenger alone: what it decides without a split
    yield reg, a, b, tmp


def _settings(world: World, tmp: Path, deployment: str, log_dir: Path | None = None) -> Settings:
    return load_settings(None, {
        "features": feature_settings(world).model_dump(),
        "bundle": {"registry": str(tmp / "registry"), "deployment": deployment, "poll_interval_s": 60},
        "decision_log": {"enabled": log_dir is not None, **({"directory": str(log_dir)} if log_dir else {})},
    })


def _batch(merchants: np.ndarray, tag: str) -> RequestBatch:
    r = np.zeros(len(merchants), REQUEST_DTYPE)
    r["application_id"] = [f"{tag}-{uuid.uuid4().hex[:20]}".encode() for _ in merchants]
    r["merchant_id"] = merchants
    r["amount_minor"], r["currency"], r["term_months"], r["product"], r["channel"] = 500_000, 0, 12, 1, 1
    r["declared_revenue_minor"] = float("nan")
    r["deadline"] = time.time() + 600
    return RequestBatch.of_records([row.tobytes() for row in r])


def _merchants(world: World, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.array([f"M{int(i):08d}".encode() for i in rng.choice(3000, n, replace=False)],
                    dtype=REQUEST_DTYPE["merchant_id"])


def _codes(answer: DecisionBatch, rows: np.ndarray) -> list[list[str]]:
    return [answer.reason_codes(int(i)) for i in rows]


def test_challenger_rows_decide_as_the_challenger_alone(setup: Setup, clean_world: World) -> None:
    _reg, a, b, tmp = setup
    merchants = _merchants(clean_world)
    split = SwappableEngine.open(_settings(clean_world, tmp, "prod"))
    solo = SwappableEngine.open(_settings(clean_world, tmp, "solo"))
    try:
        now = time.time()
        got = split.score(_batch(merchants, "sp"), now)
        alone = solo.score(_batch(merchants, "so"), now)
    finally:
        split.close()
        solo.close()
    rows = got.rows
    assert (rows["status"] == Code.OK).all()
    challenger = rows["variant"] == b"fast"
    assert set(rows["variant"].tolist()) == {b"champion", b"fast"}
    share = challenger.mean()
    assert abs(share - SHARE) < 5 * (SHARE * (1 - SHARE) / len(rows)) ** 0.5
    # Named on the answer: the bundle and its versions.
    assert (rows["bundle_id"][challenger] == b.encode()).all() and (rows["bundle_id"][~challenger] == a.encode()).all()
    assert (rows["model_version"][challenger] == b"small-challenger").all()
    assert (rows["policy_version"][challenger] == b"policy-challenger").all()
    assert (rows["model_version"][~challenger] != b"small-challenger").all()
    # Exactly what the challenger decides alone, reasons by code (the tables differ).
    idx = np.flatnonzero(challenger)
    for col in ("decision", "approved_minor", "apr_bps", "risk_grade"):
        assert (rows[col][idx] == alone.rows[col][idx]).all(), col
    np.testing.assert_allclose(rows["pd"][idx], alone.rows["pd"][idx], rtol=0, atol=1e-12)
    assert _codes(got, idx) == _codes(alone, idx)
    # The shadow scored every decision and changed none.
    assert got.shadow_stats["watch"][0] == len(rows)
    np.testing.assert_allclose(got.shadow_stats["watch"][2], np.nansum(alone.rows["pd"]), rtol=1e-9)


def test_two_replicas_assign_every_merchant_alike(setup: Setup, clean_world: World) -> None:
    _, _, _, tmp = setup
    merchants = _merchants(clean_world)
    variants = []
    for k in range(2):  # opened separately, as two replicas (or one after a restart) would be
        engine = SwappableEngine.open(_settings(clean_world, tmp, "prod"))
        try:
            variants.append(engine.score(_batch(merchants, f"r{k}")).rows["variant"].copy())
        finally:
            engine.close()
    assert (variants[0] == variants[1]).all()


def test_shadow_and_variant_on_record(setup: Setup, clean_world: World, tmp_path: Path) -> None:
    _, _, b, tmp = setup
    merchants = _merchants(clean_world, 120)
    engine = SwappableEngine.open(_settings(clean_world, tmp, "prod", tmp_path / "log"))
    try:
        answer = engine.score(_batch(merchants, "lg"))
    finally:
        engine.close()  # flushes the log
    logged = scan(tmp_path / "log")
    assert logged is not None and logged.height == len(merchants)
    logged = logged.sort("row")
    assert logged["variant"].to_list() == [v.decode() for v in answer.rows["variant"]]
    assert logged["bundle_id"].to_list() == [v.decode() for v in answer.rows["bundle_id"]]
    shadows = logged.select(pl.col("shadows").list.first().struct.unnest())
    assert shadows["variant"].to_list() == ["watch"] * len(merchants)
    assert shadows["bundle_id"].to_list() == [b] * len(merchants)
    # Where the challenger answered, its shadow twin (the same bundle) agrees with the answer.
    fast = np.flatnonzero(answer.rows["variant"] == b"fast")
    assert fast.size
    assert shadows["decision"].to_numpy()[fast].tolist() == answer.rows["decision"][fast].tolist()
    np.testing.assert_allclose(shadows["pd"].to_numpy()[fast], answer.rows["pd"][fast], atol=1e-12)


def test_arms_refused_where_they_cannot_serve(setup: Setup, clean_world: World) -> None:
    reg, a, b, _ = setup
    tags = tags_of(clean_world)
    before = reg.index().version
    for kwargs, field in (
        ({"arm": "big", "share": 0.6}, "challengers"),  # above half: promote it instead
        ({"arm": "more", "share": 0.25}, "challengers"),  # with 'fast' at 0.3, more than half
        ({"arm": "champion", "share": 0.1}, "challengers"),
    ):
        with pytest.raises(BundleError) as err:
            set_arm(reg, "prod", b, tags=tags, **kwargs)  # type: ignore[arg-type]
        assert field in str(err.value)
    with pytest.raises(BundleError, match="is the champion"):
        set_arm(reg, "prod", a, arm="self", share=0.1, tags=tags)
    with pytest.raises(BundleError, match="no challenger or shadow 'nobody'"):
        retire(reg, "prod", "nobody")
    assert reg.index().version == before  # nothing refused changed the index


def test_retire_and_promote_the_challenger(setup: Setup, clean_world: World, tmp_path: Path) -> None:
    reg, a, b, _ = setup
    tags = tags_of(clean_world)
    # A copy of the deployment, so the module's other tests keep theirs.
    promote(reg, "trial", a, tags=tags)
    set_arm(reg, "trial", b, arm="fast", share=0.2, tags=tags)
    set_arm(reg, "trial", b, arm="watch", share=None, tags=tags)
    dep = retire(reg, "trial", "watch")
    assert not dep.shadows and [x.name for x in dep.challengers] == ["fast"]
    promote(reg, "trial", b, tags=tags)  # the challenger wins: it is the champion now
    dep = reg.index().deployments["trial"]
    assert dep.bundle == b and not dep.challengers and dep.history[0] == a


def test_variant_metrics_count_what_each_arm_decided(setup: Setup, clean_world: World) -> None:
    import urllib.request

    from services.schema.enums import APPROVE
    from services.settings import TelemetrySettings
    from services.telemetry import Telemetry
    from tests.support import free_port

    _, _, _, tmp = setup
    engine = SwappableEngine.open(_settings(clean_world, tmp, "prod"))
    try:
        answer = engine.score(_batch(_merchants(clean_world, 300), "mt"))
    finally:
        engine.close()
    port = free_port()
    tel = Telemetry(TelemetrySettings(prometheus_port=port), "test")
    try:
        tel.batch(len(answer.rows), 0.001, {}, answer)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        tel.shutdown()

    def value(field: str, variant: str, role: str) -> float:
        hits = [ln for ln in body.splitlines() if ln.startswith(f"creditauth_variant_{field}_total{{")
                and f'variant="{variant}"' in ln and f'role="{role}"' in ln]
        assert len(hits) == 1, (field, variant, role, hits)
        return float(hits[0].rsplit(" ", 1)[1])

    rows = answer.rows
    for name in ("champion", "fast"):
        mine = rows[(rows["variant"] == name.encode()) & (rows["status"] == 0)]
        scored = ~np.isnan(mine["pd"])
        assert value("decisions", name, "answer") == scored.sum() > 0
        assert value("approvals", name, "answer") == (mine["decision"] == APPROVE).sum()
        assert value("pd_sum", name, "answer") == pytest.approx(mine["pd"][scored].sum(), rel=1e-9)
        assert value("approved_minor_sum", name, "answer") == pytest.approx(float(mine["approved_minor"].sum()))
    assert value("decisions", "watch", "shadow") == answer.shadow_stats["watch"][0] == len(rows)


def test_a_split_log_replays_each_row_with_its_own_bundle(setup: Setup, clean_world: World, tmp_path: Path) -> None:
    """Champion and challenger rows in one log: the registry replays every row with the bundle
    that decided it, identically; ``--bundle`` the champion's re-decides the challenger's rows."""
    import json

    from services.decisionlog.makers import Makers
    from services.decisionlog.replay import read_log, recompute
    from services.decisionlog.whatif import summary

    reg, a, _b, tmp = setup
    engine = SwappableEngine.open(_settings(clean_world, tmp, "prod", tmp_path / "log"))
    try:
        answer = engine.score(_batch(_merchants(clean_world, 300), "rb"))
    finally:
        engine.close()
    fast = int((answer.rows["variant"] == b"fast").sum())
    assert 0 < fast < len(answer.rows)
    features = feature_settings(clean_world)
    rec = recompute(read_log(tmp_path / "log"), Makers(features, registry=reg))
    s = summary(rec, 5)
    assert (s["decided"], s["identical"], s["mismatched"]) == (len(answer.rows), len(answer.rows), 0), s
    assert rec.exact[0] and len(rec.makers[0]) == 2  # both bundles, each on its own rows
    # Without the registry the challenger's imported model is nowhere to be found: said so.
    with pytest.raises(Exception, match="pass --registry"):
        recompute(read_log(tmp_path / "log"), Makers(features))
    # Every row by the champion's bundle: the challenger's rows are what changes.
    import yaml

    config = tmp_path / "settings.yaml"  # the world's feature settings (its generous feature age)
    config.write_text(yaml.safe_dump({"features": json.loads(features.model_dump_json())}))
    args = ["replay", str(tmp_path / "log"), "--config", str(config), "--registry", reg.uri, "--bundle", a[:10]]
    out = subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["decided"] == len(answer.rows) and doc["replayed_with"].endswith(f"(bundle {a[:12]})")
    assert 0 < doc["changes"]["changed"] <= fast  # only the challenger's rows can change


def test_a_challenger_must_keep_the_champions_exposure_caps(setup: Setup, clean_world: World, tmp_path: Path) -> None:
    """The champion's caps reserve every arm's approvals, so a challenger's policy must declare
    them at the same reason slots: one without caps is refused (naming why), one with them serves."""
    import yaml

    from services.policy.config import DEFAULT_POLICY

    reg, _, _, _ = setup
    tags = tags_of(clean_world)
    cap = {"name": "merchant_day", "scope": "merchant", "window_s": 86400, "max_amount_base_minor": 10**12,
           "on_reached": "refer", "code": "X_MERCHANT_DAY", "description": "The merchant's daily cap is reached"}

    def policy(version: str, caps: list[dict[str, object]], limit_a: float) -> Path:
        doc = yaml.safe_load(DEFAULT_POLICY.read_text())
        doc["version"], doc["exposure"] = version, {"caps": caps}
        doc["grades"][0]["limit_multiple"] = limit_a
        path = tmp_path / f"{version}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    model = _lgb_model(clean_world, list(SMALL), tmp_path / "m.txt")
    rows = training_frame(FeatureSettings(data_dir=clean_world.data_dir))[0]

    def bundle(version: str, caps: list[dict[str, object]], limit_a: float) -> str:
        return reg.put(import_model(model, policy_path=policy(version, caps, limit_a), tags=tags,
                                    catalogue_sample=rows, version=f"m-{version}"))

    capped = bundle("capped-champion", [cap], 3.0)
    promote(reg, "caps", capped, tags=tags)
    before = reg.index().version
    with pytest.raises(BundleError) as err:
        set_arm(reg, "caps", bundle("no-caps", [], 2.0), arm="bare", share=0.1, tags=tags)
    assert "exposure.caps" in str(err.value) and "merchant_day" in str(err.value)
    assert reg.index().version == before
    dep, _ = set_arm(reg, "caps", bundle("same-caps", [cap], 2.0), arm="kept", share=0.1, tags=tags)
    assert [a.name for a in dep.challengers] == ["kept"]

"""Replay and what-if on a real log: decisions made by the real engine on a copy of the small
world (its own SQLite store, so velocity written here stays here), read back and decided again."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from features import open_backend
from features.catalog import BATCH_VIEWS
from services.cli.main import main
from services.decisionlog.makers import Makers
from services.decisionlog.replay import Log, read_log, recompute
from services.decisionlog.schema import FEATURE_PREFIX
from services.decisionlog.whatif import compared, population_inputs, report, summary
from services.policy.config import DEFAULT_POLICY
from services.schema.codes import Code
from services.schema.enums import APPROVE, DECLINE, REVIEW
from services.schema.records import REQUEST_DTYPE, DecisionBatch, RequestBatch
from services.scoring.factory import build_engine
from services.settings import Settings, load_settings
from tests.conftest import World

CAP = 200_000  # the modified policy's cap on WORKING_CAPITAL (product 1), base minor units
LGD = 0.45


@dataclass(frozen=True)
class Made:
    settings: Settings
    root: Path  # the log
    config: Path  # the same settings as YAML, for the CLI
    fresh: pl.DataFrame  # the engine's own answers for the decisions it made (not replays)
    replays: int
    refused: int


def _requests(merchants: list[str], rng: np.random.Generator, now: float) -> RequestBatch:
    n = len(merchants)
    r = np.zeros(n, REQUEST_DTYPE)
    r["application_id"] = [f"rp-{uuid.uuid4().hex[:24]}".encode() for _ in range(n)]
    r["merchant_id"] = [m.encode() for m in merchants]
    r["amount_minor"] = rng.choice([60_000, 150_000, 500_000, 3_000_000], n)
    r["product"] = rng.integers(1, 5, n)
    # Product 1 in CNY only: the capped policy's effect on it is then checkable by hand.
    r["currency"] = np.where(r["product"] == 1, 0, rng.choice([0, 0, 1, 6], n))
    r["term_months"] = rng.choice([3, 6, 12, 24, 36], n)
    r["channel"] = rng.integers(1, 6, n)
    r["declared_revenue_minor"] = np.where(rng.random(n) < 0.5, rng.integers(100_000, 5_000_000, n), np.nan)
    r["deadline"] = now + 60
    return RequestBatch(r)


def _answers(batch: RequestBatch, answer: DecisionBatch) -> pl.DataFrame:
    rows = answer.rows
    return pl.DataFrame({
        "decision_id": answer.decision_ids(), "status": rows["status"], "decision": rows["decision"],
        "approved_minor": rows["approved_minor"], "apr_bps": rows["apr_bps"], "pd": rows["pd"],
        "risk_grade": [g.decode() for g in rows["risk_grade"].tolist()],
        "reasons": [answer.reason_codes(i) for i in range(len(answer))],
        "product": batch.rows["product"], "currency": batch.rows["currency"],
        "requested": batch.rows["amount_minor"], "stale": rows["stale"],
    })


@pytest.fixture(scope="module")
def made(clean_world: World, tmp_path_factory: pytest.TempPathFactory) -> Made:
    world = clean_world
    tmp = tmp_path_factory.mktemp("replay")
    data = tmp / "world"
    shutil.copytree(world.data_dir, data, ignore=shutil.ignore_patterns("decisions*", "decision_log.key"))
    key = tmp / "id.key"
    key.write_bytes(uuid.uuid4().hex.encode() * 2)
    now = time.time()
    as_of = dt.datetime.combine(world.as_of, dt.time(), tzinfo=dt.timezone.utc).timestamp()
    # Fresh now, stale for the batch decided 20 days later: replay must see both as they were.
    max_age = now - as_of + 10 * 86400
    cfg = {"features": {"data_dir": str(data), "max_feature_age_s": max_age},
           "decision_log": {"directory": str(tmp / "decisions"), "id_key_file": str(key), "flush_interval_s": 0.05}}
    config = tmp / "settings.yaml"
    config.write_text(yaml.safe_dump(cfg))
    settings = load_settings(config, {})
    rng = np.random.default_rng(13)
    engine = build_engine(settings)
    fresh, replays, refused = [], 0, 0
    plan = [([f"M{i:08d}" for i in range(400)], now), ([f"M{i:08d}" for i in range(400, 700)], now + 20 * 86400),
            ([f"X{i:08d}" for i in range(40)], now), (["M00000900"] * 7, now)]  # unknown; a burst (velocity)
    batches = []
    for merchants, at in plan:
        batch = _requests(merchants, rng, at)
        batches.append(batch)
        answer = engine.score(batch, now=at)
        fresh.append(_answers(batch, answer))
    # Replays of earlier decisions and an expired item: logged, not decisions to replay.
    again = batches[0].rows[:25].copy()
    late = batches[0].rows[:1].copy()
    late["application_id"], late["deadline"] = b"rp-late", now - 1
    answer = engine.score(RequestBatch(np.concatenate([again, late])), now=now)
    replays, refused = int((answer.status == Code.OK).sum()), int((answer.status != Code.OK).sum())
    engine.close()
    return Made(settings, tmp / "decisions", config, pl.concat(fresh), replays, refused)


def _policy(tmp: Path, **changes: object) -> Path:
    doc = yaml.safe_load(DEFAULT_POLICY.read_text())
    doc.update(changes)
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _capped(tmp: Path) -> Path:
    doc = yaml.safe_load(DEFAULT_POLICY.read_text())
    return _policy(tmp, version="policy-test-capped",
                   product_caps_base_minor={**doc["product_caps_base_minor"], "WORKING_CAPITAL": CAP})


def test_replay_with_the_versions_that_made_them_is_identical(made: Made) -> None:
    f = made.fresh
    # The world decides every way: the replay is checked on all of it.
    assert set(f["decision"].unique()) == {APPROVE, REVIEW, DECLINE}
    assert f["stale"].any() and not f["stale"].all()
    log = read_log(made.root)
    assert log.decided.height == f.height and (log.replays, log.refused) == (made.replays, made.refused)
    rec = recompute(log, Makers(made.settings.features))
    s = summary(rec)
    assert s["same_versions"] and s["mismatched"] == 0 and s["identical"] == f.height, s["first_mismatches"]
    # Identical to what the engine answered, too (not only to what was logged).
    ids = log.decided["decision_id"].to_list()
    by_id = {d: i for i, d in enumerate(ids)}
    order = np.array([by_id[d] for d in f["decision_id"].to_list()])
    out = rec.replayed
    assert (out.decision[order] == f["decision"].to_numpy()).all()
    assert (out.approved_minor[order] == f["approved_minor"].to_numpy()).all()
    assert (out.apr_bps[order] == f["apr_bps"].to_numpy()).all()
    np.testing.assert_allclose(out.pd[order], f["pd"].to_numpy(), rtol=0, atol=1e-12)
    codes = [[rec.reasons.words[r] for r in row if r >= 0] for row in out.reasons[order]]
    assert codes == f["reasons"].to_list()


def test_a_log_from_before_a_view_was_added_still_replays(made: Made) -> None:
    """Decisions logged before the catalogue grew a view (here: its columns dropped from the
    log) replay with that view missing, as the replica that made them never read it."""
    log = read_log(made.root)
    (view,) = [v for v in BATCH_VIEWS if v.name == "merchant_baseline"]  # policy-only: not a model input
    older = [f"{FEATURE_PREFIX}{c}" for c in view.numeric_names] + [f"view_ts_{view.name}"]
    old = Log(log.decided.drop(older), log.replays, log.refused, log.without_inputs)
    rec = recompute(old, Makers(made.settings.features))
    s = summary(rec)
    assert s["mismatched"] == 0 and s["identical"] == log.decided.height, s["first_mismatches"]


def test_replay_cli_passes_and_fails_on_a_tampered_log(made: Made, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    main(["replay", str(made.root), "--config", str(made.config)])
    out = capsys.readouterr().out
    assert f"replayed {made.fresh.height:,} logged decisions" in out and "mismatched: 0" in out
    # One logged limit changed by hand: the replay names that decision and exits 1.
    bad = tmp_path / "decisions"
    shutil.copytree(made.root, bad)
    files = sorted(bad.glob("date=*/hour=*/*.parquet"))
    df = pl.read_parquet(files[0], hive_partitioning=False)
    row = df.with_row_index("i").filter(pl.col("feature_event_ts").is_not_null() & (pl.col("approved_minor") > 0))
    target, victim = int(row["i"][0]), row["decision_id"][0]
    df = df.with_columns(approved_minor=pl.when(pl.int_range(df.height) == target)
                         .then(pl.col("approved_minor") + 1).otherwise(pl.col("approved_minor")))
    df.write_parquet(files[0])
    with pytest.raises(SystemExit) as failed:
        main(["replay", str(bad), "--config", str(made.config), "--json"])
    assert failed.value.code == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["mismatched"] == 1 and doc["mismatched_by_field"]["approved_minor"] == 1
    assert doc["first_mismatches"][0]["decision_id"] == victim


def _expected_capped(f: pl.DataFrame) -> pl.DataFrame:
    """The capped policy by hand: product 1 (CNY) limits not declined are cut to CAP."""
    hit = (pl.col("product") == 1) & (pl.col("decision") != DECLINE) & (pl.col("approved_minor") > CAP)
    return f.with_columns(
        hit=hit, new_limit=pl.when(hit).then(CAP).otherwise(pl.col("approved_minor")),
        newly_reduced=hit & ~pl.col("reasons").list.contains("AMOUNT_REDUCED"),
    )


def test_replay_with_a_capped_policy_reports_exactly_the_cut_limits(made: Made, tmp_path: Path) -> None:
    policy = _capped(tmp_path)
    rec = recompute(read_log(made.root), Makers(made.settings.features, [policy]), [(None, policy, None)])
    assert not rec.exact[0]
    c = compared(rec)
    doc = report(c, LGD, policy)
    e = _expected_capped(made.fresh)
    assert e["hit"].sum() > 0 and e["newly_reduced"].sum() > 0
    ch = doc["changes"]
    assert ch["changed"] == e["hit"].sum()
    # No decision moves: every transition is to itself, with the logged counts.
    counts = dict(made.fresh.group_by("decision").len().iter_rows())
    names = {APPROVE: "APPROVE", REVIEW: "REVIEW", DECLINE: "DECLINE"}
    assert {(t["from"], t["to"]): t["count"] for t in ch["transitions"]} == {
        (names[d], names[d]): n for d, n in counts.items()}
    cut = e.filter("hit")
    assert ch["limit_delta"]["cut"] == cut.height and ch["limit_delta"]["raised"] == 0
    assert ch["limit_delta"]["total"] == pytest.approx(float((CAP - cut["approved_minor"]).sum()) / 100)
    assert ch["reasons_appeared"] == {"AMOUNT_REDUCED": e["newly_reduced"].sum()}
    assert ch["reasons_disappeared"] == {}
    ids = set(cut["decision_id"].to_list())
    assert {x["decision_id"] for x in ch["examples"]} <= ids
    assert all(x["after"]["approved_minor"] == CAP for x in ch["examples"])


def _figures(decision: pl.Expr, limit: pl.Expr) -> list[pl.Expr]:
    approved = decision == APPROVE
    return [approved.mean(), (limit / 100).filter(approved).mean(),
            (pl.col("pd") * limit / 100 * LGD).filter(approved).sum()]


def test_whatif_figures_equal_the_hand_computed_population(made: Made, tmp_path: Path) -> None:
    policy = _capped(tmp_path)
    out = tmp_path / "report"
    main(["whatif", "--config", str(made.config), "--model", "latest", "--policy", str(policy),
          "--log", str(made.root), "--lgd", str(LGD), "--out", str(out)])
    doc = json.loads((out / "whatif.json").read_text())
    # Only CNY (exponent 2, rate 1) is left in the figures' currency without conversion:
    # convert the others by the policy's rates, as the report does.
    fx = yaml.safe_load(policy.read_text())["fx_to_base"]
    e = _expected_capped(made.fresh).with_columns(
        rate=pl.col("currency").replace_strict({0: fx["CNY"], 1: fx["USD"], 6: fx["JPY"] * 100}))
    a = e.select(_figures(pl.col("decision"), pl.col("approved_minor") * pl.col("rate"))).row(0)
    b = e.select(_figures(pl.col("decision"), pl.col("new_limit") * pl.col("rate"))).row(0)
    t = doc["totals"]
    got_a = (t["approval_rate_a"], t["mean_limit_a"], t["expected_loss_a"])
    got_b = (t["approval_rate_b"], t["mean_limit_b"], t["expected_loss_b"])
    assert got_a == pytest.approx(a, rel=1e-9) and got_b == pytest.approx(b, rel=1e-9)
    assert t["n"] == made.fresh.height and t["changed"] == e["hit"].sum()
    wc = next(r for r in doc["segments"]["product"] if r["product"] == "WORKING_CAPITAL")
    assert wc["changed"] == e["hit"].sum() and wc["n"] == e.filter(pl.col("product") == 1).height
    assert all(r["changed"] == 0 for r in doc["segments"]["product"] if r["product"] != "WORKING_CAPITAL")
    assert sum(r["n"] for r in doc["segments"]["industry"]) == made.fresh.height
    page = (out / "whatif.html").read_text()
    assert page.count("<svg") >= 2 + 2 * 5 and "WORKING_CAPITAL" in page
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org", "")


def test_population_inputs_are_what_the_online_store_serves(made: Made) -> None:
    fs = made.settings.features
    x = population_inputs(fs)
    assert len(x) > 1000
    from features import MATRIX_COLUMNS, TagCatalog

    rows = np.arange(0, len(x), 17)
    merchants = x.requests["merchant_id"][rows].astype("U64").tolist()
    reader = open_backend(fs).reader(TagCatalog.load(fs).n_bytes)
    try:
        served = reader.read(merchants)
    finally:
        reader.close()
    batch_cols = [i for i, c in enumerate(MATRIX_COLUMNS) if c not in ("apps_1h", "apps_24h")]
    np.testing.assert_array_equal(x.features.matrix[rows][:, batch_cols], served.matrix[:, batch_cols])
    np.testing.assert_array_equal(x.features.tags[rows], served.tags)
    np.testing.assert_array_equal(x.features.found[rows], served.found)
    assert served.view_ts is not None and x.features.view_ts is not None
    np.testing.assert_array_equal(x.features.view_ts[rows, :4], served.view_ts[:, :4])


def test_whatif_on_a_population_against_itself_changes_nothing(made: Made, tmp_path: Path) -> None:
    out = tmp_path / "pop"
    data = made.settings.data_dir
    main(["whatif", "--config", str(made.config), "--model", "latest", "--population", str(data), "--out", str(out)])
    doc = json.loads((out / "whatif.json").read_text())
    t = doc["totals"]
    assert t["n"] == pl.scan_parquet(data / "raw" / "applications" / "*.parquet").select(pl.len()).collect().item()
    assert t["changed"] == 0 and doc["changes"]["limit_delta"]["cut"] == 0
    assert 0 < t["approval_rate_a"] == t["approval_rate_b"] < 1
    assert t["expected_loss_a"] == t["expected_loss_b"] > 0


def test_replay_reproduces_decisions_made_with_an_input_missing(made: Made, tmp_path: Path) -> None:
    """Another connection holds the store's write lock: the velocity update fails (then, with
    an exclusive lock, the read too); the policy's degraded modes decide, and replay agrees."""
    root = tmp_path / "decisions"
    settings = load_settings(made.config, {"decision_log": {"directory": str(root)}, "features": {"timeout_s": 0.05}})
    engine = build_engine(settings)
    rng = np.random.default_rng(5)
    now = time.time()
    answers = []
    for lock, first in (("IMMEDIATE", 1000), ("EXCLUSIVE", 1100)):
        holder = sqlite3.connect(settings.features.sqlite_path, isolation_level=None)
        try:
            holder.execute(f"BEGIN {lock}")
            batch = _requests([f"M{i:08d}" for i in range(first, first + 50)], rng, now)
            answers.append(engine.score(batch, now=now))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    engine.close()
    assert all(a.rows["degraded"].all() for a in answers)
    assert "D_VELOCITY_UNAVAILABLE" in answers[0].reason_codes(0)
    log = read_log(root)
    assert log.decided.height == 100
    s = summary(recompute(log, Makers(settings.features)))
    assert s["mismatched"] == 0 and s["identical"] == 100, s["first_mismatches"]

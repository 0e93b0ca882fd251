"""The decision log on the real engine and the real small world: every decision once,
replays flagged, identifiers hashed, the sink down and back, the spool full."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from services.decisionlog.privacy import IdHasher, load_key
from services.decisionlog.reader import lookup, scan
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.writer import DecisionLog, DecisionLogUnavailable
from services.errors import ConfigError, code_of
from services.schema.codes import Code
from services.schema.records import REQUEST_DTYPE, DecisionBatch, RequestBatch
from services.scoring import ScoringEngine
from services.scoring.factory import build_engine
from services.settings import Settings, load_settings
from tests.conftest import World, feature_settings


def _settings(world: World, tmp: Path, **log: object) -> Settings:
    key = tmp / "id.key"
    if not key.exists():
        key.write_bytes(uuid.uuid4().hex.encode() * 2)
    cfg = {"directory": tmp / "decisions", "spool_directory": tmp / "spool", "id_key_file": key,
           "flush_interval_s": 0.05, **log}
    return load_settings(None, {"features": feature_settings(world).model_dump(), "decision_log": cfg})


def _item(merchant: str, app: str, amount: int = 500_000, caller: bytes = b"", deadline: float = 0.0) -> bytes:
    r = np.zeros(1, REQUEST_DTYPE)
    r["application_id"], r["merchant_id"], r["caller"] = app.encode(), merchant.encode(), caller
    r["amount_minor"], r["currency"], r["term_months"], r["product"], r["channel"] = amount, 0, 12, 1, 1
    r["declared_revenue_minor"] = float("nan")
    r["deadline"] = deadline or time.time() + 60
    return r.tobytes()


def _apps(n: int) -> list[str]:
    return [f"dl-{uuid.uuid4().hex[:20]}" for _ in range(n)]


def _wait(log: DecisionLog, cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for the writer thread to reach a state: checked after each of its flushes, bounded."""
    assert log.wait_until(cond, timeout), f"timed out waiting for {what}"


@pytest.fixture()
def logged(world: World, tmp_path: Path) -> Iterator[tuple[ScoringEngine, Settings]]:
    settings = _settings(world, tmp_path, roll_bytes=1024)
    engine = build_engine(settings)
    yield engine, settings
    engine.close()


def test_after_close_every_answered_decision_is_logged_exactly_once(
    logged: tuple[ScoringEngine, Settings],
) -> None:
    engine, settings = logged
    log = engine._log
    assert log is not None
    answers: list[DecisionBatch] = []
    apps = _apps(8 * 64)
    for b in range(8):
        chunk = apps[b * 64 : (b + 1) * 64]
        answers.append(engine.score(RequestBatch.of_records([_item(f"M{i:08d}", a) for i, a in enumerate(chunk)])))
        if b < 2:  # two flushes of their own: two segments (rolled by size)
            _wait(log, lambda b=b: log.stats.logged_rows == 64 * (b + 1), "a flush")
    # Replays of earlier decisions, a repeat inside the batch, an expired item, a reused id.
    special = [_item(f"M{i:08d}", a) for i, a in enumerate(apps[:5])]
    special += [_item("M00000900", "dl-twice"), _item("M00000900", "dl-twice")]
    special += [_item("M00000901", "dl-late", deadline=time.time() - 1)]
    answers.append(engine.score(RequestBatch.of_records(special)))
    answers.append(engine.score(RequestBatch.of_records([_item("M00000001", apps[1], amount=1)])))
    engine.close()

    root = settings.decision_log.root(settings.data_dir)
    assert not list(root.glob("_journal/*/*.arrow")), "close leaves no unrolled chunk"
    files = list(root.glob("date=*/hour=*/*.parquet"))
    assert len(files) > 1, "segments roll by size"
    assert not [p for p in root.rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
    df = scan(root, journal=False)
    assert df is not None and df.height == sum(len(a) for a in answers)

    ok = np.concatenate([a.status == Code.OK for a in answers])
    answered = {d for a in answers for d, s in zip(a.decision_ids(), a.status.tolist(), strict=True) if s == 0}
    decided = df.filter((pl.col("status") == 0) & ~pl.col("replay"))
    assert decided["decision_id"].n_unique() == decided.height, "no decision is logged twice"
    assert set(decided["decision_id"].to_list()) == answered
    replays = df.filter(pl.col("replay"))
    assert replays.height == 6  # five replays from the store, one repeat inside the batch
    assert set(replays["decision_id"].to_list()) <= answered
    refused = dict(df.filter(pl.col("status") != 0).group_by("status").len().iter_rows())
    assert refused == {Code.DEADLINE_EXCEEDED: 1, Code.ALREADY_EXISTS: 1}
    assert int(ok.sum()) == df.filter(pl.col("status") == 0).height

    # The inputs of decisions made here are on record; replays and refusals carry none.
    assert decided["f_rev_mean_30d"].null_count() < decided.height
    assert replays["f_rev_mean_30d"].null_count() == replays.height
    assert float(decided["stage_kernel_s"].min()) > 0  # type: ignore[arg-type]
    # The logged outputs are the answered ones.
    first = answers[0]
    by_id = dict(zip(df["decision_id"].to_list(), df["approved_minor"].to_list(), strict=True))
    assert [by_id[d] for d in first.decision_ids()] == first["approved_minor"].tolist()


def test_identifiers_are_stored_as_keyed_hashes_and_found_by_id(world: World, tmp_path: Path) -> None:
    settings = _settings(world, tmp_path)
    engine = build_engine(settings)
    app = _apps(1)[0]
    engine.score(RequestBatch.of_records([_item("M00000042", app, caller=b"svc-a")]))
    engine.score(RequestBatch.of_records([_item("M00000042", app, caller=b"svc-b")]))
    engine.close()
    root = settings.decision_log.root(settings.data_dir)
    df = scan(root)
    assert df is not None
    for name, dtype in df.schema.items():
        if dtype == pl.String:
            values = set(df[name].drop_nulls().to_list())
            assert app not in values and "M00000042" not in values, name
    hasher = IdHasher(load_key(settings.decision_log, settings.data_dir, create=False))
    assert df["application_key"].to_list() == [hasher.one(app)] * 2
    found = lookup(root, hasher, app, caller="svc-b")
    assert found.height == 1 and found["caller"].to_list() == ["svc-b"]
    assert not found["replay"][0], "another caller's id is its own application"
    other = IdHasher(b"another key of thirty-two bytes!")
    assert lookup(root, other, app).height == 0, "without the key, the id is not found"


def _blocked(tmp: Path) -> Path:
    """A log directory that cannot be made: its parent is a file (a real OS failure)."""
    (tmp / "blocked").write_text("not a directory")
    return tmp / "blocked" / "decisions"


def _unblock(tmp: Path) -> None:
    (tmp / "blocked").unlink()


def test_sink_down_spools_then_drains_when_back(world: World, tmp_path: Path) -> None:
    settings = _settings(world, tmp_path, directory=_blocked(tmp_path))
    engine = build_engine(settings)
    log = engine._log
    assert log is not None
    apps = _apps(3 * 32)
    for b in range(3):
        engine.score(RequestBatch.of_records([_item("M00000100", a) for a in apps[b * 32 : (b + 1) * 32]]))
    _wait(log, lambda: log.stats.spooled_rows == 96, "the spool to take every batch")
    assert log.stats.logged_rows == 0 and log.stats.sink_failures > 0 and not log.full
    assert list((tmp_path / "spool").glob("*/*.arrow")), "spooled on local disk"
    _unblock(tmp_path)
    _wait(log, lambda: log.stats.logged_rows == 96, "the spool to drain into the sink")
    engine.close()
    df = scan(settings.decision_log.root(settings.data_dir), journal=False)
    assert df is not None and df.height == 96 and df["batch_seq"].n_unique() == 3
    assert not list((tmp_path / "spool").glob("*/*.arrow")), "drained spool files are removed"


def test_full_spool_refuses_new_decisions_until_the_sink_is_back(world: World, tmp_path: Path) -> None:
    settings = _settings(world, tmp_path, directory=_blocked(tmp_path), spool_max_bytes=0)
    engine = build_engine(settings)
    log = engine._log
    assert log is not None
    first = engine.score(RequestBatch.of_records([_item("M00000101", a) for a in _apps(16)]))
    _wait(log, lambda: log.full, "the log to report itself full")
    with pytest.raises(DecisionLogUnavailable) as refused:
        engine.score(RequestBatch.of_records([_item("M00000102", a) for a in _apps(4)]))
    assert code_of(refused.value) == Code.UNAVAILABLE
    _unblock(tmp_path)
    _wait(log, lambda: not log.full, "the held batches to be written")
    engine.score(RequestBatch.of_records([_item("M00000103", a) for a in _apps(4)]))
    engine.close()
    df = scan(settings.decision_log.root(settings.data_dir), journal=False)
    assert df is not None and df.height == 20
    assert set(first.decision_ids()) <= set(df["decision_id"].to_list()), "what was answered is logged"


def test_full_spool_in_count_mode_keeps_deciding_and_counts(world: World, tmp_path: Path) -> None:
    settings = _settings(world, tmp_path, directory=_blocked(tmp_path), spool_max_bytes=0, when_full="count")
    engine = build_engine(settings)
    log = engine._log
    assert log is not None
    for _ in range(3):
        answer = engine.score(RequestBatch.of_records([_item("M00000104", a) for a in _apps(8)]))
        assert (answer.status == Code.OK).all()
    _wait(log, lambda: log.stats.unlogged_rows == 24, "the unlogged decisions to be counted")
    assert not log.full
    engine.close()


def test_settings_refuse_unknown_keys_and_unreadable_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"decision_log\.flush_every"):
        load_settings(None, {"decision_log": {"flush_every": 1}})
    with pytest.raises(ConfigError, match=r"decision_log\.when_full"):
        load_settings(None, {"decision_log": {"when_full": "ignore"}})
    with pytest.raises(ConfigError, match=r"decision_log\.id_key_file"):
        load_key(DecisionLogSettings(id_key_file=tmp_path / "absent"), tmp_path)
    with pytest.raises(ConfigError, match=r"decision_log\.id_key_file"):
        load_key(DecisionLogSettings(), tmp_path, create=False)
    generated = load_key(DecisionLogSettings(), tmp_path)
    assert load_key(DecisionLogSettings(), tmp_path, create=False) == generated
    assert (tmp_path / "decision_log.key").stat().st_mode & 0o077 == 0, "the generated key is private"

"""The decision-log checks of the fault tests (``logcheck``) on logs made up here: each kind
of hole or duplicate is caught, and a SIGKILL's allowed loss is told from the rest."""

from __future__ import annotations

import datetime as dt

import polars as pl

from tests.faults.logcheck import FLUSH_ALLOWANCE_S, LOG_COLUMNS, Answers, Kill, check

T0 = 1_800_000_000.0  # the made-up run's kill, wall clock
KILLED, OTHER = "host-11-aaa", "host-22-bbb"


def _log(*rows: tuple[str, str, str, bool, float]) -> pl.DataFrame:
    """Rows of (application, decision id, writer, replay, appended s before the kill)."""
    return pl.DataFrame({
        "application_id": [r[0] for r in rows], "decision_id": [r[1] for r in rows],
        "replica_id": [r[2] for r in rows], "replay": [r[3] for r in rows], "status": [0] * len(rows),
        "logged_at": [dt.datetime.fromtimestamp(T0 - r[4], dt.timezone.utc) for r in rows],
    }, schema=LOG_COLUMNS)


def _answers(*got: tuple[str, str, float | None]) -> Answers:
    a = Answers()
    for app, did, before in got:
        if before is None:
            a.add_late(app, did)
        else:
            a.add(app, did, T0 - before)
    return a


KILL = Kill(T0, frozenset({"dk"}), "host-11-")


def test_a_clean_log_is_sound() -> None:
    r = check(_log(("a", "dk-1", KILLED, False, 2.0), ("a", "dk-1", OTHER, True, -1.0)),
              _answers(("a", "dk-1", 1.9), ("a", "dk-1", -1.0)), KILL)
    assert not (r.duplicates or r.not_got or r.missing or r.unexplained or r.replays_short)
    assert (r.decisions, r.replays, r.killed_kept) == (1, 1, 1)


def test_a_second_decision_and_one_the_caller_did_not_get_are_caught() -> None:
    r = check(_log(("a", "dk-1", KILLED, False, 2.0), ("a", "do-9", OTHER, False, 1.0)),
              _answers(("a", "dk-1", 1.9)))
    assert r.duplicates == {"a": 2}
    assert r.not_got == [("a", "do-9", "dk-1")]


def test_a_repeat_not_logged_as_a_replay_is_caught() -> None:
    r = check(_log(("a", "dk-1", KILLED, False, 2.0)), _answers(("a", "dk-1", 1.9), ("a", "dk-1", 1.0)))
    assert r.replays_short == ["a"]


def test_a_hole_without_a_kill_is_unexplained() -> None:
    r = check(_log(), _answers(("a", "dk-1", 1.0)))
    assert r.missing == ["a"] and r.unexplained == ["a"]


def test_a_sigkill_may_lose_the_last_flush_interval_only() -> None:
    window = 0.5 + FLUSH_ALLOWANCE_S
    log = _log(("kept", "dk-1", KILLED, False, 0.6))
    got = _answers(("kept", "dk-1", 0.59), ("late", "dk-2", 0.3), ("wire", "dk-3", -0.01), ("lost", "dk-4", None),
                   ("old", "dk-5", window + 0.05), ("before-last", "dk-6", 0.65), ("survivor", "do-1", 0.1))
    r = check(log, got, KILL)
    assert r.missing == sorted(["late", "wire", "lost", "old", "before-last", "survivor"])
    # Too early, answered before a row the writer did flush, or decided by a process not killed.
    assert sorted(r.unexplained) == ["before-last", "old", "survivor"]
    assert (r.missing_lost_on_wire, r.missing_after_kill) == (1, 1)
    assert r.earliest_missing_s is not None and abs(r.earliest_missing_s - 0.3) < 1e-6

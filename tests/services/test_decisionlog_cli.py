"""``creditauth log show`` and ``creditauth log export`` on a real log (real files, real polars)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from services.cli.main import main
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.writer import open_log
from services.schema.codes import Code
from services.schema.enums import APPROVE
from services.schema.records import REQUEST_DTYPE, DecisionBatch, blank_decisions

TABLE = (("NO_HISTORY", "no history"), ("HIGH_PD", "high PD"))


def _write_log(data_dir: Path, n: int = 6) -> None:
    """Two batches through the log writer, with the defaults (directory, generated key)."""
    log = open_log(DecisionLogSettings(), data_dir)
    assert log is not None
    for b in range(2):
        req = np.zeros(n, REQUEST_DTYPE)
        req["application_id"] = [f"app-{b}-{i}".encode() for i in range(n)]
        req["merchant_id"] = b"M00000007"
        req["caller"] = b"svc-a" if b == 0 else b"svc-b"
        req["amount_minor"], req["currency"], req["term_months"] = 250_000, 1, 12
        req["deadline"] = time.time() + 5
        rows = blank_decisions(n)
        rows["decision_id"] = [f"d-{b}-{i}".encode() for i in range(n)]
        rows["decision"], rows["approved_minor"], rows["currency"], rows["apr_bps"] = APPROVE, 200_000, 1, 1450
        rows["risk_grade"], rows["pd"] = b"B", 0.0123
        rows["reason"][:, :2] = [1, 0]
        rows["reason_contrib"][:, :2] = [0.5, 0.25]
        rows["model_version"], rows["policy_version"] = b"lgbm-test", b"policy-7"
        rows["status"][n - 1] = Code.DEADLINE_EXCEEDED
        rows["decision_id"][n - 1] = b""
        answer = DecisionBatch(rows, TABLE, "", {"kernel": 0.001})
        log.append(req, answer, np.zeros(n, bool), np.zeros(0, np.intp), None)
    log.close()


def test_log_show_finds_the_decision_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_log(tmp_path)
    main(["log", "show", "app-0-2", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "application app-0-2 (caller svc-a)" in out
    assert "decision APPROVE  id d-0-2" in out
    assert "limit 2,000.00 USD" in out and "APR 1450 bps" in out and "grade B" in out
    assert "reasons: HIGH_PD (+0.500), NO_HISTORY (+0.250)" in out
    assert "model lgbm-test, policy policy-7" in out

    main(["log", "show", "app-1-5", "--data-dir", str(tmp_path), "--json"])
    row = json.loads(capsys.readouterr().out)
    assert row["status"] == "DEADLINE_EXCEEDED" and row["caller"] == "svc-b"
    assert "app-1-5" not in json.dumps(row), "the id itself is in no column"


def test_log_show_scopes_by_caller_and_reports_absence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_log(tmp_path)
    with pytest.raises(SystemExit) as missing:
        main(["log", "show", "app-0-2", "--caller", "svc-b", "--data-dir", str(tmp_path)])
    assert missing.value.code == 1
    assert "no decision logged for application app-0-2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as nokey:
        main(["log", "show", "app-0-2", "--data-dir", str(tmp_path / "elsewhere")])
    assert nokey.value.code == 2
    assert "decision_log.id_key_file" in capsys.readouterr().err


def test_log_export_csv_and_parquet_by_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_log(tmp_path)
    now = dt.datetime.now(dt.timezone.utc)
    day = f"{now:%Y-%m-%d}"
    tomorrow = f"{now + dt.timedelta(days=1):%Y-%m-%d}"
    csv = tmp_path / "out" / "decisions.csv"
    main(["log", "export", "--from", day, "--to", tomorrow, "--format", "csv", "--out", str(csv),
          "--data-dir", str(tmp_path)])
    assert "exported 12 logged decisions" in capsys.readouterr().out
    table = pl.read_csv(csv)
    assert table.height == 12
    assert table["reasons"].to_list()[0] == "HIGH_PD;NO_HISTORY"
    assert set(table["caller"].to_list()) == {"svc-a", "svc-b"}

    pq_out = tmp_path / "out" / "decisions.parquet"
    main(["log", "export", "--from", day, "--to", tomorrow, "--out", str(pq_out), "--data-dir", str(tmp_path)])
    back = pl.read_parquet(pq_out)
    assert back.height == 12 and back.schema["reasons"] == pl.List(pl.String)
    assert back["logged_at"].is_sorted()

    earlier = f"{now - dt.timedelta(days=2):%Y-%m-%d}"
    main(["log", "export", "--from", earlier, "--to", day, "--out", str(pq_out), "--data-dir", str(tmp_path)])
    assert "exported 0 logged decisions" in capsys.readouterr().out.splitlines()[-1]


def test_log_export_refuses_a_bad_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as bad:
        main(["log", "export", "--from", "2026-01-02", "--to", "2026-01-01", "--out", str(tmp_path / "x")])
    assert "--to must be after --from" in str(bad.value.code)
    with pytest.raises(SystemExit):
        main(["log", "export", "--from", "yesterday", "--to", "2026-01-01", "--out", str(tmp_path / "x")])
    assert "not an ISO date" in capsys.readouterr().err


def test_a_rotated_key_still_finds_what_was_logged_before(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rotation: new rows under the new key; ``show`` searches the previous keys too."""
    _write_log(tmp_path)  # under the generated key
    old = DecisionLogSettings().key_path(tmp_path)
    new = tmp_path / "rotated.key"
    new.write_text("a-new-key-of-at-least-16-bytes\n")
    rotated = tmp_path / "rotated.yaml"
    rotated.write_text(f"decision_log:\n  id_key_file: {new}\n  id_previous_key_files: [{old}]\n")
    only_new = tmp_path / "only-new.yaml"
    only_new.write_text(f"decision_log:\n  id_key_file: {new}\n")
    log = open_log(DecisionLogSettings(id_key_file=new), tmp_path)  # a replica after the rotation
    assert log is not None
    req = np.zeros(1, REQUEST_DTYPE)
    req["application_id"], req["merchant_id"], req["currency"], req["deadline"] = b"after-1", b"M1", 1, time.time() + 5
    rows = blank_decisions(1)
    rows["decision_id"], rows["decision"], rows["currency"] = b"d-after", APPROVE, 1
    log.append(req, DecisionBatch(rows, TABLE, "", {}), np.zeros(1, bool), np.zeros(0, np.intp), None)
    log.close()

    base = ["--data-dir", str(tmp_path)]
    assert _show(["app-0-2", *base, "--config", str(only_new)], capsys)[0] == 1, "not under the new key alone"
    for app, decision in (("app-0-2", "d-0-2"), ("after-1", "d-after")):
        code, out = _show([app, *base, "--config", str(rotated)], capsys)
        assert code == 0 and f"id {decision}" in out
    missing = tmp_path / "rotated-missing.yaml"
    missing.write_text(f"decision_log:\n  id_key_file: {new}\n  id_previous_key_files: [{tmp_path / 'gone'}]\n")
    code, err = _show(["app-0-2", *base, "--config", str(missing)], capsys)
    assert code == 2 and "decision_log.id_previous_key_files[0]" in err


def _show(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(["log", "show", *args])
    except SystemExit as exc:
        return int(exc.code or 0), capsys.readouterr().err
    return 0, capsys.readouterr().out

"""The decision log's durability contract with a real process killed by SIGKILL, and its
files: complete Parquet only, loss within the flush interval, journals of dead writers
adopted by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pyarrow import ipc

from services.decisionlog.reader import scan
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.sinks.parquet import recover
from services.decisionlog.writer import open_log
from services.schema.records import REQUEST_DTYPE, DecisionBatch, blank_decisions

ROOT = Path(__file__).resolve().parents[2]
ROWS = 32  # per batch
INTERVAL = 0.2
# Scheduling on a shared 2-core machine: the writer thread may wake this late.
WAKE_JITTER_S = 0.1

# A replica's log under load: a batch every ~2 ms, each row carrying its batch number in
# amount_minor; after each append the child says which batch, when, and the writer's stats.
CHILD = f"""
import sys, threading, time
from pathlib import Path
import numpy as np
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.writer import open_log
from services.schema.records import REQUEST_DTYPE, DecisionBatch, blank_decisions
root = Path(sys.argv[1])
s = DecisionLogSettings(directory=root / "decisions", spool_directory=root / "spool",
                        id_key_file=root / "key", flush_interval_s={INTERVAL}, roll_interval_s=0.5)
log = open_log(s, root)
req = np.zeros({ROWS}, REQUEST_DTYPE)
req["application_id"] = [f"a{{i}}".encode() for i in range({ROWS})]
req["merchant_id"] = b"M1"
answer = DecisionBatch(blank_decisions({ROWS}))
pace = threading.Event()
k = 0
while True:
    req["amount_minor"] = k
    log.append(req, answer, np.zeros({ROWS}, bool), np.zeros(0, np.intp), None)
    print(k, time.monotonic(), log.stats.flushes, log.stats.max_flush_s, flush=True)
    k += 1
    pace.wait(0.002)  # the load's pace, not a synchronisation
"""


# The same load, stopped gracefully as a server stops: SIGTERM stops the intake, then the
# process ends through sys.exit (the log is closed on the way out, by atexit).
GRACEFUL = CHILD.replace(
    "pace = threading.Event()",
    "import signal\npace = threading.Event()\nsignal.signal(signal.SIGTERM, lambda *_: pace.set())",
).replace("while True:", "while not pace.is_set():") + "print('final', k, flush=True)\nsys.exit(0)\n"


def test_sigterm_loses_nothing(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"k" * 32)
    proc = subprocess.Popen(
        [sys.executable, "-c", GRACEFUL, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    final = -1
    for line in proc.stdout:
        if line.startswith("final"):
            final = int(line.split()[1])  # batches appended before the handler ran
            break
        if int(line.split()[2]) >= 3:  # three flushes in: stop it mid-stream
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    proc.stdout.close()
    root = tmp_path / "decisions"
    assert not list(root.glob("_journal/*/*.arrow")), "everything was rolled into Parquet"
    df = scan(root, journal=False)
    assert df is not None
    assert sorted(df["amount_minor"].unique().to_list()) == list(range(final)), "every batch, once"
    assert df.height == final * ROWS


def _batch(n: int, k: int) -> tuple[np.ndarray, DecisionBatch]:
    req = np.zeros(n, REQUEST_DTYPE)
    req["application_id"] = [f"app-{k}-{i}".encode() for i in range(n)]
    req["merchant_id"] = b"M1"
    req["amount_minor"] = k
    return req, DecisionBatch(blank_decisions(n))


def test_sigkill_loses_at_most_the_flush_interval(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"k" * 32)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    appended: dict[int, float] = {}
    max_flush = 0.0
    for line in proc.stdout:
        k, t, flushes, mx = line.split()
        appended[int(k)] = float(t)
        max_flush = float(mx)
        if int(flushes) >= 6:
            break
    t_kill = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    root = tmp_path / "decisions"

    # What is on disk is whole: every Parquet file reads, every journal chunk reads.
    files = list(root.glob("date=*/hour=*/*.parquet"))
    for f in files:
        pq.read_table(f)
    chunks = list(root.glob("_journal/*/*.arrow"))
    for c in chunks:
        ipc.open_file(str(c)).read_all()
    assert files or chunks
    segments = {c.name.split("-")[0] for c in chunks}
    assert recover(root) == len(segments), "the dead writer's journal is rolled into Parquet"
    assert not list(root.glob("_journal/*")), "and its journal removed"
    df = scan(root, journal=False)
    assert df is not None
    per_batch = df.group_by("amount_minor").len()
    assert (per_batch["len"] == ROWS).all(), "batches are whole"
    kept = sorted(per_batch["amount_minor"].to_list())
    assert kept == list(range(len(kept))), "what is kept is everything up to a point"
    lost = [k for k in appended if k >= len(kept)]
    window = INTERVAL + max_flush + WAKE_JITTER_S
    in_window = [k for k, t in appended.items() if t >= t_kill - window]
    assert len(kept) > 0
    assert len(lost) <= len(in_window), (
        f"lost {len(lost)} batches; {len(in_window)} were appended in the last {window:.3f} s"
    )


EXITING = """
import os, sys
from pathlib import Path
import numpy as np
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.writer import open_log
from tests.services.test_decisionlog_durability import _batch
root = Path(sys.argv[1])
log = open_log(DecisionLogSettings(directory=root / "decisions", flush_interval_s=0.05), root)
req, answer = _batch(8, 0)
log.append(req, answer, np.zeros(8, bool), np.zeros(0, np.intp), None)
assert log.wait_until(lambda: log.stats.logged_rows == 8, 10.0)
os._exit(0)  # gone without closing: the journal stays, the kernel drops its lock
"""


def test_a_dead_writers_journal_is_adopted_by_the_next_writer(tmp_path: Path) -> None:
    """What a writer that died left in its journal reaches Parquet when the next one writes."""
    out = subprocess.run([sys.executable, "-c", EXITING, str(tmp_path)], cwd=ROOT, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    root = tmp_path / "decisions"
    assert list(root.glob("_journal/*/*.arrow")) and not list(root.glob("date=*/hour=*/*.parquet"))
    second = open_log(DecisionLogSettings(directory=root, flush_interval_s=0.05), tmp_path)
    assert second is not None
    req, answer = _batch(4, 1)
    second.append(req, answer, np.zeros(4, bool), np.zeros(0, np.intp), None)
    second.close()
    df = scan(root, journal=False)
    assert df is not None and sorted(df["amount_minor"].unique().to_list()) == [0, 1]
    assert df.height == 12 and len(list(root.glob("date=*/hour=*/*.parquet"))) == 2
    assert not list(root.glob("_journal/*/*")), "both journals are gone"

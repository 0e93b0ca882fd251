"""Process faults, as real processes: a front end killed with SIGKILL mid-stream, and a Serve
replica killed (SIGKILL) while batches are in flight on it.

What must hold whatever is killed: every request ends with a decision or a status before its
deadline, nothing hangs, and a caller's retry of a request that was answered gets the
ORIGINAL decision (same decision id): idempotency lives in the store (here the SQLite file
in the data dir, shared by the processes), not in the process that was killed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import psutil
import pytest

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import World
from tests.e2e import api_checks as c
from tests.e2e.conftest import LoopThread, ray_settings, settings_for
from tests.faults import logcheck
from tests.faults.logcheck import Answers, Kill, LogCheck, writer_of
from tests.faults.proxy import wait_until
from tests.faults.support import free_port

if TYPE_CHECKING:
    from services.stack import Stack

pytestmark = [pytest.mark.slow]

STREAM_DEADLINE_S = 30.0
# Fast reconnects: the caller's channel finds the restarted front end as soon as it listens.
CLIENT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]


def _prefix(decision_id: str) -> str:
    """The deciding engine's part of a decision id (one per process / replica)."""
    return decision_id.split("-", maxsplit=1)[0]


class _Feed:
    """The request side of a stream, fed by the test; ``end`` closes it."""

    def __init__(self) -> None:
        self._q: queue.Queue[pb.AuthorizeRequest | None] = queue.Queue()

    def put(self, reqs: list[pb.AuthorizeRequest]) -> None:
        for r in reqs:
            self._q.put(r)

    def end(self) -> None:
        self._q.put(None)

    def __iter__(self) -> Iterator[pb.AuthorizeRequest]:
        while (r := self._q.get()) is not None:
            yield r


def _private_data_dir(world: World, root: Path) -> Path:
    """The world's data without its decision log and idempotency records: the killed process
    writes only here, so nothing it leaves half-written reaches another test."""
    dest = root / "data"
    shutil.copytree(world.data_dir, dest, ignore=shutil.ignore_patterns("decisions", "idempotency.db*"))
    return dest


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port),
         "--channel", "local", "--plaintext", "--no-telemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an orchestrator stops a pod: the front end drains and closes its engine."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def _log_after_kill(data_dir: Path, got: Answers, kill: Kill) -> LogCheck:
    """The log of both processes (``<data_dir>/decisions``) against what the caller got:
    each decision once, the retries as replays, nothing the caller did not get, and what is
    missing the killed process's last flush interval only."""
    result = logcheck.check(logcheck.logged(data_dir / "decisions", data_dir, got.sent), got, kill)
    logcheck.assert_sound(result)
    assert result.decisions > 0 and result.replays > 0, result.summary()
    return result


def test_front_end_killed_mid_stream_retries_get_original_decisions(world: World, tmp_path: Path) -> None:
    data = _private_data_dir(world, tmp_path)
    port = free_port()
    first = _serve(data, port)
    second: subprocess.Popen[bytes] | None = None
    reqs = [c.request(i, f"M{i % 3000:08d}") for i in range(2400)]
    warm, rest = reqs[:40], reqs[40:]
    answered: dict[str, pb.AuthorizeResponse] = {}
    seen = Answers()  # every decision the caller got, with when (for the decision log's check)
    feed = _Feed()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS) as ch:
            stub = pb_grpc.CreditAuthorizationStub(ch)
            # wait_for_ready: the call waits for the server's port, observed by gRPC itself.
            r = stub.Authorize(c.request(0), timeout=180, wait_for_ready=True)
            seen.add(r.application_id, r.decision_id)
            t_open = time.monotonic()
            responses = stub.AuthorizeStream(iter(feed), timeout=STREAM_DEADLINE_S)
            feed.put(warm)
            for _ in warm:
                r = next(responses)
                answered[r.application_id] = r
                seen.add(r.application_id, r.decision_id)
            # The log has flushed what was answered so far (observed): the kill below then
            # cuts a log that holds a prefix, and the check can see where it ends.
            wait_until(lambda: logcheck.holds(data / "decisions", data, seen.by_app), "the warm-up logged", 30)
            feed.put(rest)  # a burst: several windows in flight when the process dies
            for _ in range(100):
                r = next(responses)
                answered[r.application_id] = r
                seen.add(r.application_id, r.decision_id)
            kill = Kill(time.time(), frozenset({_prefix(r.decision_id) for r in answered.values()}),
                        writer_of(first.pid))  # the log is written in the front end: --channel local
            os.killpg(first.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                for r in responses:  # what was already on the wire still arrives, then the status
                    answered[r.application_id] = r
                    seen.add(r.application_id, r.decision_id)
            t_status = time.monotonic()
            feed.end()
            first.wait(30)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
            # The stream ended with a status, promptly, and before its deadline.
            assert t_status - t_kill < 5.0, t_status - t_kill
            assert t_status - t_open < STREAM_DEADLINE_S
            assert all(not r.HasField("error") and r.decision_id for r in answered.values())
            unanswered = [r for r in reqs if r.application_id not in answered]
            assert len(answered) >= 140 and unanswered, (len(answered), len(unanswered))
            old = {_prefix(r.decision_id) for r in answered.values()}
            assert len(old) == 1  # one engine decided them all: the killed process

            # A new front end on the same data dir and port; the caller retries everything.
            second = _serve(data, port)
            r = stub.Authorize(c.request(1), timeout=180, wait_for_ready=True)
            seen.add(r.application_id, r.decision_id)
            t0 = time.monotonic()
            retried = list(stub.AuthorizeStream(iter(reqs), timeout=STREAM_DEADLINE_S))
            stream_s = time.monotonic() - t0
            sample = [r for r in warm[:10]]
            unary = [stub.Authorize(r, timeout=10) for r in sample]
        for r in [*retried, *unary]:
            seen.add_late(r.application_id, r.decision_id)
        _stop(second)  # gracefully: its log loses nothing; the first one's is read as it was left
        assert stream_s < STREAM_DEADLINE_S
        assert [r.application_id for r in retried] == [r.application_id for r in reqs]
        assert all(not r.HasField("error") and r.decision_id for r in retried), Counter(
            r.error.code for r in retried if r.HasField("error"))
        again = {r.application_id: r for r in retried}
        for app, r in answered.items():
            got = again[app]
            assert (got.decision_id, got.decision, got.approved_limit.amount_minor, got.apr_bps) == (
                r.decision_id, r.decision, r.approved_limit.amount_minor, r.apr_bps), app
        assert [u.decision_id for u in unary] == [answered[r.application_id].decision_id for r in sample]
        # Unanswered ones: some were decided and saved before the kill (their answer was
        # lost on the way): the retry gets that decision; the rest are decided afresh.
        lost_answers = sum(_prefix(again[r.application_id].decision_id) in old for r in unanswered)
        fresh = {_prefix(again[r.application_id].decision_id) for r in unanswered} - old
        assert len(fresh) <= 1
        logged = _log_after_kill(data, seen, kill)
        print(f"\nSIGKILL mid-stream: {len(reqs)} sent, {len(answered)} answered before the kill, status "
              f"{ended.value.code().name} {1000 * (t_status - t_kill):.0f} ms after it; retries: "
              f"{len(answered)} answered ones all got their original decision, {len(unanswered)} unanswered "
              f"({lost_answers} decided before the kill, answer lost; {len(unanswered) - lost_answers} fresh), "
              f"retry stream {stream_s:.2f} s\n{logged.summary()}")
    finally:
        feed.end()
        _kill(first)
        if second is not None:
            _kill(second)


# -- a replica killed mid-batch --------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_loop(world: World) -> Iterator[LoopThread]:
    """A local Ray cluster: the one the e2e tests' session fixture started if it runs, else
    our own (shut down after this module; one we did not start is left alone)."""
    from services.runtime import seam

    lt = LoopThread()
    settings = settings_for(world)
    owned = seam.start_cluster(
        settings.model_copy(update={"ray": settings.ray.model_copy(update={"num_cpus": 2})})) == "local"
    yield lt
    if owned:
        seam.shutdown()
    lt.close()

CALL_DEADLINE_S = 30.0


def _listener_pid(address: str) -> int:
    """The process listening on a replica's channel address (its Ray worker)."""
    port = int(address.rsplit(":", 1)[1])
    pids: set[int] = {int(c.pid) for c in psutil.net_connections("tcp")
                       if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    assert len(pids) == 1, (address, pids)
    return pids.pop()


class _Call:
    """One AuthorizeBatch call: what was asked, what came back (or the call's status), how long."""

    def __init__(self, reqs: list[pb.AuthorizeRequest]) -> None:
        self.reqs = reqs
        self.resp: pb.AuthorizeBatchResponse | None = None
        self.status: grpc.StatusCode | None = None
        self.seconds = 0.0
        self.at = 0.0  # when the answer came back (wall clock: compared with the log's times)

    def codes(self) -> list[str]:
        """Per item: "OK" or the status name it was answered with."""
        if self.resp is None:
            assert self.status is not None
            return [self.status.name] * len(self.reqs)
        return ["OK" if not r.HasField("error") else _name(r.error.code) for r in self.resp.responses]


def _name(code: int) -> str:
    """The gRPC name of a status code number."""
    return next(s.name for s in grpc.StatusCode if s.value[0] == code)


def _send(stub: pb_grpc.CreditAuthorizationStub, call: _Call) -> _Call:
    t0 = time.monotonic()
    try:
        call.resp = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=call.reqs), timeout=CALL_DEADLINE_S)
    except grpc.RpcError as exc:
        call.status = exc.code()
    call.seconds = time.monotonic() - t0
    call.at = time.time()
    return call


def _warm_until_flushed(stub: pb_grpc.CreditAuthorizationStub, stack: Stack, pid: int) -> list[_Call]:
    """Small calls, one at a time, until the victim's log has completed a flush (observed:
    its first journal chunk): the kill then cuts a log that holds some of the victim's
    decisions, so the check sees where what it kept ends. (A cold replica's first batch is
    slow: without this the victim had logged nothing when it died.)"""
    root = stack.settings.decision_log.root(stack.settings.data_dir)
    warm: list[_Call] = []

    def one() -> bool:
        warm.append(_send(stub, _Call([c.request(i, f"M{i:08d}") for i in range(10)])))
        assert warm[-1].resp is not None, warm[-1].status
        return logcheck.flushed(root, writer_of(pid))

    wait_until(one, "the victim's first flush", 60)
    return warm


def _answers(done: list[_Call], again: list[_Call]) -> Answers:
    """What the callers got: the first answers (when each call came back), then the retries'."""
    got = Answers()
    for call in done:
        for r in call.resp.responses if call.resp is not None else ():
            if not r.HasField("error"):
                got.add(r.application_id, r.decision_id, call.at)
    for call in again:
        for r in call.resp.responses if call.resp is not None else ():
            got.add_late(r.application_id, r.decision_id)
    return got


def _replica_log(stack: Stack, got: Answers, killed_at: float, victim_pid: int) -> LogCheck:
    """The replicas' log (each replica writes its own, under the data dir's ``decisions``)
    against what the callers got. The victim's engine is told by elimination: every decision
    id prefix the callers got that no other writer logged a decision under (the others
    stopped gracefully and logged all of theirs)."""
    data = stack.settings.data_dir
    df = logcheck.logged(stack.settings.decision_log.root(data), data, got.sent, stack.settings.decision_log)
    victim = writer_of(victim_pid)
    others = {logcheck.prefix(d) for w, d, replay in df.select("replica_id", "decision_id", "replay").iter_rows()
              if not w.startswith(victim) and not replay and d}
    mine = {logcheck.prefix(g.decision_id) for g in got.by_app.values()} - others
    assert len(mine) <= 1, mine  # one engine was killed
    result = logcheck.check(df, got, Kill(killed_at, frozenset(mine), victim))
    logcheck.assert_sound(result)
    assert result.decisions > 0 and result.replays > 0, result.summary()
    return result


def test_replica_killed_mid_batch_loses_only_what_it_held_and_retries_get_originals(
    ray_loop: LoopThread, world: World
) -> None:
    from services.runtime.channel import DirectBackend
    from services.stack import Stack

    stack = Stack(ray_settings(world, "creditauth_kill", replicas=2))
    ray_loop.run(stack.__aenter__())
    try:
        assert stack.frontend is not None
        backend = stack.frontend._backend
        assert isinstance(backend, DirectBackend)
        wait_until(lambda: len(backend.replicas) == 2, "both replicas connected", 60)
        victim = backend.replicas[0]
        pid = _listener_pid(victim)
        batcher = stack.frontend.batcher
        calls = [_Call([c.request(i, f"M{(k * 100 + i) % 3000:08d}") for i in range(100)]) for k in range(60)]

        killed_at: list[float] = []

        async def kill_while_busy() -> tuple[int, int]:
            """SIGKILL the victim at a moment a batch is in flight on it (observed on the loop
            that owns the connection, so nothing can answer between the look and the kill)."""
            for _ in range(60_000):
                conn = next((x for x in backend.membership.live() if x.address == victim), None)
                if conn is not None and conn.inflight > 0:
                    killed_at.append(time.time())
                    os.kill(pid, signal.SIGKILL)
                    return conn.inflight, backend.retries
                await asyncio.sleep(0.0005)
            raise AssertionError("no batch was ever in flight on the victim")

        with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as ch:
            stub = pb_grpc.CreditAuthorizationStub(ch)
            warm = _warm_until_flushed(stub, stack, pid)
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                running = [pool.submit(_send, stub, call) for call in calls]
                wait_until(lambda: batcher.stats.decisions >= 600 + sum(len(w.reqs) for w in warm),
                           "load flowing through both replicas", 60)
                held, retries_before = ray_loop.run(kill_while_busy(), timeout=60)
                done = [f.result(timeout=120) for f in running]  # nothing hangs
            retries = backend.retries - retries_before
            codes = Counter(code for call in done for code in call.codes())
            assert sum(codes.values()) == 6000
            assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
            # Only what the dead replica held can be lost (the router resent it once, elsewhere).
            assert codes["UNAVAILABLE"] <= held, (codes, held)
            assert all(call.seconds < CALL_DEADLINE_S for call in done), max(call.seconds for call in done)
            wait_until(lambda: victim not in backend.replicas, "the dead replica dropped", 30)

            # The caller retries every request: each answered one gets its original decision.
            first: dict[str, pb.AuthorizeResponse] = {
                r.application_id: r for call in done if call.resp is not None
                for r in call.resp.responses if not r.HasField("error")
            }
            again = [_send(stub, _Call(call.reqs)) for call in done]
        assert all(call.resp is not None for call in again), Counter(call.status for call in again)
        retried = {r.application_id: r for call in again if call.resp is not None for r in call.resp.responses}
        assert all(not r.HasField("error") and r.decision_id for r in retried.values()), Counter(
            r.error.code for r in retried.values() if r.HasField("error"))
        changed = [a for a, r in first.items() if retried[a].decision_id != r.decision_id]
        assert changed == [], changed[:5]
        prefixes = Counter(_prefix(r.decision_id) for r in first.values())
    finally:
        ray_loop.run(stack.__aexit__(None, None, None))  # the other replicas stop gracefully
    logged = _replica_log(stack, _answers(warm + done, again), killed_at[0], pid)
    print(f"\nreplica SIGKILLed with {held} decisions in flight on it: {dict(codes)}; router resent "
          f"{retries} call(s) elsewhere; decisions by replica {dict(prefixes)}; slowest call "
          f"{max(call.seconds for call in done):.2f} s; all {len(first)} answered ones got their original "
          f"decision on retry, the {codes['UNAVAILABLE']} refused ones a decision\n{logged.summary()}")


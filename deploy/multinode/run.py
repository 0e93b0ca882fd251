"""A two-node Ray cluster on one machine, in network namespaces, under load.

Checks the scaling path the capacity plan relies on without a Kubernetes
cluster: two Ray nodes that can only reach each other over a (virtual)
network, one Serve replica on each, a front end on the head node routing over
the direct channel to both, and a bounded load run from the head node's own
loopback. It reports which replicas answered and the throughput seen.

    sudo python -m deploy.multinode.run --data-dir .creditauth   # needs root: ip netns
    sudo python -m deploy.multinode.run --lose-worker ...        # the worker node dies under load

``--lose-worker`` kills the worker node (its raylet, its replica, everything in its process
group: a node lost, not a replica restarted) while a load run is going, and reports what
the callers saw and which replicas answer afterwards; then every call is retried once. Each
call's applications, the decision ids the caller got and when go to ``answers.jsonl`` in the
work dir; the report names it, the kill's time and where each node's replicas write the
decision log, so the log can be checked against the callers (tests/faults/test_node_loss.py).

Everything it creates (namespaces, veth pair, Ray processes) is removed on
exit; it never runs ``ray stop`` (that would stop every Ray cluster on the
machine) but kills the processes it started.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from services.decisionlog.sinks.parquet import JOURNAL
from services.settings import load_settings

NS = ["ca-node1", "ca-node2"]
VETH = ["ca-veth1", "ca-veth2"]
ADDR = ("10.77.0.1", "10.77.0.2")
GCS_PORT = 6390
POLL_S = 0.5  # between looks at the cluster's state while waiting for it


def use_prefix(prefix: str) -> None:
    """Namespace and link names of this run (two runs at once must not share them)."""
    NS[:] = [f"{prefix}-node1", f"{prefix}-node2"]
    VETH[:] = [f"{prefix}-veth1", f"{prefix}-veth2"]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def in_ns(ns: str, *args: str) -> list[str]:
    # A throwaway cluster in private namespaces: no token auth (production uses it,
    # see deploy/k8s), so every process here can join without a shared secret.
    return ["ip", "netns", "exec", ns, "env", "RAY_AUTH_MODE=disabled", *args]


def network_up() -> None:
    for ns in NS:
        sh("ip", "netns", "add", ns)
        sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
    sh("ip", "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
    for ns, dev, addr in zip(NS, VETH, ADDR, strict=True):
        sh("ip", "link", "set", dev, "netns", ns)
        sh(*in_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev))
        sh(*in_ns(ns, "ip", "link", "set", dev, "up"))


def network_down() -> None:
    for ns in NS:
        sh("ip", "netns", "del", ns, check=False)


def ray_node(ns: str, addr: str, *, head: bool, cpus: int, log: Path, temp: Path) -> subprocess.Popen[bytes]:
    ray = str(Path(sys.executable).parent / "ray")
    # A private temp dir: `ray start` records its address there, not in /tmp/ray
    # where every later `ray.init()` on the machine would find a dead cluster.
    args = [ray, "start", "--block", f"--node-ip-address={addr}", f"--num-cpus={cpus}",
            "--disable-usage-stats", f"--temp-dir={temp}"]
    if head:
        args += ["--head", f"--port={GCS_PORT}", "--include-dashboard=false"]
    else:
        args += [f"--address={ADDR[0]}:{GCS_PORT}"]
    return subprocess.Popen(in_ns(ns, *args), stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for_nodes(n: int, timeout_s: float = 180) -> None:
    """Until the cluster reports ``n`` alive nodes (observed, bounded; never a fixed sleep)."""
    ray = str(Path(sys.executable).parent / "ray")
    deadline = time.monotonic() + timeout_s
    while True:
        out = sh(*in_ns(NS[0], ray, "status", f"--address={ADDR[0]}:{GCS_PORT}"), check=False)
        alive = out.stdout.split("Pending:")[0].count(" node_") if out.returncode == 0 else 0
        if alive >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{alive} of {n} Ray nodes up after {timeout_s:.0f} s: {out.stderr[-500:]}")
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path(".creditauth"), help="a generated world")
    p.add_argument("--requests", type=int, default=4000, help="unary calls of the load run")
    p.add_argument("--batch-calls", type=int, default=300, help="batch calls of the load run")
    p.add_argument("--work-dir", type=Path, default=None, help="logs and settings (default: a temp dir)")
    p.add_argument("--lose-worker", action="store_true", help="kill the worker node during the load run")
    p.add_argument("--ns-prefix", default="ca", help="names of this run's network namespaces (default ca)")
    args = p.parse_args(argv)
    use_prefix(args.ns_prefix)
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("multinode: needs root and iproute2 (ip netns)", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="creditauth-multinode-"))
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths are limited
    network_down()
    try:
        network_up()
        procs.append(ray_node(NS[0], ADDR[0], head=True, cpus=1, log=work / "head.log", temp=temp))
        wait_for_nodes(1)
        worker = ray_node(NS[1], ADDR[1], head=False, cpus=1, log=work / "worker.log", temp=temp)
        procs.append(worker)
        wait_for_nodes(2)
        # The direct channel crosses the veth pair: its peers prove they hold this secret
        # (a joined cluster gets no generated one). The front end listens on the head
        # node's loopback only, where the load generator runs: plaintext there.
        secret = work / "channel.secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        cfg = _settings_file(work, args.data_dir, secret)
        exe = str(Path(sys.executable).parent / "creditauth")
        serve = subprocess.Popen(
            in_ns(NS[0], exe, "serve", "--config", str(cfg)),
            stdout=(work / "serve.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        procs.append(serve)
        deadline = time.monotonic() + 240
        while b"serving on" not in (work / "serve.log").read_bytes():
            if serve.poll() is not None or time.monotonic() > deadline:
                print((work / "serve.log").read_text()[-3000:], file=sys.stderr)
                return 3
            time.sleep(POLL_S)
        if args.lose_worker:
            return _lose_worker(work, worker, cfg)
        load = subprocess.run(_load_command(args), capture_output=True, text=True, timeout=900)
        if load.returncode != 0:
            print(load.stderr[-3000:], file=sys.stderr)
            return 4
        result = json.loads(load.stdout)
        replicas = _replicas_answering(work)
        report = {"runs": result["runs"], "replica_nodes": replicas}
        print(json.dumps(report, indent=1))
        return 0 if len(replicas) == 2 else 5
    finally:
        for proc in reversed(procs):
            kill_group(proc)
        network_down()
        shutil.rmtree(temp, ignore_errors=True)


def _settings_file(work: Path, data_dir: Path, secret: Path) -> Path:
    settings = {
        "features": {"data_dir": str(data_dir.resolve())},
        "serving": {"host": "127.0.0.1", "port": 50051},
        "security": {"plaintext": True, "anonymous": {"name": "anonymous"}},
        "ray": {
            "address": f"{ADDR[0]}:{GCS_PORT}",
            "replicas": 2,
            "replica_num_cpus": 1.0,  # one replica per node
            "channel_advertise_host": "node",
            "channel_secret_file": str(secret),
        },
    }
    cfg = work / "settings.yaml"
    cfg.write_text(yaml.safe_dump(settings))
    return cfg


def _load_command(args: argparse.Namespace) -> list[str]:
    return in_ns(NS[0], sys.executable, "-m", "loadtest", "quick", "--target", "127.0.0.1:50051",
                 "--data-dir", str(args.data_dir), "--requests", str(args.requests),
                 "--batch-calls", str(args.batch_calls), "--stream-requests", "2000")


_STEADY = """
import json, sys, time, grpc
from concurrent.futures import ThreadPoolExecutor
from creditauth.v1 import authorization_pb2 as pb, authorization_pb2_grpc as g

calls, answers = int(sys.argv[1]), sys.argv[2]
sent = {}

def send(k, reqs, what):
    # One line of the answers file per call: every application asked, with the decision id
    # the caller got ("" where none), and when the answer came back (the caller's clock).
    try:
        out = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=reqs), timeout=30)
    except grpc.RpcError as err:
        code = err.code().name
        record = {"pass": what, "k": k, "at": time.time(), "status": code,
                  "items": [[r.application_id, ""] for r in reqs]}
        return f"ERR {code}", record
    at = time.time()
    # An answer names its application (an item refused as a whole may not: the request's, then).
    items = [[r.application_id or q.application_id, r.decision_id] for q, r in zip(reqs, out.responses)]
    line = "OK " + " ".join(sorted({r.decision_id.split("-")[0] for r in out.responses if r.decision_id}))
    return line, {"pass": what, "k": k, "at": at, "status": "OK", "items": items}

def call(k):
    reqs = []
    for i in range(50):
        r = pb.AuthorizeRequest(application_id=f"loss-{time.time_ns()}-{k}-{i}",
                                merchant_id=f"M{(k * 50 + i) % 3000:08d}", term_months=6, product=1, channel=1)
        r.requested_amount.amount_minor = 100_000
        r.requested_amount.currency = "CNY"
        reqs.append(r)
    sent[k] = reqs
    return send(k, reqs, "first")

with grpc.insecure_channel("127.0.0.1:50051") as ch, open(answers, "w") as fh:
    stub = g.CreditAuthorizationStub(ch)
    with ThreadPoolExecutor(4) as pool:
        for line, record in pool.map(call, range(calls)):
            fh.write(json.dumps(record) + "\\n")
            print(line, flush=True)
        # Every call once more (a caller retrying): each decision it got comes back from the
        # idempotency store, logged as a replay; a call lost with the node gets a decision now.
        for _, record in pool.map(lambda k: send(k, sent[k], "retry"), range(calls)):
            fh.write(json.dumps(record) + "\\n")
"""
CALLS = 600  # batch calls of 50 in the load run (the first pass; the retry pass sends them again)
KILL_AFTER = 20  # answered calls, at least, before the worker node is lost
# ...and completed flushes of the worker's decision-log writer since the load began: the third
# holds only this load's decisions (the first may have taken the probe's last ones). So the node
# leaves some of the calls' decisions on record, and the load has run for more than a flush
# interval (what a SIGKILL may lose) before the loss: a check of the log sees where it ends.
FLUSHES_BEFORE_KILL = 3
# ...and then this many answers more (about half a flush interval here): the kill falls inside
# a flush interval, not at the moment a flush was seen.
CALLS_AFTER_FLUSH = 40


def _lose_worker(work: Path, worker: subprocess.Popen[bytes], cfg: Path) -> int:
    """Batch calls, 4 in flight; after ``KILL_AFTER`` answers, and ``CALLS_AFTER_FLUSH`` after
    the worker's log writer has flushed ``FLUSHES_BEFORE_KILL`` times, the worker node dies.
    What the callers saw before and after the loss, and which replicas answered; then every
    call once more (a caller's retry). Each call's applications, the decision ids the caller
    got and when go to ``answers.jsonl`` in ``work`` (its path in the report, with the kill's
    time and where each node's replicas write the decision log): what a check of the log reads."""
    probe_before = _both_answering(work)
    if probe_before is None:
        return 6
    root, lost = _log_root(cfg), _node_pids()[NS[1]]
    flushed = _chunks(root, lost)
    answers = work / "answers.jsonl"
    load = subprocess.Popen(in_ns(NS[0], sys.executable, "-c", _STEADY, str(CALLS), str(answers)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert load.stdout is not None
    phases: dict[str, Counter[str]] = {"before": Counter(), "after": Counter()}
    replicas: dict[str, Counter[str]] = {"before": Counter(), "after": Counter()}
    phase = "before"
    killed_at: float | None = None
    pids: dict[str, list[int]] = {}
    seen: int | None = None  # answers when the writer's flushes were seen
    for n, line in enumerate(load.stdout, 1):
        status, *prefixes = line.split()
        phases[phase][status if status == "OK" else prefixes[0]] += 1
        replicas[phase].update(prefixes if status == "OK" else [])
        if seen is None and len(_chunks(root, lost) - flushed) >= FLUSHES_BEFORE_KILL:
            seen = n
        if phase == "before" and seen is not None and n >= max(KILL_AFTER, seen + CALLS_AFTER_FLUSH):
            pids = _node_pids()  # the replicas' processes among them: a writer id names its pid
            killed_at = time.time()
            kill_group(worker)
            phase = "after"
    load.wait(300)
    if killed_at is None:
        print(f"multinode: the load ended before the worker's log had flushed {FLUSHES_BEFORE_KILL} times",
              file=sys.stderr)
        return 7
    report = {"probe_before": probe_before, "calls": {k: dict(v) for k, v in phases.items()},
              "replicas": {k: dict(v) for k, v in replicas.items()}, "probe_after": _replicas_answering(work),
              "killed_at": killed_at, "answers": str(answers), "retry_calls": _retry_statuses(answers),
              "decision_log": _log_places(cfg, pids)}
    print(json.dumps(report, indent=1))
    return 0 if load.returncode == 0 else 4


def _both_answering(work: Path) -> dict[str, int] | None:
    """The probe once both replicas are registered and answering (observed, bounded; None:
    they were not in time): a node not yet in the route cannot be lost from it."""
    deadline = time.monotonic() + 180
    probe = _replicas_answering(work)
    while len(probe) < 2:
        if time.monotonic() > deadline:
            print(f"multinode: only {probe} answer before the loss", file=sys.stderr)
            return None
        time.sleep(POLL_S)
        probe = _replicas_answering(work)
    return probe


def _chunks(root: Path, pids: list[int]) -> set[Path]:
    """The decision-log journal chunks of the writers in processes ``pids`` (a writer's id is
    ``<host>-<pid>-<random>``): each completed flush adds one, named in sequence (hidden
    while written: ``.<name>.tmp``), so new names are new flushes, a roll's removals aside."""
    mine = {f"{socket.gethostname()}-{p}" for p in pids}
    return {c for c in root.glob(f"{JOURNAL}/*/*.arrow") if c.parent.name.rsplit("-", 1)[0] in mine}


def _node_pids() -> dict[str, list[int]]:
    """The processes of each node (its network namespace): host pids, the namespaces share
    the machine's pid space."""
    return {ns: [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()] for ns in NS}


def _retry_statuses(answers: Path) -> dict[str, int]:
    """Statuses of the retry pass's calls (the answers file's ``retry`` lines)."""
    if not answers.exists():
        return {}
    records = (json.loads(line) for line in answers.read_text().splitlines() if line)
    return dict(Counter(r["status"] for r in records if r["pass"] == "retry"))


def _log_places(cfg: Path, pids: dict[str, list[int]]) -> dict[str, Any]:
    """Where each node's replicas write the decision log. Every replica is bound to the front
    end's settings (``seam.app.application``: the Serve application carries them), so on each
    node it is ``decision_log.root(features.data_dir)``, an absolute path (``_settings_file``);
    the namespaces share the machine's filesystem and host name, so both nodes' replicas write
    under the same root, told apart by their writer ids (``<host>-<pid>-<random>``)."""
    root = str(_log_root(cfg))
    nodes = {name: {"namespace": ns, "decisions": root, "pids": pids.get(ns, [])}
             for name, ns in zip(("head", "worker"), NS, strict=True)}
    return {"settings": str(cfg), "flush_interval_s": load_settings(cfg).decision_log.flush_interval_s,
            "nodes": nodes}


def _log_root(cfg: Path) -> Path:
    """The decision log's root for the settings every replica gets (``_log_places``)."""
    settings = load_settings(cfg)
    return settings.decision_log.root(settings.data_dir)


_PROBE = """
import concurrent.futures, sys, time, grpc
from creditauth.v1 import authorization_pb2 as pb, authorization_pb2_grpc as g

def call(k):
    reqs = []
    for i in range(200):
        r = pb.AuthorizeRequest(application_id=f"mn-{time.time_ns()}-{k}-{i}",
                                merchant_id=f"M{(k * 200 + i) % 3000:08d}", term_months=6, product=1, channel=1)
        r.requested_amount.amount_minor = 100_000
        r.requested_amount.currency = "CNY"
        reqs.append(r)
    with grpc.insecure_channel("127.0.0.1:50051") as ch:
        out = g.CreditAuthorizationStub(ch).AuthorizeBatch(pb.AuthorizeBatchRequest(requests=reqs), timeout=60)
    return [r.decision_id.split("-")[0] for r in out.responses if r.decision_id]

with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for ids in pool.map(call, range(40)):
        print(" ".join(ids))
"""


def _replicas_answering(work: Path) -> dict[str, int]:
    """Decisions per replica (decision-id prefix) for 40 concurrent batch calls from the head node."""
    del work
    res = subprocess.run(in_ns(NS[0], sys.executable, "-c", _PROBE), capture_output=True, text=True, timeout=300)
    return dict(Counter(res.stdout.split()))


if __name__ == "__main__":
    sys.exit(main())

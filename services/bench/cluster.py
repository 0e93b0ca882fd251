"""``python -m services.bench.cluster``: what a Redis Cluster master costs per merchant.

A 2-core machine cannot show three servers' capacity in wall-clock throughput (the client
and the servers share the cores), so this measures what a capacity plan divides by:
redis-server CPU per merchant, per master. The same workload (the same seeded batches of
``--batch`` distinct merchants: feature reads through ``open_backend(s).reader().read``, and
velocity through ``backend.velocity().record``, both layouts) runs against

- a standalone redis-server (``redis_cluster: false``), for comparison;
- a Redis Cluster of 1 master, and one of 3 masters (``redis_cluster: true``, no replicas),

each started here on loopback ports, each holding its own copy of one small generated world
(applied and materialized by our writers). Around each block of ``--batches`` batches every
master's ``INFO cpu`` (``used_cpu_user + used_cpu_sys``: the whole process, network I/O
included) and ``INFO commandstats`` (command execution only) are read; blocks run in
``--rounds`` rounds, targets in a rotating order, and the deltas of all rounds per merchant
are the figures. Store-bound throughput is set by the busiest master, so the scaling ratio is
(CPU per merchant of the 1-master cluster) / (busiest master's CPU per merchant of the whole
workload on the 3-master cluster). Client wall time per batch (p50, p99) shows what routing
costs the caller. After the work, every target must hold the same features and counts.
Every server started here is stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import itertools
import json
import operator
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from features.settings import FeatureSettings
from features.stores.base import OnlineReader
from features.stores.redis.admin import info
from features.stores.redis.client import RedisClient
from features.velocity import VelocityRecorder

SLOTS = 16384
AS_OF = dt.date(2026, 11, 1)
NOW_S = 1_790_000_000.0  # velocity's clock: the same on every target, so the scripts do the same work
_POLL_S = 0.02
_WORKLOADS = ("read", "velocity")
_LAYOUTS = ("standard", "packed")


# --- servers -------------------------------------------------------------------------


def poll(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait until ``check()`` holds (re-checked every 20 ms); ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    wake = threading.Event()
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not observed within {timeout_s:g} s")
        wake.wait(_POLL_S)


def loopback_port(cluster: bool) -> int:
    """A free loopback port; a cluster node's bus port (+10000, below 65536) must be free too."""
    rng = np.random.default_rng()
    for _ in range(200):
        port = int(rng.integers(20000, 30000))
        with contextlib.ExitStack() as stack, contextlib.suppress(OSError):
            for p in (port, port + 10000) if cluster else (port,):
                stack.enter_context(socket.socket()).bind(("127.0.0.1", p))
            return port
    raise RuntimeError("no free loopback port")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def cli(port: int, *args: str) -> str:
    """One control command over redis-cli (set-up only); a Redis error raises."""
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
    if out.returncode != 0 or out.stdout.startswith("ERR"):
        raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: {out.stdout}{out.stderr}")
    return out.stdout


class Servers:
    """The redis-server processes this run started (each in a directory under ``root``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *, cluster: bool) -> int:
        port = loopback_port(cluster)
        d = self.root / f"redis-{port}"
        d.mkdir()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(d), "--logfile", str(d / "log")]
        if cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf")]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        poll(f"redis-server on {port} listening", lambda: proc.poll() is not None or _listening(port))
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited with {proc.returncode}: see {d / 'log'}")
        return port

    def cluster(self, masters: int) -> list[int]:
        """``masters`` nodes, the slots split evenly between them, joined; returned once every
        node says ``cluster_state:ok`` with every slot served and every node known."""
        ports = [self.spawn(cluster=True) for _ in range(masters)]
        bounds = np.linspace(0, SLOTS, masters + 1).astype(int)
        for i, p in enumerate(ports):
            cli(p, "CLUSTER", "SET-CONFIG-EPOCH", str(i + 1))  # distinct epochs: no collision to resolve
            cli(p, "CLUSTER", "ADDSLOTSRANGE", str(bounds[i]), str(bounds[i + 1] - 1))
        for p in ports[1:]:
            cli(p, "CLUSTER", "MEET", "127.0.0.1", str(ports[0]))

        def ok(port: int) -> bool:
            state = dict(line.split(":", 1) for line in cli(port, "CLUSTER", "INFO").split() if ":" in line)
            return (state.get("cluster_state") == "ok" and state.get("cluster_slots_ok") == str(SLOTS)
                    and state.get("cluster_known_nodes") == str(masters))

        poll("cluster_state:ok on every node", lambda: all(ok(p) for p in ports))
        return ports

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# --- the world -----------------------------------------------------------------------


def world(data: Path, root: Path, *, name: str, url: str, layout: str, cluster: bool) -> FeatureSettings:
    """A copy of the generated tables, applied and materialized into the server at ``url``."""
    from features.feast_repo import apply
    from features.materialize import materialize

    for sub in ("raw", "offline"):
        shutil.copytree(data / sub, root / name / sub)
    settings = FeatureSettings.model_validate({
        "data_dir": root / name, "online_store": "redis", "redis_url": url, "project": name,
        "redis_layout": layout, "redis_cluster": cluster, "max_feature_age_s": 3650 * 86400.0,
        "timeout_s": 10.0,  # a loaded 2-core machine: a slow round trip is not a failure here
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Feast's "on demand feature view is experimental"
        apply(settings)
    as_of = dt.datetime.combine(AS_OF, dt.time(), tzinfo=dt.timezone.utc)
    materialize(settings, as_of - dt.timedelta(days=1), as_of + dt.timedelta(seconds=1))
    return settings


# --- measuring -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    cpu_s: float
    usec: dict[str, int]  # per command (INFO itself left out)
    calls: dict[str, int]


def sample(node: RedisClient) -> Sample:
    cpu = info(node, "cpu")
    usec, calls = {}, {}
    for name, value in info(node, "commandstats").items():
        if name != "cmdstat_info":
            fields = dict(kv.split("=", 1) for kv in value.split(","))
            usec[name[8:]], calls[name[8:]] = int(fields["usec"]), int(fields["calls"])
    return Sample(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), usec, calls)


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: v - a.get(k, 0) for k, v in b.items() if v - a.get(k, 0)}


@dataclass
class Block:
    """What one block of batches cost each master (deltas), and the client's time per batch."""

    merchants: int
    cpu_s: list[float]
    usec: list[int]
    calls: list[dict[str, int]]
    walls: list[float]

    def __add__(self, o: Block) -> Block:
        return Block(self.merchants + o.merchants, [a + b for a, b in zip(self.cpu_s, o.cpu_s, strict=True)],
                     [a + b for a, b in zip(self.usec, o.usec, strict=True)],
                     [{k: a.get(k, 0) + b.get(k, 0) for k in a | b} for a, b in zip(self.calls, o.calls, strict=True)],
                     self.walls + o.walls)


def measure(nodes: list[RedisClient], work: Callable[[list[str]], object], batches: list[list[str]]) -> Block:
    """``work`` on every batch, the masters' counters read before and after."""
    before = [sample(n) for n in nodes]
    walls = []
    for ids in batches:
        t0 = time.perf_counter()
        work(ids)
        walls.append(time.perf_counter() - t0)
    after = [sample(n) for n in nodes]
    pairs = list(zip(before, after, strict=True))
    return Block(sum(len(b) for b in batches), [y.cpu_s - x.cpu_s for x, y in pairs],
                 [sum(_delta(x.usec, y.usec).values()) for x, y in pairs], [_delta(x.calls, y.calls) for x, y in pairs],
                 walls)


@dataclass
class Row:
    target: str
    layout: str
    workload: str
    merchants: int  # merchants of every block together
    cpu_us: list[float]  # per master: µs of redis-server CPU per merchant
    cmd_us: list[float]  # per master: µs of command execution (commandstats) per merchant
    calls: list[dict[str, int]]  # per master: commands served
    share: list[float]  # per master: its share of those commands
    wall_p50_ms: float
    wall_p99_ms: float
    ports: list[int]  # the masters' (all stopped when the run ends)

    @classmethod
    def of(cls, case: tuple[str, str, str], b: Block, ports: list[int]) -> Row:
        served = [sum(c.values()) for c in b.calls]
        return cls(*case, b.merchants, [x * 1e6 / b.merchants for x in b.cpu_s], [x / b.merchants for x in b.usec],
                   b.calls, [x / max(1, sum(served)) for x in served], float(np.percentile(b.walls, 50) * 1e3),
                   float(np.percentile(b.walls, 99) * 1e3), ports)


def _recorder(velocity: VelocityRecorder) -> Callable[[list[str]], object]:
    clock = itertools.count()  # batch i recorded at NOW_S + i: the same clock on every target
    return lambda ids: velocity.record(ids, now_s=NOW_S + next(clock))


class Target:
    """One server set with a world per layout on it; ``work`` per (layout, workload)."""

    def __init__(self, name: str, ports: list[int], *, cluster: bool, data: Path, root: Path,
                 merchants: int) -> None:
        from features.stores import open_backend

        self.name, self.ports = name, ports
        self.nodes = [RedisClient(FeatureSettings(redis_url=f"redis://127.0.0.1:{p}/0", timeout_s=10.0))
                      for p in ports]
        self.ids = [f"M{i:08d}" for i in range(merchants)]
        self.readers: dict[str, OnlineReader] = {}
        self.work: dict[tuple[str, str], Callable[[list[str]], object]] = {}
        for layout in _LAYOUTS:
            settings = world(data, root, name=f"b{name[:1]}{len(ports)}{layout[:3]}",
                             url=f"redis://127.0.0.1:{ports[0]}/0", layout=layout, cluster=cluster)
            backend = open_backend(settings)
            reader, velocity = backend.reader(), backend.velocity()
            for a in range(0, merchants, 1000):  # every merchant's window state as large as in production
                velocity.record(self.ids[a : a + 1000], now_s=NOW_S - 3600)
            reader.read(self.ids[:100])  # connections made, slot map learned
            self.readers[layout] = reader
            self.work[(layout, "read")] = reader.read
            self.work[(layout, "velocity")] = _recorder(velocity)

    def digest(self, layout: str) -> str:
        """Every merchant's features (velocity counts included) as they stand: equal on every target."""
        answers = self.readers[layout].read(self.ids)
        if float(answers.found.mean()) < 0.9:
            raise AssertionError(f"{self.name} {layout}: only {answers.found.mean():.0%} of merchants found")
        return hashlib.sha256(answers.matrix.tobytes() + answers.found.tobytes()).hexdigest()

    def close(self) -> None:
        for r in self.readers.values():
            r.close()
        for n in self.nodes:
            n.close()


def rounds(targets: list[Target], args: argparse.Namespace) -> dict[tuple[str, str, str], list[Block]]:
    """``--rounds`` rounds; in each, every (layout, workload) as one block per target, targets in
    a rotating order (drift on a shared machine hits each alike), all on the same batches."""
    blocks: dict[tuple[str, str, str], list[Block]] = {}
    n = len(targets[0].ids)
    for r in range(args.rounds):
        for i, (layout, workload) in enumerate(itertools.product(_LAYOUTS, _WORKLOADS)):
            rng = np.random.default_rng([r, i])
            batches = [[f"M{j:08d}" for j in rng.choice(n, args.batch, replace=False)] for _ in range(args.batches)]
            for t in targets[r % len(targets):] + targets[: r % len(targets)]:
                blocks.setdefault((t.name, layout, workload), []).append(measure(t.nodes, t.work[(layout, workload)],
                                                                                 batches))
    return blocks


def ratios(blocks: dict[tuple[str, str, str], list[Block]], base: str, scaled: str) -> dict[str, dict[str, Any]]:
    """Per layout and workload: the base cluster's cost per merchant over the busiest scaled
    master's, for all rounds together and for each round."""
    def one(a: Block, b: Block) -> tuple[float, float]:
        return (sum(a.cpu_s) / a.merchants / (max(b.cpu_s) / b.merchants),
                sum(a.usec) / a.merchants / (max(b.usec) / b.merchants))

    out = {}
    for layout, workload in itertools.product(_LAYOUTS, _WORKLOADS):
        a, b = blocks[(base, layout, workload)], blocks[(scaled, layout, workload)]
        cpu, cmd = one(functools.reduce(operator.add, a), functools.reduce(operator.add, b))
        out[f"{layout} {workload}"] = {"cpu": cpu, "commandstats": cmd,
                                       "cpu_per_round": [one(x, y)[0] for x, y in zip(a, b, strict=True)]}
    return out


# --- the command ---------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = ["| target | layout | workload | CPU µs/merchant, all masters | busiest master | per master "
             "| commandstats µs/merchant (busiest) | share of commands | batch p50 ms | p99 ms |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r.target} | {r.layout} | {r.workload} | {sum(r.cpu_us):.2f} | {max(r.cpu_us):.2f} "
            f"| {' / '.join(f'{x:.2f}' for x in r.cpu_us)} | {sum(r.cmd_us):.2f} ({max(r.cmd_us):.2f}) "
            f"| {' / '.join(f'{x:.0%}' for x in r.share)} | {r.wall_p50_ms:.2f} | {r.wall_p99_ms:.2f} |")
    return "\n".join(lines)


def _name(masters: int) -> str:
    return f"cluster, {masters} master{'s' * (masters > 1)}"


def run(args: argparse.Namespace, servers: Servers, root: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    from features.population import build_offline_tables, generate_population

    generate_population(root / "data", merchants=args.merchants, seed=7, as_of=AS_OF)
    build_offline_tables(root / "data", AS_OF)
    sets = [("standalone", [servers.spawn(cluster=False)], False),
            *((_name(m), servers.cluster(m), True) for m in args.masters)]
    targets: list[Target] = []
    try:
        for name, ports, cluster in sets:
            targets.append(Target(name, ports, cluster=cluster, data=root / "data", root=root,
                                  merchants=args.merchants))
        blocks = rounds(targets, args)
        for layout in _LAYOUTS:
            if len({t.digest(layout) for t in targets}) != 1:
                raise AssertionError(f"{layout}: the targets' reads differ after the same work")
    finally:
        for t in targets:
            t.close()
    where = {t.name: t.ports for t in targets}
    rows = [Row.of(k, functools.reduce(operator.add, v), where[k[0]]) for k, v in blocks.items()]
    base, scaled = _name(min(args.masters)), _name(max(args.masters))
    return {"command": " ".join(["python -m services.bench.cluster", *sys.argv[1:]]), "redis": _version(),
            "ratios_vs_standalone": {"from": "standalone", "to": scaled, **ratios(blocks, "standalone", scaled)},
            "merchants": args.merchants, "rounds": args.rounds, "batches": args.batches, "batch": args.batch,
            "seconds": round(time.perf_counter() - t0, 1), "rows": [asdict(r) for r in rows],
            "ratios": {"from": base, "to": scaled, **ratios(blocks, base, scaled)}}


def _version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.split("v=", 1)[1].split()[0] if "v=" in out else out.strip()


def print_report(out: dict[str, Any]) -> None:
    print(f"\n{out['merchants']:,} merchants; {out['rounds']} rounds of {out['batches']} batches of {out['batch']} "
          f"per target and case; redis {out['redis']}; {out['seconds']} s\n")
    print(table([Row(**r) for r in out["rows"]]))
    for ratio in (out["ratios"], out["ratios_vs_standalone"]):
        print(f"\nstore-bound throughput, {ratio['to']} vs {ratio['from']} (busiest master):")
        for case, r in ratio.items():
            if isinstance(r, dict):
                each = " ".join(f"{x:.2f}" for x in r["cpu_per_round"])
                print(f"  {case:<18} CPU {r['cpu']:.2f}x (rounds {each})   commandstats {r['commandstats']:.2f}x")


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the ``finally`` that stops the servers runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--merchants", type=int, default=2000, help="population the batches draw from (default 2,000)")
    p.add_argument("--batches", type=int, default=60, help="batches per block (default 60)")
    p.add_argument("--rounds", type=int, default=5, help="blocks per target and case, interleaved (default 5)")
    p.add_argument("--batch", type=int, default=100, help="distinct merchants per batch (default 100)")
    p.add_argument("--masters", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3],
                   help="cluster sizes, comma-separated; the ratio is largest vs smallest (default 1,3)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if not 0 < args.batch <= args.merchants or args.batches < 1 or args.rounds < 1:
        p.error("need 0 < --batch <= --merchants, --batches >= 1, --rounds >= 1")
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise SystemExit("redis-server / redis-cli are not installed")
    previous = signal.signal(signal.SIGTERM, _sigterm)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGTERM, previous)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="cluster-bench-"))
        servers = Servers(Path(tmp))
        stack.callback(servers.stop)  # before the directory goes (callbacks run last-in first-out)
        out = run(args, servers, Path(tmp))
    print_report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

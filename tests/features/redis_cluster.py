"""A throwaway Redis Cluster on loopback ports: started by the tests, stopped after.

``LocalCluster.start(masters, replicas)`` runs ``masters * (1 + replicas)`` ``redis-server``
processes (cluster mode, no persistence, each in its own temporary directory), joins them
with ``redis-cli --cluster create`` (three masters or more) or ``CLUSTER ADDSLOTSRANGE``
(one master), and returns once every node reports ``cluster_state:ok`` and every replica
has finished its initial sync. Every wait is a bounded poll of observed state (a log line,
``CLUSTER INFO``, ``INFO replication``), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from services.bench.cluster import loopback_port, poll

NODE_TIMEOUT_MS = 1000  # failure detection: a killed master is replaced within a few seconds


def redis_command(port: int, *args: str, timeout_s: float = 2.0) -> str:
    """One command over redis-cli (tests' control traffic only)."""
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout_s)
    return out.stdout


def _info(port: int, section: str) -> dict[str, str]:
    try:
        raw = redis_command(port, "INFO" if section != "cluster" else "CLUSTER", *([section] if section != "cluster"
                                                                                   else ["INFO"]))
    except subprocess.TimeoutExpired:
        return {}
    return dict(line.strip().split(":", 1) for line in raw.splitlines() if ":" in line and not line.startswith("#"))


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[str]
    dir: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class LocalCluster:
    masters: int
    replicas: int
    root: Path
    nodes: list[Node] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.alive]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @classmethod
    def start(cls, masters: int = 3, replicas: int = 1) -> LocalCluster:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise FileNotFoundError("redis-server / redis-cli are not installed")
        cluster = cls(masters, replicas, Path(tempfile.mkdtemp(prefix="rcluster-")))
        try:
            for _ in range(masters * (1 + replicas)):
                cluster.nodes.append(cluster._spawn())
            cluster._create()
            cluster.wait_ok()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self) -> Node:
        port = loopback_port(cluster=True)  # its bus port (+10000) free too
        d = self.root / str(port)
        d.mkdir()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--dir", str(d), "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--cluster-allow-replica-migration", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:  # logged once it listens
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server on {port} exited with {proc.wait()}")
        # Keep draining the log so the server never blocks on a full pipe.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        return Node(port, proc, d)

    def _create(self) -> None:
        if self.masters >= 3:
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            out = subprocess.run(
                ["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", str(self.replicas),
                 "--cluster-yes"], capture_output=True, text=True, timeout=60,
            )
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}\n{out.stderr}")
            return
        if self.masters != 1:
            raise ValueError("a local cluster has 1 master, or 3 and more")
        first = self.nodes[0].port
        redis_command(first, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        master_id = redis_command(first, "CLUSTER", "MYID").strip()
        for n in self.nodes[1:]:
            redis_command(n.port, "CLUSTER", "MEET", "127.0.0.1", str(first))
        for n in self.nodes[1:]:
            poll(f"node {n.port} knows the master",
                 lambda n=n: master_id in redis_command(n.port, "CLUSTER", "NODES"))
            redis_command(n.port, "CLUSTER", "REPLICATE", master_id)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Every live node says ``cluster_state:ok`` and agrees on the slot map; replicas synced."""
        def ok() -> bool:
            infos = [_info(p, "cluster") for p in self.ports]
            if not all(i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384" for i in infos):
                return False
            if len({i.get("cluster_current_epoch") for i in infos}) != 1:
                return False
            reps = [_info(p, "replication") for p in self.ports]
            if sum(r.get("role") == "master" for r in reps) != self.masters:
                return False
            return all(r.get("master_link_status") == "up" for r in reps if r.get("role") == "slave")
        poll("cluster ok on every node", ok, timeout_s)

    def master_ports(self) -> list[int]:
        return [p for p in self.ports if _info(p, "replication").get("role") == "master"]

    def replica_of(self, master_port: int) -> int:
        for p in self.ports:
            r = _info(p, "replication")
            if r.get("role") == "slave" and r.get("master_port") == str(master_port):
                return p
        raise LookupError(f"no replica of {master_port}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no goodbye to its peers or clients)."""
        node = next(n for n in self.nodes if n.port == port)
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=10)

    def stop(self) -> None:
        for n in self.nodes:
            if n.alive:
                n.proc.terminate()
        for n in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.proc.wait(timeout=10)
            if n.alive:
                n.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False

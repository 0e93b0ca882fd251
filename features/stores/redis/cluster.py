"""Redis Cluster mode (``redis_cluster: true``): slot-aware routing over per-node pools.

``ClusterClient`` learns the slot map (``CLUSTER SLOTS``) from the startup node in
``redis_url`` and later from any node it knows, and keeps one ``RedisClient`` (pool and
circuit breaker) per node. Work comes as a ``Job``: rows sorted by hash slot (one row is a
merchant's reads, or one command such as a slot's ``EVALSHA``); each attempt splits the
pending rows into runs served by one node, sends every node its runs in one buffer, and
only then reads the replies, so a batch costs one round trip to each node it touches, in
parallel, not one per node in turn.

Redirects and failures, within ``timeout_s`` and ``MAX_ATTEMPTS``:

- ``MOVED``: the map is stale; refresh it and resend the rows from the one redirected on
  (rows whose replies were read are done; the compiled decoders say how many).
- ``ASK``: the slot is migrating; resend that row alone to the named node after ``ASKING``.
- ``NOSCRIPT`` / ``TRYAGAIN`` / ``CLUSTERDOWN`` / ``LOADING``: the command did not run; retry it.
- a connection failure (a master died, a failover is under way): the map is marked stale
  and refreshed from any reachable node; rows that cannot have run (the connect failed)
  are retried, and so are rows of idempotent jobs (reads, ``SET NX``). A non-idempotent job
  (velocity) whose rows may have run raises ``OnlineStoreUnavailable`` instead of counting
  twice. Past the bound, the last error is raised: always a ``FeatureError``, never a hang.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from features.errors import FeatureDataError, OnlineStoreUnavailable
from features.settings import FeatureSettings
from features.stores.redis import _resp, _resp_build
from features.stores.redis.client import (
    ClusterRedirect,
    Decoder,
    RedisClient,
    RespConnection,
    Script,
    redirect_of,
    server_error,
)
from features.stores.redis.cluster_jobs import (
    RETRY_CODES,
    SLOTS,
    CommandJob,
    Job,
    ReadJob,
    ScriptJob,
    key_slot,
    reorder_inverse,
    slot_groups,
    slot_order,
)
from features.stores.redis.secure import ConnectionConfig

MAX_ATTEMPTS = 6
_REFRESH_MIN_S = 0.05  # a storm of failures refreshes the map at most this often
_ASKING = _resp_build.encode_command([b"ASKING"])
Addr = tuple[str, int]  # a node: host, port


@dataclass(frozen=True)
class SlotMap:
    addrs: tuple[Addr, ...]  # masters, indexed by ``owner``
    owner: npt.NDArray[np.int16]  # slot -> index into addrs (-1: unserved)
    others: tuple[Addr, ...]  # replicas: places to learn the map from when masters fail


@dataclass
class _Run:
    a: int
    b: int
    ask: Addr | None = None
    decoder: Decoder | None = None


class ClusterClient:
    """The process's connections to one Redis Cluster (the parts share it as they share a
    ``RedisClient``); thread-safe."""

    def __init__(self, settings: FeatureSettings, *, config: ConnectionConfig | None = None,
                 name: str | None = None) -> None:
        self.settings = settings
        self.config = config or ConnectionConfig.from_settings(settings)
        if self.config.db:
            raise FeatureDataError("Redis Cluster has database 0 only: use redis_url .../0 with redis_cluster")
        self.timeout_s = settings.timeout_s
        self._seed: Addr = (self.config.host, self.config.port)
        self.address = f"cluster@{self.config.host}:{self.config.port}"
        self._nodes: dict[Addr, RedisClient] = {}
        self._lock = threading.Lock()
        self._map: SlotMap | None = None
        self._stale = True
        self._refreshed_at = 0.0
        self.refreshes = 0  # maps learned (tests and operators see failovers followed)
        self.redirects = {"MOVED": 0, "ASK": 0}  # redirects followed
        seed = self._node(self._seed)
        self.name = name or seed.name

    # --- nodes and the slot map ----------------------------------------------------

    def _node(self, addr: Addr) -> RedisClient:
        with self._lock:
            node = self._nodes.get(addr)
            if node is None:
                node = RedisClient(self.settings, config=replace(self.config, host=addr[0], port=addr[1]),
                                   name=getattr(self, "name", None))
                self._nodes[addr] = node
            return node

    def masters(self) -> list[RedisClient]:
        """A client per master of the current map (admin work: INFO, SCAN)."""
        return [self._node(a) for a in self.slot_map(time.monotonic() + self.timeout_s).addrs]

    def slot_map(self, deadline: float) -> SlotMap:
        smap = self._map
        if smap is None or (self._stale and time.monotonic() - self._refreshed_at >= _REFRESH_MIN_S):
            smap = self._refresh(deadline)
        return smap

    def mark_stale(self) -> None:
        self._stale = True

    def _refresh(self, deadline: float) -> SlotMap:
        with self._lock:
            self._refreshed_at = time.monotonic()
            smap = self._map
        known: list[Addr] = list(smap.addrs + smap.others) if smap else []
        last: Exception | None = None
        for addr in [*known, *([self._seed] if self._seed not in known else [])]:
            node = self._node(addr)
            if not node.breaker.available:
                continue
            try:
                reply = node.command(b"CLUSTER", b"SLOTS", timeout_s=max(deadline - time.monotonic(), 1e-3),
                                     context="CLUSTER SLOTS")
            except OnlineStoreUnavailable as exc:
                last = exc
                continue
            fresh = _parse_slots(reply, addr)
            with self._lock:
                self._map, self._stale = fresh, False
                self.refreshes += 1
            return fresh
        if smap is not None:  # keep routing by the old map: its live nodes still serve
            return smap
        raise OnlineStoreUnavailable(f"Redis {self.address}: no node answered CLUSTER SLOTS ({last})")

    # --- running jobs --------------------------------------------------------------

    def run(self, job: Job, *, timeout_s: float | None = None) -> None:
        """Every row of ``job`` answered once (see the module's rules), or a ``FeatureError``."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        pending = [_Run(0, len(job.slots))] if len(job.slots) else []
        last: Exception | None = None
        for _ in range(MAX_ATTEMPTS):
            if not pending:
                return
            if time.monotonic() >= deadline:
                break
            smap = self.slot_map(deadline)
            pending, last = self._attempt(job, smap, pending, deadline)
        if not pending:
            return
        raise last if isinstance(last, OnlineStoreUnavailable) else OnlineStoreUnavailable(
            f"Redis {self.address}: rows still redirected after {MAX_ATTEMPTS} attempts ({last})")

    def _attempt(self, job: Job, smap: SlotMap, pending: list[_Run],
                 deadline: float) -> tuple[list[_Run], Exception | None]:
        by_node: dict[Addr, list[_Run]] = {}
        for run in pending:
            for addr, piece in _split(job, smap, run):
                by_node.setdefault(addr, []).append(piece)
        retry: list[_Run] = []
        last: Exception | None = None
        sent: list[tuple[RedisClient, RespConnection, list[_Run]]] = []
        finished: set[int] = set()
        try:
            for addr, runs in by_node.items():
                node = self._node(addr)
                try:
                    sent.append((node, self._send(node, job, runs, deadline), runs))
                except OnlineStoreUnavailable as exc:  # nothing of these runs reached Redis
                    self.mark_stale()
                    retry += runs
                    last = exc
            for i, (node, conn, runs) in enumerate(sent):
                again, err = self._receive(node, conn, job, runs, deadline)
                finished.add(i)
                retry += again
                last = err or last
        finally:
            for i, (node, conn, _) in enumerate(sent):
                if i not in finished:  # replies left unread: the stream must not be reused
                    conn.close()
                node.release(conn)
        return retry, last

    def _send(self, node: RedisClient, job: Job, runs: list[_Run], deadline: float) -> RespConnection:
        node.breaker.admit()  # an open breaker: BreakerOpen, this node's runs wait for a new map
        conn = node.acquire(deadline)
        try:
            conn.connect(timeout_s=_left(deadline))
        except OnlineStoreUnavailable as exc:
            node.breaker.failed(exc)
            node.release(conn)
            raise
        parts: list[bytes | bytearray] = []
        for run in runs:
            payload, run.decoder = job.build(run.a, run.b)
            parts += [_ASKING, payload] if run.ask else [payload]
        try:
            conn.send_only(b"".join(parts), timeout_s=_left(deadline))
        except OnlineStoreUnavailable as exc:
            node.breaker.failed(exc)
            node.release(conn)
            if not job.idempotent:
                raise _unknown(node, exc) from exc
            raise
        return conn

    def _receive(self, node: RedisClient, conn: RespConnection, job: Job, runs: list[_Run],
                 deadline: float) -> tuple[list[_Run], Exception | None]:
        retry: list[_Run] = []
        for i, run in enumerate(runs):
            assert run.decoder is not None
            try:
                if run.ask:
                    conn.receive(_resp.ReplyCollector(1), timeout_s=_left(deadline))
                conn.receive(run.decoder, timeout_s=_left(deadline))
            except ClusterRedirect as r:  # a compiled decoder stopped at the redirected row
                node.breaker.succeeded()
                done = run.a + int(getattr(run.decoder, "row", 0))
                retry += self._redirected(r, done, run.b)
                return retry + runs[i + 1 :], r  # the connection was dropped: the rest again
            except OnlineStoreUnavailable as exc:
                node.breaker.failed(exc)
                self.mark_stale()
                if not job.idempotent:
                    raise _unknown(node, exc) from exc
                return retry + runs[i:], exc
            except Exception:
                node.breaker.succeeded()  # it answered, with something we refuse
                raise
            for row, err in job.settle(run.a, run.b, run.decoder):
                retry += self._failed_row(node, err, row)
        node.breaker.succeeded()
        return retry, None

    def _redirected(self, r: ClusterRedirect, a: int, b: int) -> list[_Run]:
        self.redirects[r.kind] += 1
        if r.kind == "MOVED":
            self.mark_stale()
            return [_Run(a, b)]
        rest = [_Run(a + 1, b)] if a + 1 < b else []
        return [_Run(a, a + 1, ask=(r.host, r.port)), *rest]

    def _failed_row(self, node: RedisClient, err: _resp.RespServerError, row: int) -> list[_Run]:
        redirect = redirect_of(err, node.address)
        if redirect is not None:
            return self._redirected(redirect, row, row + 1)
        if str(err).split(" ", 1)[0] in RETRY_CODES:  # the command did not run
            if str(err).startswith("CLUSTERDOWN"):
                self.mark_stale()
            return [_Run(row, row + 1)]
        raise server_error(node.address, err)

    # --- the RedisClient surface the parts use -------------------------------------

    def command(self, *args: bytes, timeout_s: float | None = None, context: str = "") -> object:
        """One command, routed by its first argument's slot (its key, for keyed commands)."""
        job = CommandJob([list(args)], [key_slot(args[1]) if len(args) > 1 else 0], idempotent=True)
        self.run(job, timeout_s=timeout_s)
        return self.check(job.replies[0], context)

    def eval_script(self, script: Script, keys: Sequence[bytes], args: Sequence[bytes], *,
                    timeout_s: float | None = None, context: str = "") -> object:
        """``EVALSHA`` on the node of ``keys``' slot (they must share one: hash tags)."""
        job = ScriptJob(script, [list(keys)], [list(args)], idempotent=False)
        self.run(job, timeout_s=timeout_s)
        return self.check(job.replies[0], context)

    def commands(self, commands: list[list[bytes]], *, idempotent: bool = True, timeout_s: float | None = None,
                 context: str = "") -> list[object]:
        """Single-key commands (each routed by its key, ``commands[i][1]``), pipelined per node;
        replies in order, an error reply raised as the feature layer's typed error."""
        job = CommandJob(commands, [key_slot(c[1]) for c in commands], idempotent=idempotent)
        self.run(job, timeout_s=timeout_s)
        return [self.check(r, context) for r in job.replies]

    def eval_grouped(
        self, script: Script, keys: Sequence[bytes], shared: Sequence[bytes], per_key: Sequence[bytes], *,
        idempotent: bool = False, timeout_s: float | None = None, context: str = "",
    ) -> list[tuple[npt.NDArray[np.intp], object]]:
        """One ``EVALSHA`` per slot of ``keys``: KEYS the slot's keys (in input order), ARGV
        ``shared`` then each of those keys' ``per_key`` argument. Returns (indices, reply) per slot."""
        groups = slot_groups(keys)
        job = ScriptJob(script, [[keys[i] for i in g] for g in groups],
                        [[*shared, *(per_key[i] for i in g)] for g in groups], idempotent=idempotent)
        self.run(job, timeout_s=timeout_s)
        return [(g, self.check(r, context)) for g, r in zip(groups, job.replies, strict=True)]

    def check(self, reply: object, context: str = "") -> object:
        if isinstance(reply, _resp.RespServerError):
            raise server_error(self.address, reply, context)
        return reply

    def close(self) -> None:
        with self._lock:
            nodes = list(self._nodes.values())
        for node in nodes:
            node.close()


def _split(job: Job, smap: SlotMap, run: _Run) -> list[tuple[Addr, _Run]]:
    """``run`` as runs of consecutive rows one node serves (an ASK run goes where it was sent)."""
    if run.ask is not None:
        return [(run.ask, run)]
    owner = smap.owner[job.slots[run.a : run.b]]
    if (owner < 0).any():
        raise OnlineStoreUnavailable("Redis cluster: some slots are not served (cluster down?)")
    cuts = [0, *(np.flatnonzero(np.diff(owner)) + 1).tolist(), len(owner)]
    return [(smap.addrs[int(owner[s])], _Run(run.a + s, run.a + e)) for s, e in itertools.pairwise(cuts)]


def _parse_slots(reply: object, asked: Addr) -> SlotMap:
    if not isinstance(reply, list):
        raise FeatureDataError(f"CLUSTER SLOTS returned {reply!r:.200}")
    owner = np.full(SLOTS, -1, dtype=np.int16)
    addrs: list[Addr] = []
    others: list[Addr] = []
    for entry in reply:
        start, end, master, *replicas = entry
        addr = _addr(master, asked)
        if addr not in addrs:
            addrs.append(addr)
        owner[int(start) : int(end) + 1] = addrs.index(addr)
        others += [a for a in (_addr(r, asked) for r in replicas) if a not in others]
    return SlotMap(tuple(addrs), owner, tuple(others))


def _addr(node: list[object], asked: Addr) -> Addr:
    host = node[0].decode() if isinstance(node[0], bytes) else ""
    return (host or asked[0], int(node[1]))  # type: ignore[call-overload]


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 1e-3)


def _unknown(node: RedisClient, exc: Exception) -> OnlineStoreUnavailable:
    return OnlineStoreUnavailable(f"Redis {node.address}: connection lost with a non-idempotent batch in flight "
                                  f"(not retried, so nothing counts twice): {exc}")


# What the backend hands its parts: they route by slot where it is a cluster.
AnyClient = RedisClient | ClusterClient

# What a reader builds for rows ``rows`` of its output, whose keys are ``keys``: the request
# buffer and the decoder that fills those rows.
BuildRows = Callable[[list[bytes], slice], tuple[bytearray, Decoder]]


def read_rows(
    client: AnyClient, keys: list[bytes], slot_key: Callable[[bytes], bytes], build: BuildRows,
    inverse: npt.NDArray[np.intp] | None,
) -> npt.NDArray[np.intp] | None:
    """Read one row per key into the reader's output (one buffer on a single Redis; on a
    cluster, rows in slot order, a buffer per node, all sent before any is read). Returned:
    the inverse mapping the inputs onto the rows as read (``inverse`` itself on a single Redis).
    ``slot_key``: the name a key's slot is computed from (with its project suffix or tag)."""
    if not isinstance(client, ClusterClient):
        client.call(*build(keys, slice(0, len(keys))))
        return inverse
    order, slots = slot_order([slot_key(k) for k in keys])
    ordered = [keys[i] for i in order]
    client.run(ReadJob(slots, lambda a, b: build(ordered[a:b], slice(a, b))))
    return reorder_inverse(order, inverse)

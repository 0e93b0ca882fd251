"""The work ``cluster.ClusterClient`` routes: rows sorted by hash slot, encoded per run.

A ``Job``'s rows are in slot order, so the rows one node serves are runs of consecutive
rows, each encoded into one buffer (``build``) and decoded in place. Readers decode in C
straight into slices of their arrays (``ReadJob``); commands and scripts collect one reply
per row and keep the rows whose reply says "not here / not now" for another attempt.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from features.stores.redis import _resp, _resp_build
from features.stores.redis.client import Decoder, Script

SLOTS = 16384
# Error replies after which a command did not run, so it is simply sent again.
RETRY_CODES = ("NOSCRIPT", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN")
Build = Callable[[int, int], "tuple[bytes | bytearray, Decoder]"]


def key_slot(key: bytes) -> int:
    """Redis Cluster's slot of ``key``: CRC16 (XMODEM) of its hash tag, or of the whole key."""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1 : e]
    return binascii.crc_hqx(key, 0) & (SLOTS - 1)


def key_slots(keys: Sequence[bytes]) -> npt.NDArray[np.int64]:
    return np.fromiter((key_slot(k) for k in keys), dtype=np.int64, count=len(keys))


def slot_order(keys: Sequence[bytes]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """The rows of ``keys`` in slot order (stable: a slot's rows keep their order), and their slots."""
    slots = key_slots(keys)
    order = np.argsort(slots, kind="stable")
    return order, slots[order]


def reorder_inverse(order: npt.NDArray[np.intp], inverse: npt.NDArray[np.intp] | None) -> npt.NDArray[np.intp]:
    """``inverse`` (input -> distinct row) for distinct rows read in ``order``."""
    rank = np.empty(len(order), dtype=np.intp)
    rank[order] = np.arange(len(order), dtype=np.intp)
    return rank if inverse is None else rank[inverse]


def slot_groups(keys: Sequence[bytes]) -> list[npt.NDArray[np.intp]]:
    """Indices of ``keys`` per slot (slot order; each group in input order): one script call each."""
    order, slots = slot_order(keys)
    cuts = np.flatnonzero(np.diff(slots)) + 1
    return [g for g in np.split(order, cuts) if len(g)]


class Job(Protocol):
    """Rows sorted by slot; ``build`` encodes rows ``[a, b)`` and the decoder of their replies."""

    slots: npt.NDArray[np.int64]
    idempotent: bool

    def build(self, a: int, b: int) -> tuple[bytes | bytearray, Decoder]: ...

    # After the replies of ``[a, b)`` are in: the rows whose reply was an error to retry
    # (with the reply), having stored the others. Jobs decoded in C return ``[]``.
    def settle(self, a: int, b: int, decoder: Decoder) -> list[tuple[int, _resp.RespServerError]]: ...


class ReadJob:
    """Rows decoded in C by the decoder ``build`` returns (a redirect raises at its row)."""

    idempotent = True

    def __init__(self, slots: npt.NDArray[np.int64], build: Build) -> None:
        self.slots = slots
        self._build = build

    def build(self, a: int, b: int) -> tuple[bytes | bytearray, Decoder]:
        return self._build(a, b)

    def settle(self, a: int, b: int, decoder: Decoder) -> list[tuple[int, _resp.RespServerError]]:
        return []


class CommandJob:
    """One row per command, decoded into Python objects (small control traffic)."""

    def __init__(self, commands: list[list[bytes]], slots: Sequence[int], *, idempotent: bool) -> None:
        order = np.argsort(np.asarray(slots, dtype=np.int64), kind="stable")
        self.order = order
        self.slots = np.asarray(slots, dtype=np.int64)[order]
        self.commands = [commands[i] for i in order]
        self.idempotent = idempotent
        self._replies: list[object] = [None] * len(commands)

    @property
    def replies(self) -> list[object]:
        """Replies in the order the commands were given."""
        out: list[object] = [None] * len(self._replies)
        for pos, i in enumerate(self.order):
            out[int(i)] = self._replies[pos]
        return out

    def build(self, a: int, b: int) -> tuple[bytes | bytearray, Decoder]:
        return b"".join(_resp_build.encode_command(c) for c in self.commands[a:b]), _resp.ReplyCollector(b - a)

    def settle(self, a: int, b: int, decoder: Decoder) -> list[tuple[int, _resp.RespServerError]]:
        assert isinstance(decoder, _resp.ReplyCollector)
        return self._store(a, decoder.replies)

    def _store(self, a: int, replies: list[object]) -> list[tuple[int, _resp.RespServerError]]:
        retry = []
        for row, reply in enumerate(replies, start=a):
            if isinstance(reply, _resp.RespServerError) and retryable(reply):
                retry.append((row, reply))
            else:
                self._replies[row] = reply
        return retry


class ScriptJob(CommandJob):
    """One ``EVALSHA`` per key group (each group's keys in one slot); ``NOSCRIPT`` loads it."""

    def __init__(self, script: Script, keys: list[list[bytes]], args: list[list[bytes]], *,
                 idempotent: bool) -> None:
        commands = [[b"EVALSHA", script.sha, str(len(k)).encode(), *k, *a] for k, a in zip(keys, args, strict=True)]
        super().__init__(commands, [key_slot(k[0]) if k else 0 for k in keys], idempotent=idempotent)
        self._load = [b"SCRIPT", b"LOAD", script.body]
        self._loading: set[int] = set()

    def build(self, a: int, b: int) -> tuple[bytes | bytearray, Decoder]:
        # Rows that met NOSCRIPT go again as SCRIPT LOAD + EVALSHA (the load's reply dropped).
        parts = [self.commands[r] if r not in self._loading else None for r in range(a, b)]
        payload = b"".join(_resp_build.encode_command(c) if c is not None else
                           _resp_build.encode_command(self._load) + _resp_build.encode_command(self.commands[a + i])
                           for i, c in enumerate(parts))
        n = (b - a) + sum(r in self._loading for r in range(a, b))
        return payload, _resp.ReplyCollector(n)

    def settle(self, a: int, b: int, decoder: Decoder) -> list[tuple[int, _resp.RespServerError]]:
        assert isinstance(decoder, _resp.ReplyCollector)
        got = iter(decoder.replies)
        replies = []
        for r in range(a, b):
            if r in self._loading:
                next(got)  # the SCRIPT LOAD's reply
            replies.append(next(got))
        self._loading -= set(range(a, b))
        retry = self._store(a, replies)
        self._loading |= {row for row, err in retry if str(err).startswith("NOSCRIPT")}
        return retry


def retryable(err: _resp.RespServerError) -> bool:
    code = str(err).split(" ", 1)[0]
    return code in ("MOVED", "ASK") or code in RETRY_CODES

"""Exposure counters: the store half of the portfolio caps (docs/exposure.md).

A cap (``CapLimit``) bounds the total approved amount and/or count of one scope value (an
industry, a region, a product, a single merchant) over a sliding window. Its counters live
in the online store's backend, shared by every replica and front end, and a batch's claims
are reserved in one atomic store call (Redis: one ``EVALSHA`` of ``exposure.lua``; SQLite:
one ``BEGIN IMMEDIATE`` transaction), items in batch order, so concurrent batches never
overdraw a cap between them.

Each reservation carries its own expiry (``now + window_s``): the counters hold the live
reservations only, so a reservation is released exactly when its window passes, without
any sweeper (the next call against the counter drops what has expired). The items of one
batch share its time, so a batch keeps one entry per counter (its grants' sum and count
under the batch's token), not one per item: a batch writes as many entries as it touches
counters. A release rewrites the entry from what it held to what remains, only if it
still holds that (so a release is never applied twice).

``allocate`` is the reference of what a call grants; the SQLite store runs it as is, the
Lua script mirrors it line for line, and a test holds the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class CapLimit:
    """One cap as the store applies it (amounts in base-currency minor units)."""

    name: str
    window_s: float
    max_amount: int | None  # None: the cap bounds the count only
    max_count: int | None  # None: the cap bounds the amount only
    refer: bool  # on reaching it: refer (True) or reduce to what remains (False)


@dataclass(frozen=True)
class Claims:
    """A batch's claims: item ``i`` asks ``amount[i]`` against the counters
    ``counter[starts[i]:starts[i + 1]]`` (indices into ``counters``); the batch's entries are
    kept under ``token``."""

    counters: list[tuple[int, str]]  # (index into the caps, scope value), each once
    amount: npt.NDArray[np.int64]  # (m,)
    token: bytes  # unique per batch (its first decision id), no ':'
    starts: npt.NDArray[np.intp]  # (m + 1,)
    counter: npt.NDArray[np.intp]  # (P,)
    min_amount: int  # a reduced grant below this is referred instead

    def __len__(self) -> int:
        return len(self.amount)

    def of(self, i: int) -> npt.NDArray[np.intp]:
        return self.counter[self.starts[i] : self.starts[i + 1]]


@dataclass(frozen=True)
class Grants:
    """What a call granted: ``amount[i]`` (0: referred, nothing reserved), and the pairs
    (``hit_item[k]``, ``hit_counter[k]``): item and counter whose cap it reached (the cap
    reduced or referred it)."""

    amount: npt.NDArray[np.int64]
    hit_item: npt.NDArray[np.intp]
    hit_counter: npt.NDArray[np.intp]

    def reached(self, i: int) -> tuple[int, ...]:
        """The counters whose cap item ``i`` reached."""
        return tuple(self.hit_counter[self.hit_item == i].tolist())


class ExposureState(Protocol):
    """A store's exposure counters: reserve a batch's claims atomically, release some later."""

    def reserve(self, caps: Sequence[CapLimit], claims: Claims, now: float) -> Grants:
        """Reserve every item's grant in all of its counters, in order, in one round trip."""
        ...

    def release(self, caps: Sequence[CapLimit], claims: Claims, grants: Grants, items: Sequence[int]) -> None:
        """Give back the reservations of ``items`` (decisions that were not answered as granted):
        once per batch, after its ``reserve``; the batch's entries go from what ``grants`` put
        there to what remains, and an entry that no longer holds that is left alone."""
        ...

    def usage(self, cap: CapLimit, value: str, now: float) -> tuple[int, int]:
        """The live (amount, count) reserved against ``cap`` for ``value`` (tools and tests)."""
        ...

    def close(self) -> None: ...


def entries(claims: Claims, grants: Grants, released: Sequence[int] = ()) -> npt.NDArray[np.int64]:
    """(counters, 2): the batch's entry per counter, ``[amount, count]`` of its grants
    (without those of the ``released`` items)."""
    out = np.zeros((len(claims.counters), 2), dtype=np.int64)
    keep = grants.amount > 0
    keep[list(released)] = False
    items = np.repeat(np.arange(len(claims)), np.diff(claims.starts))
    mask = keep[items]
    np.add.at(out[:, 0], claims.counter[mask], grants.amount[items[mask]])
    np.add.at(out[:, 1], claims.counter[mask], 1)
    return out


def allocate(caps: Sequence[CapLimit], claims: Claims, used: list[list[int]]) -> Grants:
    """The grants of ``claims`` given each counter's live ``[amount, count]`` (updated in place).

    Per item: a cap is reached when its count is used up or the amount asked does not fit
    what remains. None reached: the whole amount is granted. A reached count, or a reached
    cap whose policy is ``refer``, refers; else the grant is the least that remains, referred
    when that is below ``min_amount``. A grant is reserved in every counter of the item.
    """
    fast = _all_fit(caps, claims, used)
    if fast is not None:
        return fast
    granted = np.zeros(len(claims), dtype=np.int64)
    hit_item: list[int] = []
    hit_counter: list[int] = []
    for i in range(len(claims)):
        want = int(claims.amount[i])
        room, refer, hit = want, False, []
        for p in claims.of(i).tolist():
            cap = caps[claims.counters[p][0]]
            amount, count = used[p]
            if cap.max_count is not None and count + 1 > cap.max_count:
                hit.append(p)
                refer = True
            elif cap.max_amount is not None and amount + want > cap.max_amount:
                hit.append(p)
                room = min(room, cap.max_amount - amount)
                refer = refer or cap.refer
        grant = want if not hit else (0 if refer or room < claims.min_amount else room)
        if grant > 0:
            for p in claims.of(i).tolist():
                used[p][0] += grant
                used[p][1] += 1
        granted[i] = grant
        hit_item += [i] * len(hit)
        hit_counter += hit
    return Grants(granted, np.array(hit_item, np.intp), np.array(hit_counter, np.intp))


def _all_fit(caps: Sequence[CapLimit], claims: Claims, used: list[list[int]]) -> Grants | None:
    """The common case at once: if every counter can take all of the batch's claims on it, every
    item gets what it asks (``used`` updated); else None (decide item by item, in order)."""
    items = np.repeat(np.arange(len(claims)), np.diff(claims.starts))
    demand = np.zeros(len(claims.counters), dtype=np.int64)
    np.add.at(demand, claims.counter, claims.amount[items])
    n = np.bincount(claims.counter, minlength=len(claims.counters))
    have = np.array(used, dtype=np.int64).reshape(len(claims.counters), 2)
    caps_of = [caps[c] for c, _ in claims.counters]
    max_amount = np.array([np.iinfo(np.int64).max if c.max_amount is None else c.max_amount for c in caps_of])
    max_count = np.array([np.iinfo(np.int64).max if c.max_count is None else c.max_count for c in caps_of])
    if not ((have[:, 0] + demand <= max_amount) & (have[:, 1] + n <= max_count)).all():
        return None
    for p, (d, k) in enumerate(zip(demand.tolist(), n.tolist(), strict=True)):
        used[p][0] += d
        used[p][1] += k
    return Grants(claims.amount.copy(), np.zeros(0, np.intp), np.zeros(0, np.intp))

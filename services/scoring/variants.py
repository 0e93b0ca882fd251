"""Champion/challenger and shadow scoring: which bundle decides which merchant.

A deployment's champion answers every merchant the challengers do not; each challenger
answers a configured share of the merchants, chosen by a hash of the merchant id salted
with the deployment's name. The hash is computed from the id's bytes alone (FNV-1a, then
a 64-bit finaliser so every bit of the id moves the bucket), never from Python's
per-process ``hash``: a merchant gets the same variant on every replica, after every
restart and on every batch, and a split's shares hold within binomial bounds. The
challengers take consecutive bucket ranges in their listed order; the champion the rest.

Shadows are scored on the same gathered features and request fields and never change the
answer: their PD, decision, limit and grade travel with the batch to the decision log and
the per-variant metrics.

Everything a batch shares (the idempotency lookup and save, the feature read, the
controls, the exposure caps, the log) runs once whatever the split; only the kernel and
the policy run once per variant present in the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.models import ModelArtifact
from services.policy import Policy
from services.schema.enums import APPROVE
from services.schema.records import Rows, blank_decisions
from services.scoring.decider import Decider
from services.scoring.gather import Gathered
from services.scoring.stages import StageTimer

BUCKETS = 10_000  # shares are resolved to 0.01%
CHAMPION = "champion"
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)

# What a shadow's decision leaves on record, per decided row.
SHADOW_DTYPE = np.dtype([("pd", "<f8"), ("decision", "i1"), ("approved_minor", "<i8"), ("risk_grade", "S4")])


def buckets(merchant_ids: npt.NDArray[np.bytes_], salt: str) -> npt.NDArray[np.int64]:
    """Each merchant's bucket in ``[0, BUCKETS)``: the same id and salt, the same bucket, anywhere."""
    ids = np.ascontiguousarray(merchant_ids)
    width = ids.dtype.itemsize
    raw = ids.view(np.uint8).reshape(len(ids), width) if width else np.zeros((len(ids), 0), np.uint8)
    h = np.full(len(ids), _salted(salt), dtype=np.uint64)
    used = np.flatnonzero(raw.any(axis=0))  # columns past the longest id are all padding
    with np.errstate(over="ignore"):
        for k in range(int(used[-1]) + 1 if used.size else 0):  # the id's bytes; NUL padding is skipped
            col = raw[:, k].astype(np.uint64)
            h = np.where(col != 0, (h ^ col) * _FNV_PRIME, h)
        h ^= h >> np.uint64(33)  # murmur3's fmix64: the low bits depend on every byte
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return (h % np.uint64(BUCKETS)).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _salted(salt: str) -> np.uint64:
    """FNV-1a state after the salt and a separator no id byte can be (once per salt, not per batch)."""
    h = int(_FNV_OFFSET)
    for b in salt.encode() + b"\x00":
        h = ((h ^ b) * int(_FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


@dataclass(frozen=True)
class ArmSpec:
    """A challenger (``share`` of the merchants) or a shadow (share 0), as a deployment names it."""

    name: str
    bundle: str
    model: ModelArtifact
    policy: Policy
    share: float = 0.0


@dataclass(frozen=True)
class Arms:
    """What an engine decides with beside its champion's model and policy."""

    bundle: str = ""  # the champion's bundle id ("" for an engine not built from a registry)
    challengers: tuple[ArmSpec, ...] = ()
    shadows: tuple[ArmSpec, ...] = ()
    salt: str = ""  # the split's salt: the deployment's name


@dataclass(frozen=True)
class ShadowLog:
    """The shadows' answers for the rows a batch decided here, for the decision log."""

    names: tuple[str, ...]
    bundles: tuple[str, ...]
    scores: npt.NDArray[np.void]  # (decided rows, shadows) of SHADOW_DTYPE


@dataclass(frozen=True)
class Variant:
    """One bundle's decider, as a champion, a challenger (``share`` > 0) or a shadow."""

    name: str
    bundle: str
    decider: Decider
    policy: Policy
    share: float = 0.0

    @property
    def reason_table(self) -> tuple[tuple[str, str], ...]:
        return self.policy.reason_table


def take(gathered: Gathered, idx: npt.NDArray[np.intp]) -> Gathered:
    """The gathered inputs of rows ``idx`` only (what one variant decides)."""
    f = gathered.features
    sub = dataclasses.replace(
        f, matrix=np.ascontiguousarray(f.matrix[idx]), tags=np.ascontiguousarray(f.tags[idx]), found=f.found[idx],
        event_ts=f.event_ts[idx], view_ts=None if f.view_ts is None else f.view_ts[idx],
    )
    return dataclasses.replace(gathered, features=sub)


class Variants:
    """The champion, its challengers and its shadows, and which of them decides each row."""

    def __init__(self, champion: Variant, challengers: Sequence[Variant] = (), shadows: Sequence[Variant] = (),
                 salt: str = "") -> None:
        self.champion = champion
        self.arms: tuple[Variant, ...] = (champion, *challengers)  # index 0: the champion
        self.shadows = tuple(shadows)
        self._salt = salt
        # Challenger k answers buckets [bounds[k-1], bounds[k]); the champion the rest.
        self._bounds = np.rint(np.cumsum([c.share for c in challengers]) * BUCKETS).astype(np.int64)
        if len(self._bounds) and self._bounds[-1] > BUCKETS:
            raise ValueError("challenger shares add up to more than every merchant")
        # Numbered names and bundles: the columns the records carry.
        self.names = np.array([v.name.encode() for v in self.arms], dtype="S32")
        self.bundles = np.array([v.bundle.encode() for v in self.arms], dtype="S64")
        self.table_lengths = np.array([len(v.reason_table) for v in self.arms], dtype=np.intp)

    @property
    def split(self) -> bool:
        return len(self.arms) > 1

    def assign(self, merchant_ids: npt.NDArray[np.bytes_]) -> npt.NDArray[np.intp]:
        """Each row's arm: 0 the champion, k the k-th challenger."""
        if not self.split:
            return np.zeros(len(merchant_ids), dtype=np.intp)
        k = np.searchsorted(self._bounds, buckets(merchant_ids, self._salt), side="right") + 1
        return np.where(k > len(self._bounds), 0, k).astype(np.intp)

    def decide(self, asked: Rows, gathered: Gathered, now: float, timer: StageTimer, out: Rows) -> npt.NDArray[np.intp]:
        """Each row decided by its arm's bundle, into ``out``; which arm decided each row."""
        arm = self.assign(asked["merchant_id"])
        if not self.split or not arm.any():
            self.champion.decider.decide(asked, gathered, now, timer, out)
        else:
            for k in np.unique(arm).tolist():
                idx = np.flatnonzero(arm == k)
                part = out[idx]
                self.arms[k].decider.decide(asked[idx], take(gathered, idx), now, timer, part)
                out[idx] = part
        out["variant"] = self.names[arm]
        out["bundle_id"] = self.bundles[arm]
        return arm

    def shadow(self, asked: Rows, gathered: Gathered, now: float, timer: StageTimer) -> npt.NDArray[np.void] | None:
        """``(rows, shadows)`` of ``SHADOW_DTYPE``: what each shadow would have answered."""
        if not self.shadows:
            return None
        scores = np.zeros((len(asked), len(self.shadows)), dtype=SHADOW_DTYPE)
        for s, variant in enumerate(self.shadows):
            scratch = blank_decisions(len(asked))
            variant.decider.decide(asked, gathered, now, timer, scratch, reasons=False)
            for name in SHADOW_DTYPE.names or ():
                scores[name][:, s] = scratch[name]
        return scores

    def tables(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """Each policy version's reason table (the records' reason indices point into these)."""
        return {v.policy.version: v.reason_table for v in (*self.arms, *self.shadows)}

    def shadow_stats(self, scores: npt.NDArray[np.void] | None) -> dict[str, list[float]]:
        """Per shadow: [decisions scored, approvals, sum of PD, sum of approved limits] (for metrics)."""
        if scores is None or not len(scores):
            return {}
        out = {}
        for s, variant in enumerate(self.shadows):
            col = scores[:, s]
            scored = ~np.isnan(col["pd"])
            out[variant.name] = [float(scored.sum()), float((col["decision"] == APPROVE).sum()),
                                 float(col["pd"][scored].sum()), float(col["approved_minor"].sum())]
        return out

    def shadow_log(self, scores: npt.NDArray[np.void] | None) -> ShadowLog | None:
        if scores is None:
            return None
        return ShadowLog(tuple(v.name for v in self.shadows), tuple(v.bundle for v in self.shadows), scores)

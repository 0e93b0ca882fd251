"""Idempotency: the same ``application_id`` within the window gets the same decision.

One lookup per batch finds earlier decisions (replays), repeats of an id inside the batch
are answered from its first occurrence, an id reused for a different request (another
fingerprint) is refused with ``ALREADY_EXISTS``, and one insert-if-absent per batch saves
the fresh decisions; an id another replica decided first is answered with that decision.
Records are ``DECISION_DTYPE`` rows; reason indices of a record made under another policy
version are read back through that version's stored reason table.

A store that fails is logged and the batch decided afresh (the decisions still answered).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features import FeatureError, IdempotencyStore
from services.schema.codes import Code
from services.schema.records import DECISION_DTYPE, Rows, blank_decisions

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a batch needs, after the lookup: ``rows`` answers it once ``fresh`` rows are decided."""

    rows: Rows
    replayed: npt.NDArray[np.bool_]
    copy_of: npt.NDArray[np.intp]  # repeats inside the batch: the row they copy, -1 none

    @property
    def fresh(self) -> npt.NDArray[np.bool_]:
        fresh: npt.NDArray[np.bool_] = (self.rows["status"] == Code.OK) & ~self.replayed & (self.copy_of < 0)
        return fresh

    def finish(self) -> None:
        """Repeats take their first occurrence's answer; refused rows carry no decision id."""
        dup = self.copy_of >= 0
        if dup.any():
            self.rows[dup] = self.rows[self.copy_of[dup]]
        self.rows["decision_id"][self.rows["status"] != Code.OK] = b""


class Replays:
    def __init__(self, store: IdempotencyStore, policy_version: str, reason_table: tuple[tuple[str, str], ...]):
        self._store = store
        self._policy = policy_version.encode()
        self._table = reason_table
        self._store.put_reasons(policy_version, reason_table)

    def plan(self, app_ids: list[str], fingerprints: npt.NDArray[np.uint64], expired: npt.NDArray[np.bool_]) -> Plan:
        n = len(app_ids)
        rows = blank_decisions(n)
        rows["status"][expired] = Code.DEADLINE_EXCEEDED
        stored = self._lookup(app_ids)
        first: dict[str, int] = {}
        copy_of = np.full(n, -1, dtype=np.intp)
        replayed = np.zeros(n, dtype=bool)
        for i, a in enumerate(app_ids):
            j = first.setdefault(a, i)
            if j != i:
                copy_of[i] = j
            elif a in stored:
                rows[i] = np.frombuffer(stored[a], dtype=DECISION_DTYPE)[0]
                replayed[i] = True
        mismatch = replayed & (rows["fingerprint"] != fingerprints)
        # A repeat inside the batch asking something else is refused like a stored one.
        dup = copy_of >= 0
        asked_else = np.zeros(n, dtype=bool)
        asked_else[dup] = fingerprints[dup] != fingerprints[copy_of[dup]]
        copy_of[asked_else] = -1
        rows["status"][mismatch | asked_else] = Code.ALREADY_EXISTS
        return Plan(rows, replayed, copy_of)

    def save(self, plan: Plan, rows: npt.NDArray[np.intp], app_ids: list[str]) -> None:
        """Save the decided ``rows`` of the plan; ids decided elsewhere first take that decision."""
        ids = [app_ids[i] for i in rows.tolist()]
        records = plan.rows[rows]
        try:
            lost = self._store.save(ids, [r.tobytes() for r in records])
        except FeatureError as exc:
            log.warning("idempotency save failed: %s", exc)
            return
        for i, a in zip(rows.tolist(), ids, strict=True):
            won = lost.get(a)
            if won is not None:  # another replica decided it first: answer with that
                plan.rows[i] = np.frombuffer(won, dtype=DECISION_DTYPE)[0]
                plan.replayed[i] = True

    def reason_table(self, plan: Plan) -> tuple[tuple[str, str], ...]:
        """This policy's reason table, extended with the codes of replays made under others
        (whose reason indices are rewritten into it)."""
        table = list(self._table)
        older = plan.replayed & (plan.rows["policy_version"] != self._policy)
        for i in np.flatnonzero(older).tolist():
            version = plan.rows["policy_version"][i].decode()
            plan.rows["reason"][i] = self._remap(plan.rows["reason"][i], version, table)
        return tuple(table)

    def _remap(
        self, row: npt.NDArray[np.int16], policy_version: str, table: list[tuple[str, str]]
    ) -> npt.NDArray[np.int16]:
        """Reason indices of another policy version's table -> indices into ``table`` (extended as needed)."""
        try:
            old = self._store.reasons(policy_version) or ()
        except FeatureError as exc:
            log.warning("reason table of %s unreadable: %s", policy_version, exc)
            old = ()
        out = np.full_like(row, -1)
        codes = [c for c, _ in table]
        for k, r in enumerate(row.tolist()):
            if 0 <= r < len(old):
                entry = old[r]
                if entry[0] not in codes:
                    table.append(entry)
                    codes.append(entry[0])
                out[k] = codes.index(entry[0])
        return out

    def _lookup(self, app_ids: list[str]) -> dict[str, bytes]:
        try:
            found = self._store.lookup(app_ids)
        except FeatureError as exc:
            log.warning("idempotency lookup failed, deciding afresh: %s", exc)
            return {}
        # A record of another size is not ours to read (the namespace should prevent it).
        return {a: r for a, r in found.items() if len(r) == DECISION_DTYPE.itemsize}

    def close(self) -> None:
        self._store.close()

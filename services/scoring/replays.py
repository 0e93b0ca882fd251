"""Idempotency: the same ``application_id`` within the window gets the same decision.

One lookup per batch finds earlier decisions (replays), repeats of an id inside the batch
are answered from its first occurrence, an id reused for a different request (another
fingerprint) is refused with ``ALREADY_EXISTS``, and one insert-if-absent per batch saves
the fresh decisions; an id another replica decided first is answered with that decision.
Records are ``DECISION_DTYPE`` rows; reason indices of a record made under another policy
version are read back through that version's stored reason table.

Without the store nothing is decided afresh silently. A failed lookup still decides the
batch, and the save's insert-if-absent then answers any id decided before with that
decision; a failed save (or the lookup's failure followed by one) means the decisions
are not recorded against retries, so the policy's idempotency mode applies to them
(``Policy.degrade_records``): by default ``UNAVAILABLE`` (a retry must never get a
different answer), else referred or capped, flagged degraded with
``D_IDEMPOTENCY_UNAVAILABLE``. Without a policy (``policy=None``) every such item is
answered ``UNAVAILABLE``.

A replica starts while its store is down: this policy's reason table is written when the
store first answers (before any record that refers to it is saved), and ``ready`` says
whether the store answered last time, so readiness recovers without a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from features import FeatureError, IdempotencyStore
from services.schema.codes import Code
from services.schema.records import DECISION_DTYPE, Rows, blank_decisions

if TYPE_CHECKING:
    from services.policy import Policy
    from services.policy.config import DegradedInput

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a batch needs, after the lookup: ``rows`` answers it once ``fresh`` rows are decided."""

    rows: Rows
    replayed: npt.NDArray[np.bool_]
    copy_of: npt.NDArray[np.intp]  # repeats inside the batch: the row they copy, -1 none
    products: npt.NDArray[np.int8] | None = None  # per row, for per-product degraded modes

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


def _refuse(rows: Rows, product: npt.NDArray[np.int8] | None, name: DegradedInput) -> None:
    """Without a policy: what cannot be recorded is not answered (``UNAVAILABLE``)."""
    rows["status"] = Code.UNAVAILABLE


class Replays:
    def __init__(
        self, store: IdempotencyStore, policy_version: str, reason_table: tuple[tuple[str, str], ...],
        policy: Policy | None = None,
    ) -> None:
        self._store = store
        self._version = policy_version
        self._policy = policy_version.encode()
        self._table = reason_table
        self._degrade = policy.degrade_records if policy is not None else _refuse
        self._table_saved = False
        self._store_ok = True
        try:  # now if the store answers; else before the first save (see save)
            self._save_table()
        except FeatureError as exc:
            self._store_ok = False
            log.warning("idempotency store unavailable at start (reason table written once it answers): %s", exc)

    @property
    def ready(self) -> bool:
        """The store answered last time and holds this policy's reason table."""
        return self._store_ok and self._table_saved

    def plan(
        self, app_ids: list[str], fingerprints: npt.NDArray[np.uint64], expired: npt.NDArray[np.bool_],
        products: npt.NDArray[np.int8] | None = None,
    ) -> Plan:
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
        return Plan(rows, replayed, copy_of, products)

    def save(self, plan: Plan, rows: npt.NDArray[np.intp], app_ids: list[str]) -> None:
        """Save the decided ``rows`` of the plan; ids decided elsewhere first take that decision.

        Items refused while deciding (``UNAVAILABLE`` by a degraded mode) are not saved: a
        retry is decided afresh. If the save fails, the idempotency mode applies.
        """
        decided = rows[plan.rows["status"][rows] == Code.OK]
        if decided.size == 0:
            return
        ids = [app_ids[i] for i in decided.tolist()]
        try:
            self._save_table()
            lost = self._store.save(ids, [r.tobytes() for r in plan.rows[decided]])
        except FeatureError as exc:
            log.log(logging.WARNING if self._store_ok else logging.DEBUG,
                    "idempotency save failed, applying the idempotency mode: %s", exc)
            self._store_ok = False
            self._unrecorded(plan, decided)
            return
        self._store_ok = True
        for i, a in zip(decided.tolist(), ids, strict=True):
            won = lost.get(a)
            if won is None or len(won) != DECISION_DTYPE.itemsize:
                continue
            first = np.frombuffer(won, dtype=DECISION_DTYPE)[0]
            if first["fingerprint"] != plan.rows["fingerprint"][i]:
                plan.rows["status"][i] = Code.ALREADY_EXISTS  # decided first for another request
            else:  # another replica (or an earlier try whose lookup failed) decided it first
                plan.rows[i] = first
                plan.replayed[i] = True

    def _unrecorded(self, plan: Plan, decided: npt.NDArray[np.intp]) -> None:
        """The idempotency mode on decisions that could not be recorded (refer, cap or refuse)."""
        part = plan.rows[decided]  # a copy: written back below
        products = plan.products[decided] if plan.products is not None else None
        self._degrade(part, products, "idempotency")
        plan.rows[decided] = part

    def _save_table(self) -> None:
        """This policy's reason table, once per process: before any record that refers to it."""
        if not self._table_saved:
            self._store.put_reasons(self._version, self._table)
            self._table_saved = True

    def reason_table(
        self, plan: Plan, known: dict[str, tuple[tuple[str, str], ...]] | None = None
    ) -> tuple[tuple[str, str], ...]:
        """This policy's reason table, extended with the codes of rows decided under others
        (whose reason indices are rewritten into it): replays made under another version,
        read back through the store, and rows a challenger decided here, through ``known``
        (each policy version's table as this replica holds it)."""
        table = list(self._table)
        other = plan.rows["policy_version"] != self._policy
        for version, theirs in (known or {}).items():
            mine = other & (plan.rows["policy_version"] == version.encode())
            if version != self._version and mine.any():
                plan.rows["reason"][mine] = _index_map(theirs, table)[plan.rows["reason"][mine]]
                other &= ~mine
        older = plan.replayed & other
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

    def save_table(self, version: str, table: tuple[tuple[str, str], ...]) -> None:
        """Another policy version's table (a challenger's), before any record that refers to it."""
        self._store.put_reasons(version, table)

    def _lookup(self, app_ids: list[str]) -> dict[str, bytes]:
        try:
            found = self._store.lookup(app_ids)
        except FeatureError as exc:
            # Decided anyway: the save's insert-if-absent still finds an earlier decision,
            # and if the save fails too the idempotency mode applies (see save).
            log.log(logging.WARNING if self._store_ok else logging.DEBUG,
                    "idempotency lookup failed: %s", exc)
            self._store_ok = False
            return {}
        self._store_ok = True
        # A record of another size is not ours to read (the namespace should prevent it).
        return {a: r for a, r in found.items() if len(r) == DECISION_DTYPE.itemsize}

    def close(self) -> None:
        self._store.close()


def _index_map(theirs: tuple[tuple[str, str], ...], table: list[tuple[str, str]]) -> npt.NDArray[np.int16]:
    """Indices into ``theirs`` -> indices into ``table`` (extended as needed); index -1 (the
    map's last slot) and anything beyond ``theirs`` read -1."""
    codes = {c: k for k, (c, _) in enumerate(table)}
    out = np.full(len(theirs) + 1, -1, dtype=np.int16)
    for k, entry in enumerate(theirs):
        if entry[0] not in codes:
            codes[entry[0]] = len(table)
            table.append(entry)
        out[k] = codes[entry[0]]
    full = np.full(1 << 15, -1, dtype=np.int16)  # any int16 index (negative ones wrap to -1)
    full[: len(theirs)] = out[:-1]
    return full

"""What every store's idempotency half shares: the protocol and the reason-table encoding.

A store keeps each decided application's record (opaque bytes, defined by the services)
under its application id for a window, insert-if-absent, so the same application id gets
the same decision across front ends and replicas; and it keeps each policy version's
reason table once, so a replayed record's reason indices can be read back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol


class IdempotencyStore(Protocol):
    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]: ...

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        """Insert each absent id; returns the stored record of every id that was already present."""
        ...

    def put_reasons(self, policy_version: str, table: tuple[tuple[str, str], ...]) -> None: ...

    def reasons(self, policy_version: str) -> tuple[tuple[str, str], ...] | None: ...

    def close(self) -> None: ...


class NoIdempotency:
    """Idempotency disabled (window 0)."""

    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]:
        return {}

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        return {}

    def put_reasons(self, policy_version: str, table: tuple[tuple[str, str], ...]) -> None:
        return None

    def reasons(self, policy_version: str) -> tuple[tuple[str, str], ...] | None:
        return None

    def close(self) -> None:
        return None


def encode_table(table: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(table)


def decode_table(raw: str | bytes) -> tuple[tuple[str, str], ...]:
    return tuple((str(code), str(desc)) for code, desc in json.loads(raw))

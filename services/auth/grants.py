"""The authorization table, compiled once: what each caller may ask.

A ``Grant`` is checked per call (may this caller use this RPC?) and per request (this
product, this amount in this currency?). Request checks read the decoded records, so a
batch is checked with three vectorized comparisons, not a loop; a unary record is
checked with one ``struct`` read at the record's offsets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.auth.settings import ADMIN, CallerGrant, SecuritySettings
from services.errors import PermissionDenied
from services.schema.currency import CURRENCIES, currency_index
from services.schema.enums import PRODUCTS
from services.schema.records import REQUEST_DTYPE, Rows

_NO_CAP = np.iinfo(np.int64).max


def _reader(name: str) -> tuple[struct.Struct, int]:
    """A ``struct`` reading one integer column out of a request record."""
    sub, offset = REQUEST_DTYPE.fields[name][:2]  # type: ignore[index]
    return struct.Struct({8: "<q", 1: "<b"}[sub.itemsize]), int(offset)


_AMOUNT, _CURRENCY, _PRODUCT = (_reader(n) for n in ("amount_minor", "currency", "product"))


@dataclass(frozen=True)
class Grant:
    name: str
    caller: bytes  # the name as the request records carry it
    rpcs: frozenset[str]
    admin: bool
    # products[p]: may ask for product value p (index 0 is UNSPECIFIED, never valid).
    products: npt.NDArray[np.bool_]
    # caps[c]: largest amount in currency index c (0: that currency is refused).
    caps: npt.NDArray[np.int64]

    def allow_rpc(self, rpc: str) -> None:
        if rpc not in self.rpcs:
            raise PermissionDenied(f"caller {self.name!r} may not call {rpc}")

    def require_admin(self) -> None:
        if not self.admin:
            raise PermissionDenied(f"caller {self.name!r} holds no {ADMIN} right")

    def refusal(self, record: bytes) -> tuple[str, str] | None:
        """``(field, message)`` if this caller may not ask what ``record`` asks."""
        (amount,) = _AMOUNT[0].unpack_from(record, _AMOUNT[1])
        (currency,) = _CURRENCY[0].unpack_from(record, _CURRENCY[1])
        (product,) = _PRODUCT[0].unpack_from(record, _PRODUCT[1])
        return self._why(amount, currency, product)

    def refused(self, rows: Rows) -> npt.NDArray[np.bool_]:
        """Which rows this caller may not ask (``refusal`` of each says why)."""
        bad: npt.NDArray[np.bool_] = ~self.products[rows["product"]] | (
            rows["amount_minor"] > self.caps[rows["currency"]]
        )
        return bad

    def refusal_of_row(self, row: Any) -> tuple[str, str]:
        why = self._why(int(row["amount_minor"]), int(row["currency"]), int(row["product"]))
        assert why is not None
        return why

    def _why(self, amount: int, currency: int, product: int) -> tuple[str, str] | None:
        if not self.products[product]:
            return "product", f"caller {self.name!r} may not request {PRODUCTS[product - 1]}"
        cap = int(self.caps[currency])
        if amount > cap:
            code = CURRENCIES[currency].code
            if cap == 0:
                return "requested_amount.currency", f"caller {self.name!r} may not request amounts in {code}"
            return "requested_amount.amount_minor", f"caller {self.name!r} may request at most {cap} {code} minor units"
        return None


def compile_grant(g: CallerGrant) -> Grant:
    products = np.zeros(len(PRODUCTS) + 1, dtype=bool)
    for i, name in enumerate(PRODUCTS, start=1):
        products[i] = not g.products or name in g.products
    caps = np.full(len(CURRENCIES), _NO_CAP if not g.max_amount_minor else 0, dtype=np.int64)
    for code, cap in g.max_amount_minor.items():
        caps[currency_index(code)] = cap
    return Grant(g.name, g.name.encode(), frozenset(g.rpcs), ADMIN in g.rights, products, caps)


class Grants:
    """Every caller's grant by name, and the anonymous one (if unidentified callers may call)."""

    def __init__(self, security: SecuritySettings) -> None:
        self._by_name = {g.name: compile_grant(g) for g in security.callers}
        self.anonymous = compile_grant(security.anonymous) if security.anonymous is not None else None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def of(self, name: str) -> Grant:
        grant = self._by_name.get(name)
        if grant is None:
            raise PermissionDenied(f"caller {name[:64]!r} holds no grant")
        return grant

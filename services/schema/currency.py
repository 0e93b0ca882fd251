"""Currencies the lender books credit in (ISO-4217 code and minor-unit exponent)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Currency:
    code: str
    exponent: int  # minor units per major unit = 10 ** exponent


CURRENCIES: tuple[Currency, ...] = (
    Currency("CNY", 2),
    Currency("USD", 2),
    Currency("EUR", 2),
    Currency("HKD", 2),
    Currency("GBP", 2),
    Currency("SGD", 2),
    Currency("JPY", 0),
)
_INDEX = {c.code: i for i, c in enumerate(CURRENCIES)}


def currency_index(code: str) -> int:
    """Index of ``code`` in ``CURRENCIES``; -1 if the lender does not book it."""
    return _INDEX.get(code, -1)

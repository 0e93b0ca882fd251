"""Degraded modes: what the policy answers when an input is missing, per input and product.

The policy's ``degraded:`` section (``services.policy.config.DegradedConfig``) is compiled
once per load into arrays indexed by product code, so applying it is a few numpy
operations per batch. Each input that can be missing has a mode per product:

- ``refer``: no approval: APPROVE becomes REVIEW (a decision made without features is
  REVIEW with no limit, as it cannot be graded);
- ``cap``: decide with what is there, the approved limit capped at ``cap_base_minor``
  (without features: APPROVE up to the cap, priced at the mode's grade, if the cap
  reaches the policy's minimum offer; else REVIEW);
- ``unavailable``: no decision; the item is answered ``UNAVAILABLE`` (nothing is saved,
  so a retry is decided once the input is back).

Every decision made with an input missing has ``degraded=true`` and carries
``DEGRADED_MODE`` first, then a reason naming what was missing
(``D_FEATURES_UNAVAILABLE``, ``D_VELOCITY_UNAVAILABLE``, ``D_IDEMPOTENCY_UNAVAILABLE``,
``D_EXPOSURE_UNAVAILABLE``: the exposure counters, applied to approvals only, with caps set;
``D_CONTROLS_UNAVAILABLE``: the operator controls' store has not confirmed the set in force
for longer than ``degraded.controls_max_age_s``, applied to every decision of the batch).
Modes compose: features and velocity both missing applies both, and each mode only ever
makes a decision more conservative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.policy.config import DEGRADED_INPUTS, PRODUCTS, DegradedConfig, DegradedInput

REFER, CAP, UNAVAILABLE = 0, 1, 2
_MODES = {"refer": REFER, "cap": CAP, "unavailable": UNAVAILABLE}

DEGRADED_REASONS: dict[DegradedInput, tuple[str, str]] = {
    "features": ("D_FEATURES_UNAVAILABLE", "The merchant's features could not be read"),
    "velocity": ("D_VELOCITY_UNAVAILABLE", "Recent application counts could not be updated"),
    "idempotency": ("D_IDEMPOTENCY_UNAVAILABLE", "The decision could not be recorded against retries"),
    "exposure": ("D_EXPOSURE_UNAVAILABLE", "The approval could not be reserved against the exposure caps"),
    "controls": ("D_CONTROLS_UNAVAILABLE", "The operator controls in force could not be confirmed"),
}


@dataclass(frozen=True)
class RowModes:
    """One input's mode for each row of a batch."""

    mode: npt.NDArray[np.int8]
    cap_base_minor: npt.NDArray[np.float64]  # NaN where the mode is not ``cap``
    grade: npt.NDArray[np.intp]  # the grade a featureless ``cap`` decision is priced at

    def __len__(self) -> int:
        return len(self.mode)


class DegradedModes:
    """The ``degraded:`` section as arrays indexed by product code (0: the defaults)."""

    def __init__(self, config: DegradedConfig, grade_letters: tuple[str, ...]) -> None:
        self.config = config
        products: tuple[str | None, ...] = (None, *PRODUCTS)  # index = product code (1-based)
        self._mode: dict[str, npt.NDArray[np.int8]] = {}
        self._cap: dict[str, npt.NDArray[np.float64]] = {}
        self._grade: dict[str, npt.NDArray[np.intp]] = {}
        last = len(grade_letters) - 1
        for name in DEGRADED_INPUTS:
            modes = [config.mode(p, name) for p in products]
            self._mode[name] = np.array([_MODES[m.mode] for m in modes], dtype=np.int8)
            self._cap[name] = np.array(
                [np.nan if m.cap_base_minor is None else float(m.cap_base_minor) for m in modes]
            )
            self._grade[name] = np.array(
                [last if m.grade is None else grade_letters.index(m.grade) for m in modes], dtype=np.intp
            )

    def rows(self, name: DegradedInput, product: npt.NDArray[np.int8] | None, n: int) -> RowModes:
        """``name``'s mode per row (``product`` None: the defaults' for all ``n`` rows)."""
        idx = np.zeros(n, dtype=np.intp) if product is None else product.astype(np.intp)
        idx = np.where((idx >= 0) & (idx < len(self._mode[name])), idx, 0)
        return RowModes(self._mode[name][idx], self._cap[name][idx], self._grade[name][idx])


def prepend_reason(
    reason: npt.NDArray[np.int16], contrib: npt.NDArray[np.float32], code: int, rows: npt.NDArray[np.bool_]
) -> None:
    """Put reason ``code`` first in each of ``rows`` that lacks it (the last slot drops off)."""
    need = rows & ~(reason == code).any(axis=1)
    if need.any():
        reason[need, 1:] = reason[need, :-1]
        contrib[need, 1:] = contrib[need, :-1]
        reason[need, 0] = code
        contrib[need, 0] = 0.0

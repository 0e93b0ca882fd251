"""Parity gate: compare the compiled kernel against the source library's predictions.

The caller computes ``expected`` with LightGBM/XGBoost (this package never
imports them) on a reference sample; ``check_parity`` scores the same sample
and accepts the model only if every row is within ``tolerance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from kernels.errors import InputShapeError

__all__ = ["ParityReport", "Predictor", "check_parity"]


class Predictor(Protocol):
    """What the gate scores: a ``TreeEnsemble``, or any model with the same ``predict``."""

    def predict(self, X: npt.NDArray[Any], raw_score: bool = False) -> npt.NDArray[np.float64]: ...


@dataclass(frozen=True)
class ParityReport:
    """Outcome of :func:`check_parity`.

    ``worst_row`` is the index of the row with the largest absolute error
    (-1 for an empty sample). NaN on either side counts as an infinite error
    unless both sides are NaN.
    """

    max_abs_error: float
    mean_abs_error: float
    rows: int
    tolerance: float
    passed: bool
    worst_row: int
    raw_score: bool = False

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        what = "raw score" if self.raw_score else "prediction"
        return (
            f"parity {verdict}: {self.rows} rows, {what} max |err| = {self.max_abs_error:.3e} "
            f"(row {self.worst_row}), mean |err| = {self.mean_abs_error:.3e}, "
            f"tolerance = {self.tolerance:.1e}"
        )

    def __bool__(self) -> bool:
        return self.passed


def check_parity(
    ensemble: Predictor,
    X: npt.NDArray[Any],
    expected: npt.ArrayLike,
    tolerance: float = 1e-9,
    *,
    raw_score: bool = False,
) -> ParityReport:
    """Score ``X`` with ``ensemble`` and compare against ``expected`` (same rows).

    ``expected`` is what the source library returned for ``X`` (e.g.
    ``booster.predict(X)``; with ``raw_score=True`` the raw margins). An empty
    sample does not pass: a gate that saw no rows has proved nothing.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    exp = np.asarray(expected, dtype=np.float64)
    if exp.ndim != 1:
        exp = exp.reshape(-1) if exp.ndim == 2 and 1 in exp.shape else exp
    got = ensemble.predict(X, raw_score=raw_score)
    if exp.ndim != 1 or exp.shape[0] != got.shape[0]:
        raise InputShapeError(
            f"expected has shape {np.shape(expected)}, X has {got.shape[0]} rows"
        )
    rows = int(got.shape[0])
    if rows == 0:
        return ParityReport(math.inf, math.inf, 0, float(tolerance), False, -1, raw_score)
    with np.errstate(invalid="ignore"):
        err = np.abs(got - exp)
    both_nan = np.isnan(got) & np.isnan(exp)
    err = np.where(both_nan, 0.0, err)
    err = np.where(np.isnan(err), np.inf, err)
    worst = int(np.argmax(err))
    max_err = float(err[worst])
    return ParityReport(
        max_abs_error=max_err,
        mean_abs_error=float(np.mean(err)),
        rows=rows,
        tolerance=float(tolerance),
        passed=bool(max_err <= tolerance),
        worst_row=worst,
        raw_score=raw_score,
    )

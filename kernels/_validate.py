"""Input checks done in Python, before any pointer is handed to C.

The kernels run with bounds checking off, so every shape/dtype/layout
assumption is verified here and reported with a message that says how to fix
the call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.errors import InputDtypeError, InputShapeError

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _check_array(x: Any, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise InputDtypeError(
            f"{what} must be a numpy.ndarray of float32 or float64, got {type(x).__name__}"
        )
    dt = x.dtype
    if dt not in (_F64, _F32):
        raise InputDtypeError(
            f"{what} must have dtype float32 or float64 (native byte order), got {dt}"
        )
    return x


def check_matrix(x: Any, n_features: int, what: str = "X") -> np.ndarray:
    """Validate a (n_rows, n_features) float32/float64 C-contiguous matrix."""
    arr = _check_array(x, what)
    if arr.ndim != 2:
        raise InputShapeError(f"{what} must be 2-D (n_rows, {n_features}), got shape {arr.shape}")
    if arr.shape[1] != n_features:
        raise InputShapeError(
            f"{what} has {arr.shape[1]} features per row; the model expects {n_features}"
        )
    if not (arr.flags.c_contiguous and arr.flags.aligned):
        raise InputDtypeError(
            f"{what} must be C-contiguous and aligned; pass np.ascontiguousarray({what})"
        )
    return arr


def check_row(x: Any, n_features: int, what: str = "row") -> np.ndarray:
    """Validate a 1-D float32/float64 contiguous row of n_features values."""
    arr = _check_array(x, what)
    if arr.ndim != 1:
        raise InputShapeError(f"{what} must be 1-D ({n_features},), got shape {arr.shape}")
    if arr.shape[0] != n_features:
        raise InputShapeError(
            f"{what} has {arr.shape[0]} features; the model expects {n_features}"
        )
    if not (arr.flags.c_contiguous and arr.flags.aligned):
        raise InputDtypeError(
            f"{what} must be contiguous and aligned; pass np.ascontiguousarray({what})"
        )
    return arr


def check_top_k(top_k: Any, n_features: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
        raise InputShapeError(f"top_k must be an int, got {type(top_k).__name__}")
    k = int(top_k)
    if k < 1 or k > n_features:
        raise InputShapeError(f"top_k must be in [1, {n_features}], got {k}")
    return k

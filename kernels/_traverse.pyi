"""Type stub for the compiled traversal kernel (kernels/_traverse.pyx)."""

import numpy as np
import numpy.typing as npt

class TraversalKernel:
    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        n_features: int,
        input_mode: int,
        link: int,
        sum_f32: bool,
        scale: float,
        base: float,
        avg_div: float,
        bias: float,
    ) -> None: ...
    def predict(self, X: np.ndarray, out: npt.NDArray[np.float64], raw: bool) -> None: ...
    def predict_one(self, row: np.ndarray, raw: bool) -> float: ...
    def predict_reasons(
        self,
        X: np.ndarray,
        top_k: int,
        out: npt.NDArray[np.float64],
        idx: npt.NDArray[np.int32],
        val: npt.NDArray[np.float64],
        raw: bool,
    ) -> None: ...
    def contributions(self, X: np.ndarray, out: npt.NDArray[np.float64]) -> None: ...

def xgb_base_margin(base_score: float, kind: int) -> float: ...

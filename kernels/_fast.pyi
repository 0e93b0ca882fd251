"""Type stub for kernels/_fast.pyx (block + single-row QuickScorer kernels)."""

import numpy as np
import numpy.typing as npt

class FastKernel:
    @property
    def block_ok(self) -> bool: ...
    @property
    def row_ok(self) -> bool: ...
    def __init__(
        self,
        a: dict[str, np.ndarray],
        n_features: int,
        input_mode: int,
        link: int,
        sum_f32: bool,
        scale: float,
        base: float,
        avg_div: float,
        wide: bool,
        block_ok: bool,
        row_ok: bool,
    ) -> None: ...
    def predict(self, X: np.ndarray, out: npt.NDArray[np.float64], raw: bool) -> None: ...
    def predict_reasons(
        self,
        X: np.ndarray,
        top_k: int,
        out: npt.NDArray[np.float64],
        idx: npt.NDArray[np.int32],
        val: npt.NDArray[np.float64],
        raw: bool,
    ) -> None: ...
    def predict_path(
        self, X: np.ndarray, out: npt.NDArray[np.float64], raw: bool, path: int
    ) -> None: ...
    def predict_one(self, row: np.ndarray, raw: bool) -> float: ...

class EnsembleBase:
    def _bind_kernels(
        self, fast: FastKernel | None, reference: object, n_features: int
    ) -> None: ...
    def predict(self, X: np.ndarray, raw_score: bool = False) -> npt.NDArray[np.float64]:
        """Score a (n_rows, n_features) float32/float64 C-contiguous matrix.

        Returns float64 (n_rows,): probabilities for binary objectives (the
        library's transformed output in general), raw margins if ``raw_score``.
        """
    def predict_with_reasons(
        self, X: np.ndarray, top_k: int | np.integer, raw_score: bool = False
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        """Scores plus the top-k most adverse features per row (Saabas attribution).

        Returns ``(pred, feature_idx, contribution)``: ``pred`` as :meth:`predict`;
        ``feature_idx`` int32 (n, k), most adverse first, ``-1`` where fewer than
        k features pushed the raw score up; ``contribution`` float64 (n, k) in
        raw-score (log-odds) units, 0.0 in unused slots. Ties go to the lower
        feature index. Values are exact to ~1e-7 relative (float32 partial sums);
        ``TreeEnsemble.contributions`` gives the exact float64 matrix.
        """
    def predict_one(self, row: np.ndarray, raw_score: bool = False) -> float:
        """Score one 1-D float32/float64 row without batch set-up."""

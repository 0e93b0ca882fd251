"""Type stub for kernels/_scorecard.pyx."""

import numpy as np
import numpy.typing as npt

class ScorecardKernel:
    def __init__(self, a: dict[str, np.ndarray], base: float) -> None: ...
    def score(
        self,
        X: np.ndarray,
        out: npt.NDArray[np.float64],
        points_out: npt.NDArray[np.float64] | None,
        top_k: int,
        idx: npt.NDArray[np.int32] | None,
        lost: npt.NDArray[np.float64] | None,
    ) -> None: ...

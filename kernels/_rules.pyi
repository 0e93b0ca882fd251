"""Type stub for kernels/_rules.pyx."""

import numpy as np

class RulesKernel:
    def __init__(self, a: dict[str, np.ndarray], n_features: int, n_words: int) -> None: ...
    def evaluate(
        self,
        X: np.ndarray | None,
        tags: np.ndarray | None,
        n: int,
        out: np.ndarray,
        packed: bool,
    ) -> None: ...

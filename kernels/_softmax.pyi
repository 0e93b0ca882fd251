"""Type stub for kernels/_softmax.pyx."""

import numpy as np
import numpy.typing as npt

def softmax_rows(raw: npt.NDArray[np.float64], out: npt.NDArray[np.float64]) -> None: ...

"""TreeEnsemble: the typed facade over the compiled tree kernels.

Loading parses the model into a library-neutral ForestIR (``_ir.py``),
validates it, and compiles it into the kernels' flat arrays. Prediction
validates the input, then calls a kernel that releases the GIL. ``predict``,
``predict_one`` and ``predict_with_reasons`` are inherited from
``_fast.EnsembleBase`` (C), so a single row pays ~0.2 us of call overhead
rather than ~1-2 us.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels import _compile
from kernels._fast import EnsembleBase, FastKernel
from kernels._ir import ForestIR
from kernels._layout import MAX_BLOCK_LEAVES, build_layout, fast_kernel_arrays
from kernels._lightgbm import DEFAULT_SOURCE as LGB_SOURCE
from kernels._lightgbm import parse_lightgbm
from kernels._traverse import TraversalKernel
from kernels._validate import check_matrix
from kernels._xgboost import DEFAULT_SOURCE as XGB_SOURCE
from kernels._xgboost import parse_xgboost_json
from kernels.errors import ModelFormatError

__all__ = ["TreeEnsemble"]

F64Array = npt.NDArray[np.float64]
I32Array = npt.NDArray[np.int32]


class TreeEnsemble(EnsembleBase):
    """A compiled binary-classification / regression tree ensemble.

    Build with :meth:`from_lightgbm` or :meth:`from_xgboost_json`. Instances are
    immutable and safe to share between threads (kernels keep no state between
    calls and release the GIL).
    """

    __slots__ = ("_bias", "_fast", "_forest", "_n_features", "_traverse")

    def __init__(self, forest: ForestIR) -> None:
        self._forest = forest
        self._n_features = forest.n_features
        self._bias = _compile.saabas_bias(forest)
        common = (
            forest.n_features,
            _compile.input_mode(forest),
            _compile.LINK_CODES[forest.link],
            forest.float32_sum,
            forest.sigmoid_scale,
            forest.base_margin,
            float(len(forest.trees)) if forest.average_output else 0.0,
        )
        # Reference traversal: full contribution matrices, and the kernel of last
        # resort for models the fast kernels cannot take.
        self._traverse = TraversalKernel(
            _compile.flatten_for_traversal(forest), *common, self._bias
        )
        layout = build_layout(forest)
        block_ok = layout.max_leaves <= MAX_BLOCK_LEAVES
        self._fast: FastKernel | None = None
        if block_ok or layout.finite_thresholds:
            self._fast = FastKernel(
                fast_kernel_arrays(layout),
                *common,
                layout.max_leaves > 32,
                block_ok,
                layout.finite_thresholds,
            )
        self._bind_kernels(self._fast, self._traverse, forest.n_features)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_lightgbm(cls, model_text: str, source: str = LGB_SOURCE) -> TreeEnsemble:
        """Load a LightGBM text model (``Booster.model_to_string()``), current or older format.

        ``source`` (a file name) starts every error message, with the line.
        """
        return cls(parse_lightgbm(model_text, source))

    @classmethod
    def from_xgboost_json(
        cls, json_text: str | bytes | bytearray, source: str = XGB_SOURCE
    ) -> TreeEnsemble:
        """Load an XGBoost JSON model (``save_model("x.json")`` / ``save_raw("json")``).

        ``source`` (a file name) starts every error message, with the JSON path.
        """
        return cls(parse_xgboost_json(json_text, source))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TreeEnsemble:
        """Load a model file: XGBoost JSON if it starts with ``{``, else LightGBM text."""
        data = Path(path).read_bytes()
        if data.lstrip()[:1] == b"{":
            return cls.from_xgboost_json(data, str(path))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(
                f"{path}: neither XGBoost JSON nor LightGBM text (byte {exc.start} is not UTF-8; "
                "binary formats such as XGBoost UBJSON are not read: save the model as JSON)"
            ) from None
        return cls.from_lightgbm(text, str(path))

    # -- metadata -----------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._forest.feature_names

    @property
    def n_trees(self) -> int:
        return len(self._forest.trees)

    @property
    def objective(self) -> str:
        return self._forest.objective

    @property
    def source(self) -> str:
        """``"lightgbm"`` or ``"xgboost"``."""
        return self._forest.source

    @property
    def max_leaves(self) -> int:
        return self._forest.max_leaves()

    @property
    def expected_value(self) -> float:
        """Saabas bias in raw-score units: the score before any feature is seen.

        Like ``raw_score`` for LightGBM ``average_output`` (rf) models, it is not
        divided by the number of trees.
        """
        return self._bias

    def __repr__(self) -> str:
        return (
            f"TreeEnsemble(source={self.source!r}, objective={self.objective!r}, "
            f"n_trees={self.n_trees}, n_features={self.n_features}, max_leaves={self.max_leaves})"
        )

    # -- prediction ---------------------------------------------------------------------
    # predict(X, raw_score=False), predict_one(row, raw_score=False) and
    # predict_with_reasons(X, top_k, raw_score=False) come from EnsembleBase
    # (kernels/_fast.pyx).

    def contributions(self, X: npt.NDArray[Any]) -> F64Array:
        """Full Saabas attribution matrix (n, n_features + 1); last column is the bias.

        Each row sums to the raw score (up to float rounding).
        """
        x = check_matrix(X, self._n_features)
        out = np.empty((x.shape[0], self._n_features + 1), dtype=np.float64)
        if x.shape[0]:
            self._traverse.contributions(x, out)
        return out

    @property
    def kernel_name(self) -> str:
        """Which kernel serves batches: ``block``, ``row-traverse`` or ``reference``."""
        if self._fast is None:
            return "reference"
        return "block" if self._fast.block_ok else "row-traverse"

    def _predict_kernel(self, X: npt.NDArray[Any], kernel: str, raw_score: bool = False) -> F64Array:
        """Score with a named kernel (tests/benchmarks): block, row or reference."""
        x = check_matrix(X, self._n_features)
        out = np.empty(x.shape[0], dtype=np.float64)
        if kernel == "reference":
            self._traverse.predict(x, out, raw_score)
        elif self._fast is None:
            raise ValueError(f"no fast kernel for this model (kernel={kernel!r})")
        elif kernel == "block" and self._fast.block_ok:
            self._fast.predict_path(x, out, raw_score, 1)
        elif kernel == "row":
            self._fast.predict_path(x, out, raw_score, 2)
        else:
            raise ValueError(f"kernel {kernel!r} not available for this model")
        return out

    def reason_names(self, feature_idx: npt.NDArray[np.int32]) -> list[list[str]]:
        """Map a (n, k) index matrix from predict_with_reasons to feature names (drops -1)."""
        names = self._forest.feature_names
        return [[names[j] for j in row if j >= 0] for row in np.asarray(feature_idx).tolist()]

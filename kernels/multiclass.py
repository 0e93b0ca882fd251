"""MulticlassEnsemble: a multiclass LightGBM model served as one compiled forest per class.

The kernels score one output per row; a K-class LightGBM model is K
interleaved forests (tree ``i`` adds to class ``i % K``), so each class is
compiled as its own :class:`TreeEnsemble` over the same rows and the K raw
scores are combined as LightGBM does: softmax for ``multiclass``, an
independent sigmoid per class for ``multiclassova``. Probabilities match
``Booster.predict`` bit for bit (same tree order, same libm exp).

Where the classes are grades, :meth:`predict_proba` gives each grade's
probability and :meth:`predict_class` the most likely one; reason codes are
per class (:meth:`predict_with_reasons`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kernels._lightgbm import DEFAULT_SOURCE, SOFTMAX, parse_lightgbm_classes
from kernels._softmax import softmax_rows
from kernels._validate import check_matrix
from kernels.ensemble import TreeEnsemble
from kernels.errors import InputShapeError

__all__ = ["MulticlassEnsemble"]

F64Array = npt.NDArray[np.float64]


class MulticlassEnsemble:
    """A compiled K-class LightGBM model (``objective=multiclass`` or ``multiclassova``)."""

    __slots__ = ("_classes", "_kind", "_n_features")

    def __init__(self, classes: tuple[TreeEnsemble, ...], kind: str) -> None:
        if len(classes) < 2 or len({c.n_features for c in classes}) != 1:
            raise InputShapeError("a multiclass ensemble needs >= 2 forests over the same features")
        self._classes = classes
        self._kind = kind
        self._n_features = classes[0].n_features

    @classmethod
    def from_lightgbm(cls, model_text: str, source: str = DEFAULT_SOURCE) -> MulticlassEnsemble:
        """Load a multiclass LightGBM text model; ``source`` names the file in errors."""
        forests, kind = parse_lightgbm_classes(model_text, source)
        return cls(tuple(TreeEnsemble(f) for f in forests), kind)

    @property
    def n_classes(self) -> int:
        return len(self._classes)

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._classes[0].feature_names

    @property
    def kind(self) -> str:
        """``"softmax"`` (probabilities sum to 1) or ``"ova"`` (one sigmoid per class)."""
        return self._kind

    @property
    def classes(self) -> tuple[TreeEnsemble, ...]:
        """One compiled forest per class (its raw score is the class's raw score)."""
        return self._classes

    def predict_raw(self, X: npt.NDArray[Any]) -> F64Array:
        """Raw scores (n, K), as ``Booster.predict(X, raw_score=True)``."""
        x = check_matrix(X, self._n_features)
        return np.ascontiguousarray(
            np.stack([c.predict(x, raw_score=True) for c in self._classes], axis=1)
        )

    def predict_proba(self, X: npt.NDArray[Any]) -> F64Array:
        """Class probabilities (n, K), as ``Booster.predict(X)``."""
        x = check_matrix(X, self._n_features)
        # predict() (not raw) divides average_output (rf) models by the
        # iteration count before the link, as LightGBM's Predict does.
        per_class = np.ascontiguousarray(
            np.stack([c.predict(x) for c in self._classes], axis=1)
        )
        if self._kind != SOFTMAX:
            return per_class
        out = np.empty_like(per_class)
        if per_class.shape[0]:
            softmax_rows(per_class, out)
        return out

    def predict_class(self, X: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """The most probable class per row (ties to the lower class index)."""
        best: npt.NDArray[np.int64] = np.argmax(self.predict_proba(X), axis=1).astype(np.int64)
        return best

    def predict_with_reasons(
        self, X: npt.NDArray[Any], top_k: int, class_index: int
    ) -> tuple[F64Array, npt.NDArray[np.int32], F64Array]:
        """Class ``class_index``'s raw score with its top-k features (as TreeEnsemble's)."""
        if not (isinstance(class_index, int) and 0 <= class_index < self.n_classes):
            raise InputShapeError(
                f"class_index must be an int in [0, {self.n_classes}), got {class_index!r}"
            )
        return self._classes[class_index].predict_with_reasons(X, top_k, raw_score=True)

    def __repr__(self) -> str:
        return (
            f"MulticlassEnsemble(kind={self._kind!r}, n_classes={self.n_classes}, "
            f"n_trees={sum(c.n_trees for c in self._classes)}, n_features={self._n_features})"
        )

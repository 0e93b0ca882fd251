"""Per-row cost of the formats added for models trained elsewhere (issue 12).

``python -m kernels.bench_formats``: a binary LightGBM model (the baseline),
the same model in the older text format, a 3-class LightGBM model served as
class probabilities, and an XGBoost model with native categorical splits;
each scored by the kernels and by its own library (one thread), best of
several rounds, with the largest difference between the two.
Like ``kernels.bench`` this imports LightGBM/XGBoost; the package does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from kernels import MulticlassEnsemble, TreeEnsemble

Scorer = Callable[[np.ndarray], Any]


def _best(f: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def _data(n: int, nf: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, nf))
    X[rng.random(X.shape) < 0.05] = np.nan
    X[:, 3] = rng.integers(0, 30, n)
    X[:, 7] = rng.integers(0, 12, n)
    signal = np.nan_to_num(X[:, :6]) @ rng.normal(size=6) + np.where(X[:, 3] % 4 == 0, 1.0, -0.3)
    binary = (signal + rng.normal(size=n) > 0).astype(int)
    grades = np.digitize(signal, np.quantile(signal, [0.4, 0.75]))
    return X, binary, grades


def _older(text: str) -> str:
    """What LightGBM 2.0 wrote: no tree_sizes, version, node values or 'end of trees'."""
    head = text.split("end of trees", maxsplit=1)[0]
    drop = ("tree_sizes=", "version=", "internal_value=")
    return "\n".join(line for line in head.split("\n") if not line.startswith(drop))


def _lightgbm_rows(X: np.ndarray, binary: np.ndarray, grades: np.ndarray) -> list[tuple[str, Scorer, Scorer]]:
    import lightgbm as lgb

    params = {"num_leaves": 31, "verbose": -1, "num_threads": 1, "seed": 1, "learning_rate": 0.1}
    b = lgb.train({**params, "objective": "binary"}, lgb.Dataset(X, binary, categorical_feature=[3, 7]), 300)
    old = lgb.Booster(model_str=_older(b.model_to_string()))
    m = lgb.train({**params, "objective": "multiclass", "num_class": 3},
                  lgb.Dataset(X, grades, categorical_feature=[3, 7]), 100)
    ours = TreeEnsemble.from_lightgbm(b.model_to_string())
    ours_old = TreeEnsemble.from_lightgbm(_older(b.model_to_string()))
    ours_multi = MulticlassEnsemble.from_lightgbm(m.model_to_string())
    return [
        ("lightgbm binary 300 trees (baseline)", ours.predict, lambda Z: b.predict(Z, num_threads=1)),
        ("lightgbm binary, older text format", ours_old.predict, lambda Z: old.predict(Z, num_threads=1)),
        ("lightgbm 3-class, 100 iterations", ours_multi.predict_proba, lambda Z: m.predict(Z, num_threads=1)),
    ]


def _xgboost_row(X: np.ndarray, binary: np.ndarray) -> tuple[str, Scorer, Scorer]:
    import pandas as pd
    import xgboost as xgb

    df = pd.DataFrame({f"x{j}": X[:, j] for j in range(X.shape[1])})
    for c in (3, 7):
        codes = np.nan_to_num(X[:, c], nan=-1).astype(int)
        df[f"x{c}"] = pd.Categorical.from_codes(codes, categories=list(range(int(codes.max()) + 1)))
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 0, "grow_policy": "lossguide",
              "max_leaves": 31, "max_cat_to_onehot": 1, "nthread": 1, "seed": 1}
    booster = xgb.train(params, xgb.DMatrix(df, binary, enable_categorical=True), 300)
    ours = TreeEnsemble.from_xgboost_json(bytes(booster.save_raw("json")))
    return "xgboost categorical splits, 300 trees", ours.predict, booster.inplace_predict


def main() -> None:
    n = 20_000
    X, binary, grades = _data(n, 20)
    rows = [*_lightgbm_rows(X, binary, grades), _xgboost_row(X, binary)]
    print(f"{'model':40s} {'kernels us/row':>15s} {'library us/row':>15s} {'x':>6s}  max|err|")
    for name, ours, lib in rows:
        err = float(np.max(np.abs(np.asarray(ours(X)) - np.asarray(lib(X)))))
        t_ours = _best(partial(ours, X), 7) / n * 1e6
        t_lib = _best(partial(lib, X), 3) / n * 1e6
        print(f"{name:40s} {t_ours:15.3f} {t_lib:15.3f} {t_lib / t_ours:6.1f}  {err:.1e}")


if __name__ == "__main__":
    main()

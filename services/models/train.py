"""``creditauth model train``: LightGBM on the offline data, gated on kernel parity."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from features import FeatureSettings
from features.catalog import CATEGORICAL_COLUMNS
from features.training import MODEL_COLUMNS, training_frame
from kernels import TreeEnsemble, check_parity
from services.errors import ModelError
from services.models.artifact import PARITY_TOLERANCE, models_dir

PARAMS: dict[str, object] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 2,
    "seed": 7,
    "deterministic": True,
}


@dataclass(frozen=True)
class TrainReport:
    version: str
    path: Path
    rows: int
    trees: int
    auc_holdout: float
    default_rate: float
    parity_max_abs_error: float


def auc(y: npt.NDArray[np.int8], score: npt.NDArray[np.float64]) -> float:
    """Area under the ROC curve by ranks (ties averaged)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    s = score[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def train_model(
    settings: FeatureSettings,
    *,
    rounds: int = 400,
    progress: Callable[[int], None] | None = None,
) -> TrainReport:
    import lightgbm as lgb

    x, y = training_frame(settings)
    if len(y) < 1000:
        raise ModelError(f"only {len(y)} training rows; generate a larger population")
    rng = np.random.default_rng(11)
    holdout = rng.random(len(y)) < 0.2
    cats = [MODEL_COLUMNS.index(c) for c in CATEGORICAL_COLUMNS]
    train_set = lgb.Dataset(
        x[~holdout],
        y[~holdout],
        feature_name=list(MODEL_COLUMNS),
        categorical_feature=cats,
        free_raw_data=False,
    )
    valid_set = lgb.Dataset(x[holdout], y[holdout], reference=train_set)
    callbacks: list[Callable[..., None]] = [lgb.early_stopping(40, verbose=False)]
    if progress is not None:
        callbacks.append(lambda env: progress(1))
    booster = lgb.train(PARAMS, train_set, num_boost_round=rounds, valid_sets=[valid_set], callbacks=callbacks)
    text = booster.model_to_string(num_iteration=booster.best_iteration or None)
    booster = lgb.Booster(model_str=text)

    x_hold = np.ascontiguousarray(x[holdout])
    expected = np.asarray(booster.predict(x_hold), dtype=np.float64)
    score_auc = auc(y[holdout], expected)
    # Parity gate: the compiled kernel must reproduce LightGBM on held-out rows.
    ensemble = TreeEnsemble.from_lightgbm(text, source="the model just trained")
    sample = x_hold[:5000]
    report = check_parity(ensemble, sample, expected[:5000], tolerance=PARITY_TOLERANCE)
    if not report.passed:
        raise ModelError(f"kernel parity gate failed; artifact not written: {report}")

    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    version = f"lgbm-{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S}-{digest}"
    out = models_dir(settings.data_dir) / version
    out.mkdir(parents=True)
    (out / "model.txt").write_text(text)
    np.savez_compressed(out / "reference.npz", x=sample, expected=expected[:5000])
    manifest = {
        "version": version,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "feature_names": list(MODEL_COLUMNS),
        "categorical_features": list(CATEGORICAL_COLUMNS),
        "params": PARAMS,
        "trees": booster.num_trees(),
        "training_rows": int((~holdout).sum()),
        "holdout_rows": int(holdout.sum()),
        "auc_holdout": score_auc,
        "default_rate": float(y.mean()),
        "parity": {
            "max_abs_error": report.max_abs_error,
            "rows": report.rows,
            "tolerance": PARITY_TOLERANCE,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (models_dir(settings.data_dir) / "LATEST").write_text(version)
    return TrainReport(version, out, len(y), booster.num_trees(), score_auc, float(y.mean()), report.max_abs_error)

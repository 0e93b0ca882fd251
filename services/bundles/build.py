"""Make bundles: from the project's own trained model, or from a model trained elsewhere.

Either way the model is compiled and gated on parity against the source library's
predictions on a reference sample, and the policy is validated against this model,
before anything is written: a bundle that would be refused at validate is never built.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from features import FEATURE_SERVICE
from services.bundles.manifest import (
    FEATURES,
    MODEL_FILES,
    POLICY,
    REASONS,
    REFERENCE_EXPECTED,
    REFERENCE_X,
    TRAINING,
    Bundle,
    BundleError,
    Problem,
    assemble,
    canonical,
    sha256,
)
from services.bundles.validate import (
    CATALOGUE,
    Progress,
    compile_model,
    parity,
    policy_from_text,
    servable_problems,
    source_predict,
)
from services.errors import ConfigError
from services.models.artifact import PDModel
from services.policy.config import DEFAULT_POLICY

SAMPLE_ROWS = 2000  # reference rows an imported model is gated on (and every load re-checks)


@dataclass(frozen=True)
class ModelSource:
    """A model file and what it needs to become a bundle."""

    kind: str
    data: bytes
    where: str
    version: str
    features: tuple[str, ...]  # catalogue names, in the model's column order
    training: dict[str, Any]


def _npy(a: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def make_bundle(
    source: ModelSource,
    ensemble: PDModel,
    *,
    x: npt.NDArray[np.float32],
    expected: npt.NDArray[np.float64],
    policy_path: Path | None,
    tags: Mapping[str, int] | None,
    progress: Progress | None = None,
) -> Bundle:
    """Gate, check the policy against the model, and assemble the files and manifest."""
    step = progress or (lambda _s: None)
    problems = servable_problems(ensemble, source.where)
    if problems:
        raise BundleError(problems)
    step("parity")
    report = parity(ensemble, x, expected, source.where)
    step("policy")
    path = policy_path or DEFAULT_POLICY
    try:
        policy_bytes = path.read_bytes()
    except OSError as exc:
        raise BundleError([Problem(str(path), "<file>", f"cannot read policy: {exc}")]) from exc
    config, policy = policy_from_text(policy_bytes, str(path), source.features, tags)
    model_file = MODEL_FILES[source.kind]
    files = {
        model_file: source.data,
        POLICY: policy_bytes,
        FEATURES: canonical({"feature_service": FEATURE_SERVICE, "model_features": list(ensemble.feature_names),
                             "features": list(source.features)}),
        REASONS: canonical([list(r) for r in policy.reason_table]),
        TRAINING: canonical(source.training),
        REFERENCE_X: _npy(np.ascontiguousarray(x, dtype=np.float32)),
        REFERENCE_EXPECTED: _npy(np.asarray(expected, dtype=np.float64)),
    }
    summary = {
        "model": {"kind": source.kind, "file": model_file, "version": source.version, "objective": ensemble.objective,
                  "trees": ensemble.n_trees, "features": ensemble.n_features, "sha256": sha256(source.data)},
        "policy": {"file": POLICY, "version": config.version},
        "feature_service": FEATURE_SERVICE,
        "parity": {"rows": report.rows, "max_abs_error": report.max_abs_error},
    }
    step("assemble")
    return assemble(files, summary)


# -- the project's own model ----------------------------------------------------------
def from_artifact(data_dir: Path, version: str, *, policy_path: Path | None, tags: Mapping[str, int] | None,
                  window: tuple[str, str] | None = None, progress: Progress | None = None) -> Bundle:
    """A bundle of a model ``creditauth model train`` wrote, with its held-out reference rows."""
    from services.models import load_artifact

    artifact = load_artifact(data_dir, version)  # compiled and parity-gated on load
    data = (artifact.path / "model.txt").read_bytes()
    ref = np.load(artifact.path / "reference.npz", allow_pickle=False)
    m = artifact.manifest
    training = {
        "source": "creditauth model train",
        "model_version": artifact.version,
        "created_at": m.get("created_at"),
        "data_window": dict(zip(("start", "end"), window or data_window(data_dir), strict=True)),
        "training_rows": m.get("training_rows"),
        "holdout": {"rows": m.get("holdout_rows"), "auc": m.get("auc_holdout"), "default_rate": m.get("default_rate")},
        "params": m.get("params"),
    }
    src = ModelSource("lightgbm", data, str(artifact.path / "model.txt"), artifact.version,
                      artifact.feature_names, training)
    return make_bundle(src, artifact.ensemble, x=ref["x"], expected=ref["expected"], policy_path=policy_path,
                       tags=tags, progress=progress)


def data_window(data_dir: Path) -> tuple[str, str]:
    """First and last feature timestamp of the offline tables the model was trained on."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = data_dir / "offline" / "merchant_flows.parquet"
    try:
        col = pq.read_table(path, columns=["event_timestamp"])["event_timestamp"]
    except (OSError, KeyError) as exc:
        raise ConfigError(f"{path}: cannot read the data window: {exc}") from exc
    lo, hi = pc.min(col).as_py(), pc.max(col).as_py()
    return (lo.isoformat() if lo else "", hi.isoformat() if hi else "")


# -- a model trained elsewhere --------------------------------------------------------
def detect_kind(data: bytes) -> str:
    """LightGBM text, XGBoost JSON, or a scorecard (JSON with a top-level ``scorecard`` key)."""
    if data.lstrip()[:1] != b"{":
        return "lightgbm"
    try:
        doc = json.loads(data)
    except ValueError:
        return "xgboost"  # the XGBoost loader names what is wrong with it
    return "scorecard" if isinstance(doc, dict) and "scorecard" in doc else "xgboost"


def names_line(kind: str, data: bytes) -> tuple[int, str]:
    """Where a model file names its features: the ``feature_names=`` line (LightGBM), or the
    JSON path (XGBoost, whose JSON is often one line)."""
    if kind == "xgboost":
        return 0, "learner.feature_names"
    if kind == "scorecard":
        return 0, "feature_names"
    for i, line in enumerate(data.splitlines(), 1):
        if line.startswith(b"feature_names="):
            return i, "feature_names"
    return 0, "feature_names"


def map_features(
    model_names: tuple[str, ...], mapping: Mapping[str, str], where: str, at: tuple[int, str] = (0, "feature_names")
) -> tuple[str, ...]:
    """Each model feature's catalogue name (by name, or through ``mapping``); unknown ones listed."""
    mapped = tuple(mapping.get(n, n) for n in model_names)
    line, field = at
    problems = []
    unknown = [f"{n} -> {m}" if n != m else n for n, m in zip(model_names, mapped, strict=True) if m not in CATALOGUE]
    if unknown:
        problems.append(Problem(where, field, f"unknown to the feature catalogue: {unknown}; the catalogue "
                                f"serves {list(CATALOGUE)} (map a name with --map MODEL=CATALOGUE)", line))
    missing = sorted(set(mapping) - set(model_names))
    if missing:
        problems.append(Problem(where, field, f"--map names features the model does not have: {missing}", line))
    dup = sorted({m for m in mapped if mapped.count(m) > 1})
    if dup:
        problems.append(Problem(where, field, f"several model features map to {dup}", line))
    if problems:
        raise BundleError(problems)
    return mapped


def import_model(
    path: Path,
    *,
    policy_path: Path | None,
    tags: Mapping[str, int] | None,
    sample: Path | None = None,
    mapping: Mapping[str, str] | None = None,
    training: dict[str, Any] | None = None,
    version: str | None = None,
    progress: Progress | None = None,
    catalogue_sample: npt.NDArray[np.float32] | None = None,
) -> Bundle:
    """A bundle of a LightGBM text or XGBoost JSON model trained elsewhere.

    ``sample``: a Parquet/CSV file of reference rows (columns by name); else ``catalogue_sample``, rows
    in catalogue order (``features.training.MODEL_COLUMNS``) from which the model's columns
    are picked by name. The source library predicts the reference at import.
    """
    step = progress or (lambda _s: None)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError([Problem(str(path), "<file>", f"cannot read model: {exc}")]) from exc
    kind = detect_kind(data)
    step("model")
    ensemble = compile_model(kind, data, str(path))
    features = map_features(tuple(ensemble.feature_names), mapping or {}, str(path), names_line(kind, data))
    if sample is not None:
        x = read_sample(sample, tuple(ensemble.feature_names), features)
    else:
        x = _pick(catalogue_sample, features, str(path))
    step("source library")
    expected = source_predict(kind, data, x)
    meta = {"source": "import", "file": path.name, "library": kind, **(training or {})}
    src = ModelSource(kind, data, str(path), version or f"{kind}-{sha256(data)[:12]}", features, meta)
    return make_bundle(src, ensemble, x=x, expected=expected, policy_path=policy_path, tags=tags, progress=progress)


def _pick(rows: npt.NDArray[np.float32] | None, features: tuple[str, ...], where: str) -> npt.NDArray[np.float32]:
    from features.training import MODEL_COLUMNS

    if rows is None:
        raise BundleError([Problem(where, "reference", "no reference sample: pass --sample or a data dir with data")])
    missing = [f for f in features if f not in MODEL_COLUMNS]
    if missing:
        raise BundleError([Problem(where, "reference", f"the training frame lacks {missing}: pass --sample")])
    cols = [MODEL_COLUMNS.index(f) for f in features]
    return np.ascontiguousarray(rows[:SAMPLE_ROWS][:, cols], dtype=np.float32)


def read_training(path: Path | None) -> dict[str, Any]:
    """Training metadata for an imported model (data window, holdout metrics), a JSON object."""
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError([Problem(str(path), "<json>", f"unreadable: {exc}", getattr(exc, "lineno", 0))]) from exc
    if not isinstance(doc, dict):
        raise BundleError([Problem(str(path), "<json>", "training metadata must be a JSON object")])
    return doc


def read_sample(path: Path, model_names: tuple[str, ...], features: tuple[str, ...]) -> npt.NDArray[np.float32]:
    """Reference rows from a Parquet or CSV file whose columns are named by catalogue or model name."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        table = pacsv.read_csv(path) if path.suffix.lower() == ".csv" else pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise BundleError([Problem(str(path), "<file>", f"cannot read the reference sample: {exc}")]) from exc
    cols, missing = [], []
    for model_name, name in zip(model_names, features, strict=True):
        col = name if name in table.column_names else model_name
        if col not in table.column_names:
            missing.append(name)
            continue
        cols.append(table[col].cast(pa.float32()).to_numpy(zero_copy_only=False))
    if missing:
        raise BundleError([Problem(str(path), "columns", f"the sample lacks the model's features {missing}")])
    return np.ascontiguousarray(np.stack(cols, axis=1)[:SAMPLE_ROWS], dtype=np.float32)

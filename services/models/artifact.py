"""Versioned model artifacts on disk.

    <data_dir>/models/<version>/model.txt       LightGBM text model (the source of truth)
    <data_dir>/models/<version>/manifest.json   features, metrics, parity report
    <data_dir>/models/<version>/reference.npz   held-out rows and LightGBM's predictions
    <data_dir>/models/LATEST                    the version served by default

Loading compiles the model into the Cython kernel and re-runs the parity gate
on the stored reference rows, so a kernel build that disagrees with LightGBM
can never serve (checked once per load, not per request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from kernels import KernelError, TreeEnsemble, check_parity
from services.errors import ModelError

PARITY_TOLERANCE = 1e-9


def models_dir(data_dir: Path) -> Path:
    return data_dir / "models"


class PDModel(Protocol):
    """What the decider scores with: a compiled ``TreeEnsemble`` or a ``ScorecardModel``.
    ``predict_with_reasons`` gives the PD, the model's ``top_k`` adverse features (-1: none)
    and what each contributed (positive: towards default)."""

    @property
    def feature_names(self) -> Any: ...
    @property
    def n_features(self) -> int: ...
    @property
    def n_trees(self) -> int: ...
    @property
    def objective(self) -> str: ...

    def predict(self, x: npt.NDArray[Any], raw_score: bool = False) -> npt.NDArray[np.float64]: ...

    def predict_with_reasons(self, x: npt.NDArray[Any], top_k: int) -> tuple[Any, Any, Any]: ...


@dataclass(frozen=True)
class ModelArtifact:
    version: str
    path: Path
    ensemble: PDModel
    feature_names: tuple[str, ...]
    manifest: dict[str, Any]


def resolve_version(data_dir: Path, version: str) -> str:
    if version != "latest":
        return version
    latest = models_dir(data_dir) / "LATEST"
    if not latest.exists():
        raise ModelError(f"no model under {models_dir(data_dir)}: run `creditauth model train` first")
    return latest.read_text().strip()


def load_artifact(data_dir: Path, version: str = "latest") -> ModelArtifact:
    version = resolve_version(data_dir, version)
    path = models_dir(data_dir) / version
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        text = (path / "model.txt").read_text()
        ref = np.load(path / "reference.npz")
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {version} at {path} is unreadable: {exc}") from exc
    try:
        ensemble = TreeEnsemble.from_lightgbm(text, source=str(path / "model.txt"))
        report = check_parity(ensemble, ref["x"], ref["expected"], tolerance=PARITY_TOLERANCE)
    except KernelError as exc:
        raise ModelError(f"model {version}: kernel refused it: {exc}") from exc
    if not report.passed:
        raise ModelError(f"model {version}: kernel parity gate failed: {report}")
    names = tuple(manifest["feature_names"])
    if names != tuple(ensemble.feature_names):
        raise ModelError(f"model {version}: manifest and model disagree on feature names")
    return ModelArtifact(version, path, ensemble, names, manifest)

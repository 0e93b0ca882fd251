"""Validate a bundle and load what serves from it: checksums, model, policy, parity gate.

The same checks run at ``creditauth bundle validate``, before ``promote`` moves a
deployment, and on every replica before it swaps a bundle in, so a bundle that was
tampered with (one byte), or whose model or policy is broken, never serves. Every problem
names the file (with the line and the field where there is one).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from features import MATRIX_COLUMNS, REQUEST_COLUMNS
from kernels import KernelError, ParityReport, TreeEnsemble, check_parity
from services.bundles.manifest import (
    FEATURES,
    POLICY,
    REASONS,
    REFERENCE_EXPECTED,
    REFERENCE_X,
    TRAINING,
    Bundle,
    BundleError,
    Problem,
)
from services.bundles.registry import Registry, checksum_problems
from services.errors import ConfigError
from services.models import ModelArtifact
from services.models.artifact import PARITY_TOLERANCE, PDModel
from services.models.scorecard import ScorecardError, ScorecardModel, reference_pd
from services.policy import Policy, PolicyConfig

CATALOGUE: tuple[str, ...] = (*MATRIX_COLUMNS, *REQUEST_COLUMNS)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class LoadedBundle:
    """A validated bundle, ready to serve: the compiled model and the parsed policy."""

    id: str
    manifest: dict[str, Any]
    artifact: ModelArtifact
    policy: PolicyConfig
    reason_table: tuple[tuple[str, str], ...]
    parity: ParityReport
    training: dict[str, Any]
    reference_x: npt.NDArray[np.float32]
    compiled_policy: Policy  # compiled for this model (and the catalogue's tags, when given)

    @property
    def model_version(self) -> str:
        return self.artifact.version

    @property
    def policy_version(self) -> str:
        return self.policy.version


def _json(bundle: Bundle, name: str, where: str) -> Any:
    try:
        return json.loads(bundle.files[name])
    except (ValueError, KeyError) as exc:
        line = getattr(exc, "lineno", 0)
        raise BundleError([Problem(where, "<json>", f"unreadable: {exc}", line)]) from exc


def compile_model(kind: str, data: bytes, where: str) -> PDModel:
    """The model file compiled into the kernel; a refusal names the file and line (or JSON path)."""
    try:
        if kind == "scorecard":
            return ScorecardModel.from_json(data)
        if kind == "lightgbm":
            return TreeEnsemble.from_lightgbm(data.decode("utf-8"), source=where)
        if kind == "xgboost":
            return TreeEnsemble.from_xgboost_json(data, source=where)
    except UnicodeDecodeError as exc:
        raise BundleError([Problem(where, "<file>", f"not UTF-8 text (byte {exc.start})")]) from exc
    except KernelError as exc:
        problem = _kernel_problem(str(exc), where)
        if "multiclass" in problem.message:
            problem = Problem(where, problem.field, f"{_MULTICLASS} ({problem.message})", problem.line)
        raise BundleError([problem]) from exc
    except ScorecardError as exc:
        field, _, message = str(exc).partition(": ")
        raise BundleError([Problem(where, field, message, exc.line)]) from exc
    raise BundleError([Problem(where, "model.kind", f"unknown model kind {kind!r}: lightgbm, xgboost or scorecard")])


_MULTICLASS = ("a multiclass model predicts a class, not a probability of default: the decider sets grade, "
               "limit and price from a PD, so it serves binary models and scorecards; train the grade model "
               "as binary (default or not) and let the policy's grades band its PD")


def _kernel_problem(message: str, where: str) -> Problem:
    """The kernels start a refusal with ``source:line:`` (LightGBM) or ``source: $.path`` (XGBoost)."""
    rest = message.removeprefix(f"{where}:")
    line, _, tail = rest.partition(":")
    if rest != message and line.isdigit():
        return Problem(where, "model", tail.strip(), int(line))
    return Problem(where, "model", rest.strip())


def _features(doc: Any, ensemble: PDModel, where: str) -> tuple[str, ...]:
    """The catalogue name of each model input, in the model's column order."""
    try:
        names = tuple(str(n) for n in doc["features"])
        model_names = tuple(str(n) for n in doc["model_features"])
    except (KeyError, TypeError) as exc:
        raise BundleError([Problem(where, "features", f"missing or malformed: {exc}")]) from exc
    problems = servable_problems(ensemble, where)
    if len(names) != ensemble.n_features or model_names != tuple(ensemble.feature_names):
        problems.append(Problem(where, "model_features", f"{len(names)} features listed, the model has "
                                f"{ensemble.n_features} ({list(ensemble.feature_names)[:5]}...)"))
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown:
        problems.append(Problem(where, "features", f"not in the feature catalogue: {unknown}"))
    if problems:
        raise BundleError(problems)
    return names


def servable_problems(ensemble: PDModel, where: str) -> list[Problem]:
    """What keeps the decider from serving this model: a model with no inputs (one with fewer
    than the decider's TOP_K gives fewer model reasons; the rest stay empty)."""
    if ensemble.n_features >= 1:
        return []
    return [Problem(where, "features", "the model reads no features")]


def _reference(bundle: Bundle, registry: Registry, bid: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    out = []
    for name in (REFERENCE_X, REFERENCE_EXPECTED):
        try:
            out.append(np.load(io.BytesIO(bundle.files[name]), allow_pickle=False))
        except (ValueError, OSError, KeyError) as exc:
            raise BundleError([Problem(registry.where(bid, name), "<npy>", f"unreadable: {exc}")]) from exc
    x, expected = out
    if x.ndim != 2 or expected.shape != (x.shape[0],) or x.dtype != np.float32:
        raise BundleError([Problem(registry.where(bid, REFERENCE_X), "<npy>",
                                   f"shape {x.shape} {x.dtype} against expected {expected.shape}")])
    return x, expected.astype(np.float64)


def parity(
    ensemble: PDModel, x: npt.NDArray[np.float32], expected: npt.NDArray[np.float64], where: str
) -> ParityReport:
    try:
        report = check_parity(ensemble, x, expected, tolerance=PARITY_TOLERANCE)
    except KernelError as exc:
        raise BundleError([Problem(where, "reference", str(exc))]) from exc
    if not report.passed:
        raise BundleError([Problem(where, "parity", str(report))])
    return report


def policy_from_text(
    data: bytes, where: str, features: tuple[str, ...], tags: Mapping[str, int] | None
) -> tuple[PolicyConfig, Policy]:
    """The policy parsed and compiled for this model; problems name file, line and field."""
    from services.policy.lines import validate_policy_text

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError([Problem(where, "<file>", f"not UTF-8 text (byte {exc.start})")]) from exc
    names: Collection[str] | None = None if tags is None else set(tags)
    config, problems = validate_policy_text(where, text, MATRIX_COLUMNS, names)
    if config is None:
        raise BundleError([Problem(p.file, p.field, p.message, p.line) for p in problems])
    # Without a catalogue the tags were not checked; ids only matter to compile, not to the table.
    index = dict(tags) if tags is not None else _rule_tags(config)
    try:
        policy = Policy(config, features, feature_columns=MATRIX_COLUMNS, tag_index=index, n_tags=len(index))
    except ConfigError as exc:
        raise BundleError([Problem(where, "rules", str(exc))]) from exc
    return config, policy


def _rule_tags(config: PolicyConfig) -> dict[str, int]:
    named = sorted({t for r in config.rules for c in r.when for t in ((c.tag,) if c.tag else (c.tags or ()))})
    return {t: i for i, t in enumerate(named)}


def _consistent(manifest: dict[str, Any], policy: Policy, reasons: Any, registry: Registry, bid: str) -> None:
    problems = []
    if manifest["policy"]["version"] != policy.version:
        problems.append(Problem(registry.where(bid, POLICY), "version",
                                f"{policy.version!r}, the manifest says {manifest['policy']['version']!r}"))
    if [tuple(r) for r in reasons] != [tuple(r) for r in policy.reason_table]:
        problems.append(Problem(registry.where(bid, REASONS), "reasons",
                                "differs from the table the policy gives this model"))
    if problems:
        raise BundleError(problems)


def _model_summary(manifest: dict[str, Any], where: str) -> dict[str, Any]:
    """The manifest's model entry, with the keys loading needs (a hand-made manifest may lack them)."""
    model = manifest.get("model")
    policy = manifest.get("policy")
    missing = [] if isinstance(model, dict) else ["model"]
    missing += [f"model.{k}" for k in ("kind", "file", "version") if isinstance(model, dict) and k not in model]
    missing += [] if isinstance(policy, dict) and "version" in policy else ["policy.version"]
    if missing or not isinstance(model, dict) or model["file"] not in manifest["files"]:
        raise BundleError([Problem(where, ", ".join(missing) or "model.file", "missing from the manifest")])
    return model


def load_bundle(
    registry: Registry,
    bundle_id: str,
    *,
    tags: Mapping[str, int] | None = None,
    source_check: bool = False,
    progress: Progress | None = None,
) -> LoadedBundle:
    """Read, check and compile a bundle (raises ``BundleError`` naming what is wrong)."""
    step = progress or (lambda _s: None)
    step("checksums")
    bundle = registry.read(bundle_id)
    problems = checksum_problems(registry, bundle_id, bundle)
    if problems:
        raise BundleError(problems)
    manifest = bundle.manifest
    model = _model_summary(manifest, registry.where(bundle_id, "manifest.json"))
    where = registry.where(bundle_id, model["file"])
    step("model")
    ensemble = compile_model(model["kind"], bundle.files[model["file"]], where)
    features = _features(_json(bundle, FEATURES, registry.where(bundle_id, FEATURES)), ensemble,
                         registry.where(bundle_id, FEATURES))
    step("parity")
    x, expected = _reference(bundle, registry, bundle_id)
    report = parity(ensemble, x, expected, where)
    if source_check:
        step("source library")
        _source_agrees(model["kind"], bundle.files[model["file"]], x, expected, where)
    step("policy")
    config, policy = policy_from_text(bundle.files[POLICY], registry.where(bundle_id, POLICY), features, tags)
    _consistent(manifest, policy, _json(bundle, REASONS, registry.where(bundle_id, REASONS)), registry, bundle_id)
    training = _json(bundle, TRAINING, registry.where(bundle_id, TRAINING))
    artifact = ModelArtifact(model["version"], Path(where), ensemble, features, {**training, "bundle": bundle_id})
    return LoadedBundle(bundle_id, manifest, artifact, config, policy.reason_table, report, training, x, policy)


def source_predict(kind: str, data: bytes, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """What the model's own library predicts for ``x`` (LightGBM, or XGBoost if installed; a
    scorecard's reference is its spec evaluated in numpy, independently of the kernel)."""
    if kind == "scorecard":
        return reference_pd(data, x)
    if kind == "lightgbm":
        import lightgbm as lgb

        return np.asarray(lgb.Booster(model_str=data.decode()).predict(x), dtype=np.float64)
    try:
        import xgboost as xgb
    except ImportError as exc:
        raise ConfigError("xgboost is not installed: it is needed to compute an XGBoost model's reference") from exc
    booster = xgb.Booster()
    booster.load_model(bytearray(data))
    return np.asarray(booster.inplace_predict(x, validate_features=False), dtype=np.float64)


def _source_agrees(kind: str, data: bytes, x: npt.NDArray[np.float32], expected: npt.NDArray[np.float64],
                   where: str) -> None:
    """The stored expectations are what the source library predicts (not just what we stored)."""
    try:
        got = source_predict(kind, data, x)
    except ConfigError:
        return  # the library is absent here: the kernel gate above still ran
    worst = float(np.max(np.abs(got - expected))) if len(x) else 0.0
    if not worst <= PARITY_TOLERANCE:
        raise BundleError([Problem(where, "reference", f"the source library now predicts differently "
                                   f"(max |err| {worst:.3e}): the reference is not this model's")])

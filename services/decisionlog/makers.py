"""What decides a logged decision again: a model and a policy, or a bundle from the registry.

``Makers`` loads each once: a model version from the data directory with a policy file, or
a bundle by id (its model, and its policy compiled for it, validated as a replica loads
it). A logged row names the bundle that decided it (``bundle_id``), so a log of a champion
and its challengers replays each row with its own bundle; a log from a replica that served
a model version without a registry replays by versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from features import MATRIX_COLUMNS, FeatureSettings, TagCatalog
from services.decisionlog.inputs import FEATURES_MISSING, VELOCITY_MISSING, Inputs, LoggedFeatures
from services.errors import ConfigError, ModelError
from services.models import load_artifact
from services.policy import Policy, load_policy
from services.policy.config import DEFAULT_POLICY
from services.schema.records import Rows, blank_decisions
from services.scoring.decider import Decider
from services.scoring.gather import Gathered
from services.scoring.stages import StageTimer

if TYPE_CHECKING:
    from services.bundles import Registry

# What decides one side of a comparison: a model version, a policy file, a bundle id; None:
# what each logged row names (the model, policy and bundle that made it).
Side = tuple[str | None, Path | None, str | None]
AS_LOGGED: Side = (None, None, None)


class Maker:
    """A model and a policy: what made a decision, or would make it."""

    def __init__(self, model_version: str, policy: Policy, decider: Decider, bundle_id: str = "") -> None:
        self.model_version = model_version
        self.policy = policy
        self.decider = decider
        self.bundle_id = bundle_id

    @property
    def name(self) -> str:
        where = f" (bundle {self.bundle_id[:12]})" if self.bundle_id else ""
        return f"model {self.model_version}, policy {self.policy.version}{where}"

    def decide(self, x: Inputs) -> Rows:
        """Decision records for ``x``, in order. Rows are decided in groups by the input that was
        missing, as the engine decided them (what is missing is one flag per decider call)."""
        out = blank_decisions(len(x))
        for missing in np.unique(x.missing).tolist():
            rows = np.flatnonzero(x.missing == missing)
            part = x if len(rows) == len(x) else x.take(rows)
            f = part.features
            if missing & FEATURES_MISSING:  # a failed read carries no tags (services.scoring.gather)
                f = LoggedFeatures(f.matrix, f.tags[:, :0], f.found, f.event_ts, f.view_ts, f.max_age_s,
                                   f.logged_age_s)
            gathered = Gathered(f, features_missing=bool(missing & FEATURES_MISSING),
                                velocity_missing=bool(missing & VELOCITY_MISSING))
            decided = blank_decisions(len(rows))
            self.decider.decide(part.requests, gathered, 0.0, StageTimer(), decided)
            out[rows] = decided
        return out


class Makers:
    """Makers by version (from the data directory and the policy files known) or by bundle
    (from ``registry``), each loaded once."""

    def __init__(
        self, settings: FeatureSettings, policy_files: Sequence[Path | None] = (), registry: Registry | None = None,
    ) -> None:
        self._data_dir = settings.data_dir
        self._registry = registry
        self._bundles: dict[str, Maker] = {}
        self.max_feature_age_s = settings.max_feature_age_s
        self._tags = {t.name: t.id for t in TagCatalog.load(settings)}
        self._policies: dict[str, Path] = {}
        for path in [*policy_files, DEFAULT_POLICY]:
            cfg = load_policy(path)
            self._policies.setdefault(cfg.version, path or DEFAULT_POLICY)
        self._made: dict[tuple[str, str], Maker] = {}

    def policy_file(self, version: str) -> Path:
        if version not in self._policies:
            known = ", ".join(sorted(self._policies))
            raise ConfigError(f"policy {version!r} is not among the policy files given ({known}); pass --policy FILE")
        return self._policies[version]

    def get(self, model_version: str, policy_file: Path | None) -> Maker:
        """The maker of a model version (or "latest") and a policy file (None: the packaged default)."""
        policy_file = policy_file or DEFAULT_POLICY
        key = (model_version, str(policy_file))
        if key not in self._made:
            artifact = load_artifact(self._data_dir, model_version)
            policy = Policy(load_policy(policy_file), artifact.feature_names, feature_columns=MATRIX_COLUMNS,
                            tag_index=self._tags, n_tags=len(self._tags))
            self._made[key] = Maker(artifact.version, policy, Decider(artifact, policy, self.max_feature_age_s))
        return self._made[key]

    def bundle(self, bundle_id: str) -> Maker:
        """The maker of a registry bundle (an id or a unique prefix), validated as a replica loads it."""
        from services.bundles import BundleError, load_bundle

        if self._registry is None:
            raise ConfigError(f"bundle {bundle_id[:12]}: no bundle registry given (pass --registry or set "
                              "bundle.registry)")
        try:
            bid = self._registry.resolve(bundle_id)
            if bid not in self._bundles:
                b = load_bundle(self._registry, bid, tags=self._tags)
                decider = Decider(b.artifact, b.compiled_policy, self.max_feature_age_s)
                self._bundles[bid] = Maker(b.artifact.version, b.compiled_policy, decider, bid)
        except BundleError as exc:
            raise ConfigError(f"bundle {bundle_id[:12]}: {exc}") from exc
        return self._bundles[bid]

    def for_side(self, side: Side, model_version: str, policy_version: str, bundle_id: str) -> Maker:
        """Who decides a logged row (its versions and bundle given) on ``side``: the side's
        bundle, else its model and policy, each defaulting to what made the row (its bundle
        when it names one and a registry is known)."""
        model, policy, bundle = side
        if bundle is not None:
            return self.bundle(bundle)
        if model is None and policy is None and bundle_id and self._registry is not None:
            return self.bundle(bundle_id)
        try:
            return self.get(model or model_version, policy or self.policy_file(policy_version))
        except (ModelError, ConfigError) as exc:
            if not bundle_id or self._registry is not None:
                raise
            raise ConfigError(f"{exc}; the row was decided by bundle {bundle_id[:12]}: pass --registry") from exc

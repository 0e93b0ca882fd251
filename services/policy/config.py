"""Policy configuration: a YAML document, validated once at load.

Unknown keys are rejected and every error names the file and the offending
key, so a risk team's typo fails the deployment instead of silently applying a
default.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.errors import ConfigError
from services.policy.exposure import ExposureConfig
from services.schema.currency import CURRENCIES
from services.schema.enums import PRODUCTS

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")
__all__ = [
    "DEFAULT_POLICY", "DEGRADED_INPUTS", "PRODUCTS", "AboveUsual", "DegradedConfig", "DegradedInput", "DegradedMode",
    "PolicyConfig", "load_policy",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Grade(_Strict):
    grade: str = Field(pattern=r"^[A-Z]$")
    max_pd: float = Field(gt=0, le=1)
    # Credit limit as a multiple of 30-day revenue.
    limit_multiple: float = Field(ge=0)
    # APR in basis points per term bucket (same length as apr_term_buckets).
    apr_bps: tuple[int, ...]


class ReasonMapping(_Strict):
    # fnmatch patterns over model feature names, e.g. "rev_cv_*".
    features: tuple[str, ...]
    code: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    description: str


class RuleCondition(_Strict):
    """One condition of a rule: a tag test (``tag``/``tags``) or a feature threshold (``feature``)."""

    tag: str | None = None
    tags: tuple[str, ...] | None = None
    feature: str | None = None
    op: Literal["has", "lacks", "any", "all", "none", "<", "<=", ">", ">=", "==", "!=", "is_missing", "not_missing"] = (
        "has"
    )
    value: float | None = None

    @model_validator(mode="after")
    def _shape(self) -> RuleCondition:
        kinds = [k for k in ("tag", "tags", "feature") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a condition names exactly one of 'tag', 'tags' or 'feature'")
        if self.tag is not None and self.op not in ("has", "lacks"):
            raise ValueError("'tag' takes op 'has' or 'lacks'")
        if self.tags is not None and (self.op not in ("any", "all", "none") or not self.tags):
            raise ValueError("'tags' takes a non-empty list and op 'any', 'all' or 'none'")
        if self.feature is not None:
            if self.op in ("has", "lacks", "any", "all", "none"):
                raise ValueError("'feature' takes a comparison op or 'is_missing'/'not_missing'")
            if (self.value is None) != (self.op in ("is_missing", "not_missing")):
                raise ValueError(f"op {self.op!r} {'takes no' if self.value is not None else 'needs a'} 'value'")
        return self


class PolicyRule(_Strict):
    """Refer or decline when every condition holds (early warnings, hard stops)."""

    name: str = Field(min_length=1)
    action: Literal["review", "decline"]
    code: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    description: str
    when: tuple[RuleCondition, ...] = Field(min_length=1)


class AboveUsual(_Strict):
    """Refer when the live counts run far above the merchant's own usual rate of applications
    (``apps_usual_per_day`` of the ``merchant_baseline`` view): ``apps_24h`` above
    ``max(min_apps_24h, multiple x usual)``, or ``apps_1h`` above
    ``max(min_apps_1h, multiple x usual / 24)``. No usual rate (too short a history): the
    rule does not fire, and the absolute thresholds still apply.
    """

    multiple: float = Field(5.0, gt=1, le=100)
    # Never fire at or below these counts, however rare the merchant's applications are
    # (one extra application of a merchant whose usual rate is nil is no burst).
    min_apps_24h: int = Field(5, ge=1)
    min_apps_1h: int | None = Field(3, ge=1)  # None: the hourly count is not compared
    code: str = Field("EW_VELOCITY_ABOVE_USUAL", pattern=r"^[A-Z][A-Z0-9_]*$")
    description: str = "Early warning: many more credit applications than the merchant's usual rate"


class VelocityLimits(_Strict):
    review_apps_1h: int = Field(5, ge=1)
    review_apps_24h: int = Field(20, ge=1)
    # Off unless the policy sets it: a policy file that does not name it decides as it did.
    above_usual: AboveUsual | None = None


DegradedInput = Literal["features", "velocity", "idempotency", "exposure", "controls"]
DEGRADED_INPUTS: tuple[DegradedInput, ...] = ("features", "velocity", "idempotency", "exposure", "controls")


class DegradedMode(_Strict):
    """What to answer when an input is missing: ``refer`` (REVIEW), ``cap`` (decide with
    what is there, the limit capped at ``cap_base_minor``) or ``unavailable`` (no decision:
    the item is answered ``UNAVAILABLE`` and a retry is decided once the input is back).

    Written as a word (``refer``) or a mapping (``{mode: cap, cap_base_minor: 500000}``).
    ``grade``: what a ``cap`` decision made without features is priced at (default the
    policy's last grade); decisions made with features keep their own grade.
    """

    mode: Literal["refer", "cap", "unavailable"]
    cap_base_minor: int | None = Field(None, ge=0)
    grade: str | None = Field(None, pattern=r"^[A-Z]$")

    @model_validator(mode="before")
    @classmethod
    def _word(cls, data: object) -> object:
        return {"mode": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _shape(self) -> DegradedMode:
        if (self.cap_base_minor is None) == (self.mode == "cap"):
            raise ValueError("mode 'cap' needs cap_base_minor; 'refer' and 'unavailable' take none")
        if self.grade is not None and self.mode != "cap":
            raise ValueError("'grade' applies to mode 'cap' only")
        return self


class DegradedInputs(_Strict):
    """A mode per input that can be missing; None: the defaults' (or the built-in) mode."""

    features: DegradedMode | None = None
    velocity: DegradedMode | None = None
    idempotency: DegradedMode | None = None
    # The exposure counters (only with caps in the policy): approvals that could not be reserved.
    exposure: DegradedMode | None = None
    # The operator controls, when the store has not confirmed the set in force for longer
    # than ``controls_max_age_s`` (a brake set meanwhile may be missing from it).
    controls: DegradedMode | None = None


# Built in: refer what lacks features or velocity; never decide afresh without
# idempotency (a retry must not get a different answer), so answer UNAVAILABLE; an
# approval whose exposure cannot be reserved could overdraw a cap, so refer it.
BUILTIN_DEGRADED = DegradedInputs(
    features=DegradedMode(mode="refer"), velocity=DegradedMode(mode="refer"),
    idempotency=DegradedMode(mode="unavailable"), exposure=DegradedMode(mode="refer"),
    controls=DegradedMode(mode="refer"),
)


class DegradedConfig(_Strict):
    defaults: DegradedInputs = BUILTIN_DEGRADED
    products: dict[str, DegradedInputs] = {}
    # How long the last confirmed set of operator controls keeps deciding while the store
    # cannot be reached (the controls poll about once a second): a short blip is not an
    # outage, a long one means a brake set meanwhile is not being applied.
    controls_max_age_s: float = Field(30.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _products(self) -> DegradedConfig:
        unknown = sorted(set(self.products) - set(PRODUCTS))
        if unknown:
            raise ValueError(f"products names unknown product(s) {unknown}; products are {list(PRODUCTS)}")
        return self

    def mode(self, product: str | None, name: DegradedInput) -> DegradedMode:
        """The mode for ``name`` missing on ``product`` (None: the defaults')."""
        override = self.products.get(product) if product is not None else None
        chosen = getattr(override, name, None) if override is not None else None
        if chosen is None:
            chosen = getattr(self.defaults, name) or getattr(BUILTIN_DEGRADED, name)
        assert isinstance(chosen, DegradedMode)
        return chosen


class PolicyConfig(_Strict):
    version: str = Field(min_length=1)
    base_currency: str = "CNY"
    # Units of base currency per unit of each currency (major units).
    fx_to_base: dict[str, float]
    grades: tuple[Grade, ...] = Field(min_length=1)
    apr_term_buckets: tuple[int, ...] = Field(min_length=1)
    review_pd: float = Field(gt=0, le=1)
    decline_pd: float = Field(gt=0, le=1)
    product_caps_base_minor: dict[str, int]
    min_limit_base_minor: int = Field(ge=0)
    velocity: VelocityLimits = VelocityLimits()
    on_stale_features: Literal["review", "ignore"] = "review"
    max_model_reasons: int = Field(4, ge=0, le=16)
    reasons: tuple[ReasonMapping, ...]
    rules: tuple[PolicyRule, ...] = ()
    # What is decided when an input is missing (store down, slow, breaker open).
    degraded: DegradedConfig = DegradedConfig()
    # Portfolio caps over a window, enforced across every replica (services.policy.exposure).
    exposure: ExposureConfig = ExposureConfig()

    @model_validator(mode="after")
    def _consistent(self) -> PolicyConfig:
        pds = [g.max_pd for g in self.grades]
        if pds != sorted(pds) or len(set(pds)) != len(pds):
            raise ValueError("grades must be ordered best first with increasing max_pd")
        if pds[-1] != 1.0:
            raise ValueError("the last grade must have max_pd 1.0 so every PD gets a grade")
        if self.review_pd > self.decline_pd:
            raise ValueError("review_pd must not exceed decline_pd")
        if list(self.apr_term_buckets) != sorted(self.apr_term_buckets):
            raise ValueError("apr_term_buckets must be increasing")
        for g in self.grades:
            if len(g.apr_bps) != len(self.apr_term_buckets):
                raise ValueError(f"grade {g.grade}: apr_bps needs {len(self.apr_term_buckets)} entries")
        codes = {c.code for c in CURRENCIES}
        missing = codes - set(self.fx_to_base)
        if missing:
            raise ValueError(f"fx_to_base lacks {sorted(missing)}")
        unknown = set(self.fx_to_base) - codes
        if unknown:
            raise ValueError(f"fx_to_base names currencies the service does not book: {sorted(unknown)}")
        if set(self.product_caps_base_minor) != set(PRODUCTS):
            raise ValueError(f"product_caps_base_minor must name exactly {list(PRODUCTS)}")
        names = [r.name for r in self.rules]
        if len(names) != len(set(names)):
            raise ValueError("rule names must be unique")
        self._check_degraded()
        self._check_above_usual()
        return self

    def _check_above_usual(self) -> None:
        """The relative rule's floors sit below the absolute thresholds: at or above them, every
        count the rule refers is one the absolute threshold refers already."""
        v, u = self.velocity, self.velocity.above_usual
        if u is None:
            return
        if u.min_apps_24h >= v.review_apps_24h:
            raise ValueError(f"velocity.above_usual.min_apps_24h {u.min_apps_24h} must be below "
                             f"review_apps_24h {v.review_apps_24h}")
        if u.min_apps_1h is not None and u.min_apps_1h >= v.review_apps_1h:
            raise ValueError(f"velocity.above_usual.min_apps_1h {u.min_apps_1h} must be below "
                             f"review_apps_1h {v.review_apps_1h} (null: no hourly test)")

    def _check_degraded(self) -> None:
        """Grades the modes name exist; a cap is never below the smallest offer the policy makes."""
        letters = {g.grade for g in self.grades}
        for product in (None, *self.degraded.products):
            for name in DEGRADED_INPUTS:
                mode = self.degraded.mode(product, name)
                where = f"degraded.{f'products.{product}' if product else 'defaults'}.{name}"
                if mode.grade is not None and mode.grade not in letters:
                    raise ValueError(f"{where}.grade {mode.grade!r} is not one of the grades")
                if mode.cap_base_minor is not None and mode.cap_base_minor < self.min_limit_base_minor:
                    raise ValueError(
                        f"{where}.cap_base_minor {mode.cap_base_minor} is below min_limit_base_minor "
                        f"{self.min_limit_base_minor}"
                    )

    def reason_for(self, feature: str) -> ReasonMapping | None:
        for r in self.reasons:
            if any(fnmatch.fnmatchcase(feature, p) for p in r.features):
                return r
        return None


def load_policy(path: Path | None = None) -> PolicyConfig:
    path = path or DEFAULT_POLICY
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read policy: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a policy must be a YAML mapping")
    try:
        return PolicyConfig.model_validate(raw)
    except ValidationError as exc:
        # Imported here: lines.py imports this module to validate whole files.
        from services.policy.lines import validation_problems

        problems = "; ".join(str(p) for p in validation_problems(path, exc))
        raise ConfigError(f"invalid policy: {problems}") from exc

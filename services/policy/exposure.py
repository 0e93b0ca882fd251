"""The policy's ``exposure:`` section: portfolio caps, validated at load (docs/exposure.md).

A cap bounds the approved amount (base-currency minor units) and/or count of each value
of one scope dimension over a sliding window: every industry, region, product or single
merchant has its own counter, or only the ``values`` listed. ``on_reached``: ``reduce``
grants what remains (referred when that is below the policy's minimum offer), ``refer``
turns the approval into a review. Counters are keyed by the cap's ``name``, so a new
policy version that keeps the name keeps the reservations made under the old one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.schema.enums import PRODUCTS

Scope = Literal["industry", "region", "product", "merchant"]


class ExposureCap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    scope: Scope
    # Only these values are capped (products by name, regions and industries by their
    # numeric code, merchants by id); empty: every value, each with its own counter.
    values: tuple[str, ...] = ()
    window_s: float = Field(gt=0, le=366 * 86400)
    max_amount_base_minor: int | None = Field(None, ge=0)
    max_count: int | None = Field(None, ge=0)
    on_reached: Literal["reduce", "refer"] = "reduce"
    code: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    description: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _values_as_text(cls, data: object) -> object:
        # Region and industry codes are written as numbers in YAML: keep them as their text.
        if isinstance(data, dict) and isinstance(data.get("values"), list | tuple):
            data = {**data, "values": tuple(str(v) for v in data["values"])}
        return data

    @model_validator(mode="after")
    def _shape(self) -> ExposureCap:
        if self.max_amount_base_minor is None and self.max_count is None:
            raise ValueError("a cap needs max_amount_base_minor, max_count or both")
        if self.scope == "product":
            unknown = sorted(set(self.values) - set(PRODUCTS))
            if unknown:
                raise ValueError(f"values names unknown product(s) {unknown}; products are {list(PRODUCTS)}")
        if self.scope in ("region", "industry"):
            bad = [v for v in self.values if not v.isdigit()]
            if bad:
                raise ValueError(f"{self.scope} values are numeric codes, got {bad}")
        return self


class ExposureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    caps: tuple[ExposureCap, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> ExposureConfig:
        names = [c.name for c in self.caps]
        if len(names) != len(set(names)):
            raise ValueError("exposure cap names must be unique (counters are keyed by name)")
        return self

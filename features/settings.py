"""Typed settings of the feature layer, validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

from features.stores.base import StoreKind


class FeatureSettings(BaseModel):
    """Where the feature data lives and how the online store is reached.

    ``data_dir`` holds everything the embedded defaults need: raw and offline
    parquet, the Feast registry and repo, and the SQLite online store.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field("creditauth", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    data_dir: Path = Path(".creditauth")
    online_store: StoreKind = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Bound on every online-store round trip: a slow or dead store becomes a
    # typed error within this time, never a hang.
    timeout_s: float = Field(0.5, gt=0, le=60)
    # Rows whose features are older than this are flagged stale.
    max_feature_age_s: float = Field(3 * 86_400.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("redis", "rediss") or not u.hostname:
            raise ValueError(f"redis_url must look like redis://host:port/db, got {v!r}")
        return v

    @property
    def repo_dir(self) -> Path:
        return self.data_dir / "feature_repo"

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "feature_repo" / "registry.db"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "feature_repo" / "online_store.db"

    @property
    def offline_dir(self) -> Path:
        return self.data_dir / "offline"

    @property
    def tag_catalog_path(self) -> Path:
        return self.data_dir / "offline" / "tag_catalog.json"

    def redis_host_port_db(self) -> tuple[str, int, int]:
        u = urlparse(self.redis_url)
        db = int(u.path.lstrip("/") or 0)
        return u.hostname or "127.0.0.1", u.port or 6379, db

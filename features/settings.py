"""Typed settings of the feature layer, validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    redis_url: str = "redis://127.0.0.1:6379/0"  # rediss://... for TLS; no password here
    # How feature rows sit in Redis: Feast's standard layout (a hash per entity, a field per
    # feature) or the packed one (a value per entity and view, Feast's custom store
    # features.stores.packed.feast_store; docs/packed-layout.md). Only read with redis.
    redis_layout: Literal["standard", "packed"] = "standard"
    # Redis Cluster (features.stores.redis.cluster): redis_url names a startup node, the slot
    # map is learned from it and then from any node; reads and scripts go per slot, pipelined
    # per node, following MOVED/ASK and failovers. Database 0 only. Keys whose scripts span
    # several keys (exposure caps, operator controls) carry a hash tag in this mode.
    redis_cluster: bool = False
    # Redis ACL user and a file holding its password (a mounted Kubernetes Secret); the
    # password never sits in a settings file, a ConfigMap or serveConfigV2.
    redis_username: str | None = None
    redis_password_file: Path | None = None
    # TLS (rediss://): the CA bundle the server is checked against (None: the system's),
    # and a client certificate and key where the server asks for one.
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    # Largest single Redis reply a connection accepts (its receive buffer never grows past
    # this): a hostile or broken server cannot make a replica allocate without bound.
    redis_max_reply_bytes: int = Field(64 << 20, ge=1 << 20, le=512 << 20)
    # Bound on every online-store round trip: a slow or dead store becomes a
    # typed error within this time, never a hang.
    timeout_s: float = Field(0.5, gt=0, le=60)
    # Rows whose features are older than this are flagged stale.
    max_feature_age_s: float = Field(3 * 86_400.0, gt=0)
    # Circuit breaker per online store (features.stores.breaker): after this many
    # consecutive failures calls fail at once, paying no timeout, until one probe per
    # interval succeeds; the interval starts at breaker_backoff_s and doubles after each
    # failed probe, up to breaker_max_backoff_s. A dead store then costs one timeout per
    # interval, not one per call.
    breaker_failures: int = Field(3, ge=1, le=1000)
    breaker_backoff_s: float = Field(0.5, gt=0, le=600)
    breaker_max_backoff_s: float = Field(30.0, gt=0, le=3600)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("redis", "rediss") or not u.hostname:
            raise ValueError(f"redis_url must look like redis://host:port/db, got {v!r}")
        return v

    @model_validator(mode="after")
    def _redis_security(self) -> FeatureSettings:
        # Only what can be told without the secret: the files themselves are read (and
        # checked) when a Redis client is built, on the machines that mount them.
        u = urlparse(self.redis_url)
        tls_files = [n for n in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
                     if getattr(self, n) is not None]
        if tls_files and u.scheme != "rediss":
            raise ValueError(f"{tls_files[0]} is set but redis_url is {u.scheme}://: use rediss:// for TLS")
        if self.redis_tls_key_file is not None and self.redis_tls_cert_file is None:
            raise ValueError("redis_tls_key_file is set without redis_tls_cert_file")
        if self.redis_password_file is not None and u.password:
            raise ValueError("redis_url carries a password and redis_password_file is set: keep only the file")
        if self.redis_username and u.username:
            raise ValueError("redis_url carries a user name and redis_username is set: keep one")
        if self.redis_cluster and self.redis_host_port_db()[2] != 0:
            raise ValueError("redis_cluster is set but redis_url names a database other than 0 (a cluster has only 0)")
        return self

    @model_validator(mode="after")
    def _breaker(self) -> FeatureSettings:
        if self.breaker_max_backoff_s < self.breaker_backoff_s:
            raise ValueError(
                f"breaker_max_backoff_s ({self.breaker_max_backoff_s:g}) is below breaker_backoff_s "
                f"({self.breaker_backoff_s:g})"
            )
        return self

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

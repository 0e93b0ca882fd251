"""Typed settings for the whole service, validated once at start-up.

Sources, later wins: defaults < YAML file (``--config``) < CLI flags. Only the
CLI entry point reads environment variables (``CREDITAUTH_CONFIG``); nothing
below it does. Unknown keys anywhere are an error naming the file and key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features import FeatureSettings
from services.auth.settings import SecuritySettings
from services.decisionlog.settings import DecisionLogSettings
from services.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServingSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    # Front-end processes sharing the port (SO_REUSEPORT).
    frontends: int = Field(1, ge=1, le=64)
    # Coalescing: a Ray call carries at most this many decisions ...
    max_batch_size: int = Field(2048, ge=1)
    # ... and, while earlier batches are in flight, waits at most this long to fill.
    max_wait_ms: float = Field(2.0, ge=0)
    # Ray calls in flight per front end; more arrivals gather into the next batch.
    max_inflight_batches: int = Field(2, ge=1, le=64)
    # Decisions queued per front end before new work is refused (RESOURCE_EXHAUSTED).
    max_queue: int = Field(50_000, ge=1)
    # Work expected to wait longer than this in the queue is refused (RESOURCE_EXHAUSTED).
    max_queue_wait_ms: float = Field(250.0, gt=0)
    # Deadline applied when the caller sets none.
    default_deadline_s: float = Field(5.0, gt=0)
    # How front ends reach replicas: "direct" (a socket to each Serve replica,
    # least-loaded routing), "handle" (a Serve DeploymentHandle call per batch),
    # or "local" (no Ray: the front end scores in process; small setups, benchmarks).
    channel: Literal["direct", "handle", "local"] = "direct"
    # Count every decided application in the velocity feature view (Feast push layout).
    record_velocity: bool = True
    # Replica-local cache of batch features (they change on materialization, not per
    # request): seconds a row may be served from memory, and how many merchants to keep.
    # Used with record_velocity (velocity then comes fresh from each record); 0 disables.
    feature_cache_ttl_s: float = Field(60.0, ge=0)
    feature_cache_entries: int = Field(200_000, ge=1)
    # The same application_id within this window gets the same decision (0 disables).
    idempotency_window_s: float = Field(900.0, ge=0)
    # Longest AuthorizeBatch accepted; the gRPC receive limit is sized to it, so a longer
    # message is refused by gRPC before it is buffered whole.
    max_batch_request: int = Field(10_000, ge=1, le=100_000)
    # RPCs served at once (streams count while open); more are refused RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = Field(4096, ge=1)
    # Connections older than this are closed gracefully so clients rebalance.
    max_connection_age_s: float = Field(300.0, gt=0)
    # On SIGTERM: stop taking work, let in-flight work finish for at most this long.
    drain_timeout_s: float = Field(10.0, gt=0)
    # Calls gRPC holds that the event loop has not taken yet: past the soft bound it refuses a
    # growing share (CANCELLED), past the hard one all (grpc.server.max_pending_requests[_hard_limit]).
    max_pending_rpcs: int = Field(128, ge=1)
    max_pending_rpcs_hard: int = Field(512, ge=1)
    # Unary/batch calls admitted at once; more are refused RESOURCE_EXHAUSTED with RetryInfo.
    max_calls_in_flight: int = Field(256, ge=1)
    # The event loop's lag (two probes running) past which new calls are refused.
    max_loop_lag_ms: float = Field(100.0, gt=0)

    @model_validator(mode="after")
    def _pending(self) -> ServingSettings:
        if self.max_pending_rpcs > self.max_pending_rpcs_hard:
            raise ValueError("max_pending_rpcs must not exceed max_pending_rpcs_hard")
        return self


class AutoscalingSettings(_Strict):
    """Serve autoscaling on queue depth (decisions in flight per replica)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_inflight_decisions: float = Field(512.0, gt=0)
    upscale_delay_s: float = Field(3.0, ge=0)
    downscale_delay_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class RaySettings(_Strict):
    # None: start a local single-node cluster (the embedded default).
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    namespace: str = "creditauth"
    app_name: str = "creditauth"
    replicas: int = Field(1, ge=1)
    # Concurrent batches one replica works on (the kernel and reads release the GIL).
    max_ongoing_requests: int = Field(4, ge=1)
    # CPUs Ray reserves per replica (0 lets replicas share small boxes).
    replica_num_cpus: float = Field(0.0, ge=0)
    # Nice value of the Ray workers of a cluster this process starts (a joined cluster's
    # nodes take theirs from RAY_worker_niceness, set in the manifests). Ray's own default,
    # 15, keeps its control plane responsive under CPU-bound tasks; here the worker is the
    # scoring replica, the request path, and at 15 any runnable nice-0 process on its core
    # (the front end, the raylet, Ray's agents) gets about 28x its share of the CPU.
    worker_niceness: int = Field(0, ge=0, le=19)
    # Where each replica's direct-channel socket listens. None: the replica's own address,
    # never every interface: the Ray node IP (ray.util.get_node_ip_address(), the pod IP
    # on Kubernetes), or 127.0.0.1 when services.stack starts its own local cluster (it
    # sets that in the settings it hands its replicas). "0.0.0.0" only where a replica
    # must be reached on several interfaces (it then registers the node IP).
    channel_bind_host: str | None = None
    # Ports the channel may bind, [first, last]; None: any free port.
    channel_ports: tuple[int, int] | None = None
    # The address a replica registers for front ends to dial: None, the bound one; "node",
    # the Ray node IP (with the bound port); or a host name.
    channel_advertise_host: str | None = None
    # Batches one replica scores at once on the direct channel; more are refused.
    channel_max_inflight: int = Field(8, ge=1)
    # The direct channel's peers prove they hold this secret (mutual HMAC-SHA256
    # challenge-response, services/runtime/channel/auth.py) before any frame is read: a
    # file of at least 16 random bytes, e.g. a mounted Kubernetes Secret. None: a stack
    # that starts its own local cluster makes a fresh one (0600, removed at exit); anywhere
    # else (a replica, a front end joining a cluster) the channel refuses to start ...
    channel_secret_file: Path | None = None
    # ... unless this says it may run in plaintext, unauthenticated (a warning at start).
    channel_plaintext: bool = False
    # Longest frame either side reads or sends; a longer length header closes the
    # connection before anything is allocated.
    channel_max_frame_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    autoscaling: AutoscalingSettings | None = None


class TelemetrySettings(_Strict):
    enabled: bool = True
    # OTLP/gRPC endpoint, e.g. "https://collector:4317" (TLS) or "http://127.0.0.1:4317"
    # (plaintext, loopback); None disables export.
    otlp_endpoint: str | None = None
    # CA bundle (PEM) the collector's certificate is checked against; None: the system's.
    otlp_ca_file: Path | None = None

    @model_validator(mode="after")
    def _otlp_secured(self) -> TelemetrySettings:
        url = self.otlp_endpoint
        if url is not None and url.startswith("http://"):
            host = (urlparse(url).hostname or "").lower()
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError(f"otlp_endpoint {url}: plaintext export only to loopback; use https:// (TLS)")
        return self
    # Port for the Prometheus scrape endpoint; 0 disables it.
    prometheus_port: int = Field(0, ge=0, le=65535)
    prometheus_host: str = "127.0.0.1"
    trace_sample_ratio: float = Field(0.01, ge=0, le=1)
    # Latency, batch and stage histograms record one RPC (one backend call) in this many: an
    # SDK histogram record costs ~4.6 us here, the largest part of telemetry's cost
    # per unary RPC. Counts (RPCs, decisions, errors) are always exact.
    histogram_sample_every: int = Field(4, ge=1, le=1000)
    # Process logs: text for a terminal, json (one object per line, with trace and span
    # ids) for a log pipeline (services/logs.py).
    log_format: Literal["text", "json"] = "text"


class BundleSettings(_Strict):
    """Serve a deployment from a bundle registry (docs/bundles.md) instead of
    ``model_version``/``policy_path``, and follow it: a promotion or rollback is loaded,
    gated and warmed off the hot path, then swapped in between batches."""

    # A directory, or any pyarrow.fs URI (s3://bucket/prefix, gs://..., a mounted volume).
    registry: str = Field(min_length=1)
    deployment: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # How often a replica reads the index version (one listing); "reload" asks at once.
    poll_interval_s: float = Field(5.0, gt=0, le=3600)


class Settings(_Strict):
    features: FeatureSettings = FeatureSettings()
    serving: ServingSettings = ServingSettings()
    ray: RaySettings = RaySettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    security: SecuritySettings = SecuritySettings()
    decision_log: DecisionLogSettings = DecisionLogSettings()
    model_version: str = "latest"
    # None: the packaged default policy.
    policy_path: Path | None = None
    # None: serve model_version and policy_path, fixed for the replica's life.
    bundle: BundleSettings | None = None

    @property
    def data_dir(self) -> Path:
        return self.features.data_dir


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (nested dict)."""
    raw: dict[str, Any] = {}
    where = "settings"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read settings: {exc}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ConfigError(f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: settings must be a YAML mapping")
        raw = loaded
    raw = _merge(raw, overrides or {})
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: invalid settings: {problems}") from exc

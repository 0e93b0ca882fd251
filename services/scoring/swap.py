"""Atomic hot swap: a replica follows its deployment in the bundle registry.

``SwappableEngine.score`` reads the current engine once per batch and scores the whole
batch with it, so a batch is decided by one bundle from its first item to its last. A
watcher thread polls the registry's index version (one listing per
``bundle.poll_interval_s``; ``reload()`` asks at once) and, when the deployment names
another bundle, does everything expensive off the hot path: reads it, checks its
checksums, compiles the model, runs the parity gate, validates the policy against the
catalogue, builds an engine on the replica's shared stores and warms the kernel. Only then
is the reference replaced, a single assignment between batches: batches already running
finish on the old engine, the next ones start on the new. A bundle that fails any check
is refused (logged, remembered, ``last_error``) and the running one keeps serving.

Every engine shares the stores opened once (``factory.Shared``); an engine swapped out is
dropped, never closed, and ``close()`` closes the current one (and so the stores) once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from features import FeatureError
from kernels import KernelError
from services.bundles import BundleError, LoadedBundle, Registry, load_bundle
from services.bundles.registry import Arm, Deployment
from services.errors import ConfigError, CreditAuthError, translate
from services.schema.records import DecisionBatch, RequestBatch
from services.scoring.decider import TOP_K
from services.scoring.engine import ScoringEngine
from services.scoring.factory import Shared, catalog_of, engine_with, open_shared, tag_index
from services.scoring.variants import Arms, ArmSpec
from services.settings import Settings
from services.telemetry import NullTelemetry

log = logging.getLogger(__name__)
WARM_ROWS = 256  # reference rows scored once before a swap, so the first batch pays no first-call cost
SWAPS_KEPT = 100


@dataclass(frozen=True)
class Serving:
    """The engine that scores the next batch, and the deployment state it was built for."""

    engine: ScoringEngine
    bundle: str
    index_version: int
    arms: tuple[tuple[Arm, ...], tuple[Arm, ...]] = ((), ())  # challengers, shadows


@dataclass(frozen=True)
class SwapRecord:
    before: str
    after: str
    model_version: str
    policy_version: str
    prepare_s: float  # read, check, compile, gate, build and warm: all off the hot path
    at: float  # time.perf_counter() when the reference was replaced


class SwappableEngine:
    def __init__(self, shared: Shared, registry: Registry, deployment: str, poll_interval_s: float,
                 first: Serving) -> None:
        self._shared = shared
        self._registry = registry
        self._deployment = deployment
        self._interval = poll_interval_s
        self._tags = tag_index(shared.catalog)
        self._current = first
        self._seen_version = first.index_version
        self._swap_lock = threading.Lock()  # the watcher and an explicit check never prepare twice
        self._changed = threading.Condition()  # notified after every swap or refusal
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps: deque[SwapRecord] = deque(maxlen=SWAPS_KEPT)
        self.refused: dict[str, str] = {}  # bundle id -> why it was not swapped in
        self.last_error: str | None = None
        self._loaded: dict[str, LoadedBundle] = {}  # compiled bundles the deployment names, by id

    @classmethod
    def open(cls, settings: Settings, telemetry: NullTelemetry | None = None) -> SwappableEngine:
        """The engine for ``settings.bundle``'s deployment (validated before any store is opened)."""
        cfg = settings.bundle
        if cfg is None:
            raise ConfigError("settings: no 'bundle' section: nothing to follow")
        try:
            registry = Registry(cfg.registry)
            catalog = catalog_of(settings)
            index = registry.index()
            dep = index.deployments.get(cfg.deployment)
            if dep is None:
                raise ConfigError(f"bundle registry {cfg.registry}: no deployment {cfg.deployment!r} "
                                  f"(run `creditauth bundle promote {cfg.deployment} BUNDLE` first)")
            loaded = load_bundle(registry, dep.bundle, tags=tag_index(catalog))
            shared = open_shared(settings, catalog, telemetry)
        except FeatureError as exc:
            raise translate(exc) from exc
        tags = tag_index(catalog)
        try:
            arms = _arms(dep, cfg.deployment, lambda bid: load_bundle(registry, bid, tags=tags))
        except FeatureError as exc:
            raise translate(exc) from exc
        engine = engine_with(shared, loaded.artifact, loaded.compiled_policy, arms)
        first = Serving(engine, dep.bundle, index.version, (dep.challengers, dep.shadows))
        return cls(shared, registry, cfg.deployment, cfg.poll_interval_s, first)

    # -- what the replica calls --------------------------------------------------------
    def score(self, batch: RequestBatch, now: float | None = None) -> DecisionBatch:
        # One read of the reference: the whole batch is decided by the engine it names.
        return self._current.engine.score(batch, now)

    @property
    def model_version(self) -> str:
        return self._current.engine.model_version

    @property
    def policy_version(self) -> str:
        return self._current.engine.policy_version

    @property
    def bundle_id(self) -> str:
        return self._current.bundle

    @property
    def ready(self) -> bool:
        return self._current.engine.ready

    def start(self) -> SwappableEngine:
        """Follow the deployment in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="bundle-watch", daemon=True)
            self._thread.start()
        return self

    def reload(self) -> None:
        """Look at the registry now rather than at the next poll (the swap still happens off the hot path)."""
        self._wake.set()

    def wait_for(self, bundle_id: str, timeout_s: float) -> bool:
        """Block until ``bundle_id`` serves (True) or is refused, or ``timeout_s`` passes (False)."""
        with self._changed:
            self._changed.wait_for(lambda: self.bundle_id == bundle_id or bundle_id in self.refused, timeout_s)
            return self.bundle_id == bundle_id

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._current.engine.close()

    # -- following the deployment ------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except (CreditAuthError, FeatureError, OSError) as exc:  # the registry unreachable: keep serving
                self.last_error = f"registry {self._registry.uri}: {exc}"
                log.warning("bundle watch: %s", self.last_error)
            self._wake.wait(self._interval)
            self._wake.clear()

    def check(self) -> SwapRecord | None:
        """Swap to the deployment's bundle if it changed and passes every check (None: no swap)."""
        with self._swap_lock:
            version = self._registry.index_version()
            if version == self._seen_version:
                return None
            index = self._registry.index()
            self._seen_version = index.version
            dep = index.deployments.get(self._deployment)
            cur = self._current
            if dep is None or dep.serving == (cur.bundle, *cur.arms):
                return None
            return self._swap_to(dep, index.version)

    def _load(self, bundle_id: str) -> LoadedBundle:
        """A bundle read, checked, compiled and warmed (kept while the deployment names it)."""
        loaded = self._loaded.get(bundle_id)
        if loaded is None:
            loaded = load_bundle(self._registry, bundle_id, tags=self._tags)
            _warm(loaded)
            self._loaded[bundle_id] = loaded
        return loaded

    def _swap_to(self, dep: Deployment, index_version: int) -> SwapRecord | None:
        started = time.perf_counter()
        bundle_id = dep.bundle
        try:
            loaded = self._load(bundle_id)
            arms = _arms(dep, self._deployment, self._load)
            engine = engine_with(self._shared, loaded.artifact, loaded.compiled_policy, arms)
        except (CreditAuthError, FeatureError, KernelError) as exc:
            self.last_error = f"bundle {bundle_id[:12]} refused, still serving {self._current.bundle[:12]}: {exc}"
            log.error("%s", self.last_error)
            with self._changed:
                self.refused[bundle_id] = str(exc)
                self._changed.notify_all()
            return None
        before = self._current.bundle
        prepared = time.perf_counter()
        with self._changed:
            # The swap: one assignment between batches.
            self._current = Serving(engine, bundle_id, index_version, (dep.challengers, dep.shadows))
            used = {bundle_id, *(a.bundle for a in (*dep.challengers, *dep.shadows))}
            self._loaded = {b: x for b, x in self._loaded.items() if b in used}
            self.refused.pop(bundle_id, None)
            self._changed.notify_all()
        record = SwapRecord(before, bundle_id, engine.model_version, engine.policy_version, prepared - started,
                            time.perf_counter())
        self.swaps.append(record)
        self.last_error = None
        log.info("bundle %s -> %s (model %s, policy %s), prepared in %.3fs off the hot path",
                 before[:12], bundle_id[:12], record.model_version, record.policy_version, record.prepare_s)
        return record


def serving_engine(settings: Settings) -> ScoringEngine | SwappableEngine:
    """What a replica serves with: the fixed engine of ``model_version``/``policy_path``, or,
    with a ``bundle`` section, one following that deployment (its watcher started)."""
    if settings.bundle is None:
        from services.scoring.factory import build_engine

        return build_engine(settings)
    return SwappableEngine.open(settings).start()


def _arms(dep: Deployment, salt: str, load: Callable[[str], LoadedBundle]) -> Arms:
    """The deployment's challengers and shadows, each bundle loaded and checked like the champion."""

    def spec(arm: Arm) -> ArmSpec:
        b = load(arm.bundle)
        return ArmSpec(arm.name, arm.bundle, b.artifact, b.compiled_policy, arm.share)

    return Arms(dep.bundle, tuple(spec(a) for a in dep.challengers), tuple(spec(a) for a in dep.shadows), salt)


def _warm(loaded: LoadedBundle) -> None:
    """Score reference rows once: the kernel's first call, off the hot path."""
    x = loaded.reference_x[:WARM_ROWS]
    if len(x):
        loaded.artifact.ensemble.predict_with_reasons(x, min(TOP_K, loaded.artifact.ensemble.n_features))


__all__ = ["BundleError", "Serving", "SwapRecord", "SwappableEngine", "serving_engine"]

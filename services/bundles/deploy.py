"""Move a deployment to a bundle (promote) or back to the one before (rollback).

The bundle is validated first, exactly as a replica will before it swaps it in; a bundle
that is tampered with or broken leaves the index untouched, so what is running keeps
serving. The index is changed by compare-and-swap (``Registry.update``): two promotions at
once cannot lose one another, and a deployment's history is what rollback walks back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.bundles.manifest import BundleError, Problem
from services.bundles.registry import HISTORY_KEPT, Deployment, Index, Registry, now_iso
from services.bundles.validate import LoadedBundle, Progress, load_bundle


@dataclass(frozen=True)
class Moved:
    name: str
    before: str | None
    after: str
    index_version: int


def promote(
    registry: Registry, name: str, bundle_id: str, *, tags: Mapping[str, int] | None = None,
    progress: Progress | None = None,
) -> tuple[Moved, LoadedBundle]:
    """Validate ``bundle_id`` then make it deployment ``name``'s bundle."""
    loaded = load_bundle(registry, bundle_id, tags=tags, source_check=True, progress=progress)
    before: list[str | None] = [None]

    def change(index: Index) -> dict[str, Deployment]:
        deps = dict(index.deployments)
        old = deps.get(name)
        before[0] = old.bundle if old else None
        history = () if old is None else (old.bundle, *old.history)[:HISTORY_KEPT]
        if old is not None and old.bundle == bundle_id:
            history = old.history  # promoting what is deployed changes nothing but the stamp
        deps[name] = Deployment(name, bundle_id, history, now_iso(), "promote")
        return deps

    new = registry.update(change)
    return Moved(name, before[0], bundle_id, new.version), loaded


def rollback(
    registry: Registry, name: str, *, to: str | None = None, tags: Mapping[str, int] | None = None,
    progress: Progress | None = None,
) -> tuple[Moved, LoadedBundle]:
    """Deployment ``name`` back to its previous bundle (or to ``to``, one of its earlier ones)."""
    current = registry.index().deployments.get(name)
    where = f"{registry.uri}/index"
    if current is None:
        raise BundleError([Problem(where, f"deployments.{name}", "no such deployment")])
    if not current.history:
        raise BundleError([Problem(where, f"deployments.{name}.history", "nothing to roll back to")])
    target = to or current.history[0]
    if target not in current.history:
        raise BundleError([Problem(where, f"deployments.{name}.history", f"{target[:12]} was never deployed here")])
    loaded = load_bundle(registry, target, tags=tags, progress=progress)

    def change(index: Index) -> dict[str, Deployment]:
        deps = dict(index.deployments)
        now = deps.get(name)
        if now is None or now.bundle != current.bundle:
            # Someone promoted in between: do not undo a change this rollback never saw.
            raise BundleError([Problem(where, f"deployments.{name}", "changed while rolling back; run it again")])
        rest = now.history[now.history.index(target) + 1:]
        deps[name] = Deployment(name, target, rest, now_iso(), f"rollback from {now.bundle[:12]}")
        return deps

    new = registry.update(change)
    return Moved(name, current.bundle, target, new.version), loaded

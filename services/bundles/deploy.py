"""Move a deployment to a bundle (promote) or back to the one before (rollback).

Beside its champion a deployment may carry challengers (each answering a configured share
of the merchants, a sticky split by merchant hash) and shadows (scored on the same
features, never answering): ``challenge``, ``shadow`` and ``retire`` change those, with the
same validation and the same compare-and-swap.

The bundle is validated first, exactly as a replica will before it swaps it in; a bundle
that is tampered with or broken leaves the index untouched, so what is running keeps
serving. The index is changed by compare-and-swap (``Registry.update``): two promotions at
once cannot lose one another, and a deployment's history is what rollback walks back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from services.bundles.manifest import BundleError, Problem
from services.bundles.registry import HISTORY_KEPT, Arm, Deployment, Index, Registry, now_iso
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
        arms = _without(old, bundle_id)  # a challenger promoted stops being one
        deps[name] = Deployment(name, bundle_id, history, now_iso(), "promote", *arms)
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
        deps[name] = Deployment(name, target, rest, now_iso(), f"rollback from {now.bundle[:12]}",
                                *_without(now, target))
        return deps

    new = registry.update(change)
    return Moved(name, current.bundle, target, new.version), loaded


MAX_CHALLENGER_SHARE = 0.5  # above half the merchants a "challenger" is the champion: promote it


def _without(dep: Deployment | None, bundle_id: str) -> tuple[tuple[Arm, ...], tuple[Arm, ...]]:
    if dep is None:
        return (), ()
    return (tuple(a for a in dep.challengers if a.bundle != bundle_id),
            tuple(a for a in dep.shadows if a.bundle != bundle_id))


def set_arm(
    registry: Registry, name: str, bundle_id: str, *, arm: str, share: float | None,
    tags: Mapping[str, int] | None = None, progress: Progress | None = None,
) -> tuple[Deployment, LoadedBundle]:
    """Add (or change) challenger ``arm`` answering ``share`` of the merchants, or, with
    ``share=None``, shadow ``arm``; the bundle validated first, the champion untouched."""
    where = f"{registry.uri}/index"
    field_ = f"deployments.{name}.{'shadows' if share is None else 'challengers'}"
    if share is not None and not 0.0 < share <= MAX_CHALLENGER_SHARE:
        raise BundleError([Problem(where, field_, f"share {share} outside (0, {MAX_CHALLENGER_SHARE}]")])
    if not arm or arm == "champion" or not arm.replace("-", "").replace("_", "").isalnum() or len(arm) > 32:
        raise BundleError([Problem(where, field_, f"name {arm!r}: 1-32 letters, digits, - or _, not 'champion'")])
    loaded = load_bundle(registry, bundle_id, tags=tags, source_check=True, progress=progress)
    current = registry.index().deployments.get(name)
    if share is not None and current is not None and current.bundle != bundle_id:
        champion = load_bundle(registry, current.bundle, tags=tags)
        if (why := champion.compiled_policy.exposure_mismatch(loaded.compiled_policy)) is not None:
            raise BundleError([Problem(registry.where(bundle_id, "policy.yaml"), "exposure.caps", why)])

    def change(index: Index) -> dict[str, Deployment]:
        deps = dict(index.deployments)
        dep = deps.get(name)
        if dep is None:
            raise BundleError([Problem(where, f"deployments.{name}", "no such deployment: promote a champion first")])
        if dep.bundle == bundle_id:
            raise BundleError([Problem(where, field_, "that bundle is the champion")])
        others = tuple(a for a in dep.challengers if a.name != arm)
        shadows = tuple(a for a in dep.shadows if a.name != arm)
        if share is None:
            shadows = (*shadows, Arm(arm, bundle_id))
        else:
            others = (*others, Arm(arm, bundle_id, share))
            total = sum(a.share for a in others)
            if total > MAX_CHALLENGER_SHARE + 1e-9:
                raise BundleError([Problem(where, field_, f"challengers would answer {total:.0%} of merchants "
                                           f"(at most {MAX_CHALLENGER_SHARE:.0%})")])
        deps[name] = replace(dep, challengers=others, shadows=shadows, updated_at=now_iso(),
                             action=f"{'shadow' if share is None else 'challenge'} {arm} {bundle_id[:12]}")
        return deps

    new = registry.update(change)
    return new.deployments[name], loaded


def retire(registry: Registry, name: str, arm: str) -> Deployment:
    """Remove challenger or shadow ``arm`` from deployment ``name`` (its merchants go back to the champion)."""
    where = f"{registry.uri}/index"

    def change(index: Index) -> dict[str, Deployment]:
        deps = dict(index.deployments)
        dep = deps.get(name)
        names = [] if dep is None else [a.name for a in (*dep.challengers, *dep.shadows)]
        if dep is None or arm not in names:
            raise BundleError([Problem(where, f"deployments.{name}", f"no challenger or shadow {arm!r} "
                                       f"(there are: {', '.join(names) or 'none'})")])
        deps[name] = replace(dep, challengers=tuple(a for a in dep.challengers if a.name != arm),
                             shadows=tuple(a for a in dep.shadows if a.name != arm), updated_at=now_iso(),
                             action=f"retire {arm}")
        return deps

    return registry.update(change).deployments[name]

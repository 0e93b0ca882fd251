"""``creditauth bundle build | import | validate | list | show | diff | promote | rollback``
(and ``challenge | shadow | retire``, in ``services.cli.bundle_arms``).

The registry is ``--registry`` (a directory or any pyarrow.fs URI), else the settings'
``bundle.registry``, else ``<data_dir>/registry``. Every problem with a bundle is printed
as ``FILE[:LINE]: field: message`` and exits 2, like ``creditauth policy validate``; a
refused promotion or rollback leaves the index (and so what is serving) as it was.
Long steps show progress on stderr (tqdm; off when stderr is not a terminal).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.bundles import BundleError, Registry
from services.bundles.manifest import TRAINING, short
from services.cli.bundle_arms import add_arms
from services.settings import Settings

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_INVALID = 2


def add_bundle(sub: _Subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    bun = sub.add_parser("bundle", help="versioned model + policy bundles: build, check, deploy, roll back")
    cmds = bun.add_subparsers(dest="cmd", required=True)

    def command(name: str, run: Callable[[Settings, argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_)
        common(p)
        p.add_argument("--registry", help="registry directory or URI (default: settings bundle.registry, "
                                          "else <data-dir>/registry)")
        p.set_defaults(run=run)
        return p

    b = command("build", bundle_build, "bundle the project's trained model (data dir) with a policy")
    b.add_argument("--model-version", default="latest", help="model under <data-dir>/models (default latest)")
    b.add_argument("--policy", type=Path, help="policy YAML (default: the packaged policy)")
    b.add_argument("--window", help="training data window START,END (default: the offline tables' timestamps)")
    i = command("import", bundle_import, "bundle a LightGBM text / XGBoost JSON model trained elsewhere")
    i.add_argument("model", type=Path, help="the model file")
    i.add_argument("--policy", type=Path, help="policy YAML (default: the packaged policy)")
    i.add_argument("--map", action="append", default=[], metavar="MODEL=CATALOGUE",
                   help="serve model feature MODEL from catalogue feature CATALOGUE (repeatable)")
    i.add_argument("--sample", type=Path, help="reference rows, Parquet or CSV, columns by feature name "
                                               "(default: rows of the data dir's training frame)")
    i.add_argument("--training", type=Path, help="training metadata JSON (data window, holdout metrics)")
    i.add_argument("--model-version", help="the model's version label (default: kind and hash)")
    v = command("validate", bundle_validate, "checksums, model, policy and the parity gate")
    v.add_argument("bundle", help="bundle id (or a unique prefix)")
    command("list", bundle_list, "the registry's bundles and where each is deployed")
    s = command("show", bundle_show, "a bundle's manifest, training metadata and deployments")
    s.add_argument("bundle", help="bundle id (or a unique prefix)")
    d = command("diff", bundle_diff, "what differs between two bundles")
    d.add_argument("old", help="bundle id (or prefix)")
    d.add_argument("new", help="bundle id (or prefix)")
    p = command("promote", bundle_promote, "validate a bundle, then deploy it")
    p.add_argument("bundle", help="bundle id (or a unique prefix)")
    p.add_argument("--deployment", help="deployment name (default: settings bundle.deployment, else 'default')")
    r = command("rollback", bundle_rollback, "a deployment back to its previous bundle")
    r.add_argument("--deployment", help="deployment name (default: settings bundle.deployment, else 'default')")
    r.add_argument("--to", help="an earlier bundle of this deployment (default: the one before)")
    add_arms(command)


# -- shared ---------------------------------------------------------------------------
def _registry(settings: Settings, args: argparse.Namespace) -> Registry:
    uri = args.registry or (settings.bundle.registry if settings.bundle else None) or settings.data_dir / "registry"
    return Registry(uri)


def _deployment(settings: Settings, args: argparse.Namespace) -> str:
    return str(args.deployment or (settings.bundle.deployment if settings.bundle else "default"))


def _tags(settings: Settings) -> dict[str, int] | None:
    """The catalogue's tags (None: no catalogue here, tags not checked, and said so)."""
    from features import TagCatalog

    path = settings.features.tag_catalog_path
    if not path.exists():
        print(f"note: tags not checked: no tag catalogue at {path}", file=sys.stderr)
        return None
    return {t.name: t.id for t in TagCatalog.load(path)}


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A bundle problem: each printed as FILE[:LINE]: field: message, then exit 2."""
    try:
        yield
    except BundleError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s); nothing was changed", file=sys.stderr)
        sys.exit(EXIT_INVALID)


@contextlib.contextmanager
def _progress(desc: str) -> Iterator[Callable[[str], None]]:
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="step", disable=None, file=sys.stderr, leave=False)

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    try:
        yield step
    finally:
        bar.close()


def _store(settings: Settings, args: argparse.Namespace, bundle: Any) -> None:
    bid = _registry(settings, args).put(bundle)
    m = bundle.manifest
    print(f"bundle {bid}\n  model {m['model']['version']} ({m['model']['kind']}, {m['model']['trees']} trees), "
          f"policy {m['policy']['version']}, parity max |err| {m['parity']['max_abs_error']:.1e} "
          f"on {m['parity']['rows']} rows")


# -- commands -------------------------------------------------------------------------
def bundle_build(settings: Settings, args: argparse.Namespace) -> None:
    from services.bundles.build import from_artifact

    window = tuple(args.window.split(",", 1)) if args.window else None
    if window is not None and len(window) != 2:
        raise BundleError("--window: expected START,END")
    with _refusals(), _progress("build") as step:
        bundle = from_artifact(settings.data_dir, args.model_version, policy_path=args.policy or settings.policy_path,
                               tags=_tags(settings), window=window, progress=step)
    _store(settings, args, bundle)


def _catalogue_rows(settings: Settings) -> Any:
    """The training frame's rows (catalogue order), for a model imported without --sample."""
    from features import FeatureError
    from features.training import training_frame

    try:
        return training_frame(settings.features)[0]
    except (FeatureError, OSError) as exc:
        print(f"note: no training frame in {settings.data_dir}: {exc}", file=sys.stderr)
        return None


def bundle_import(settings: Settings, args: argparse.Namespace) -> None:
    from services.bundles.build import import_model, read_training

    mapping = {}
    for item in args.map:
        model_name, sep, catalogue_name = item.partition("=")
        if not sep or not model_name or not catalogue_name:
            raise BundleError(f"--map {item!r}: expected MODEL=CATALOGUE")
        mapping[model_name] = catalogue_name
    with _refusals(), _progress("import") as step:
        bundle = import_model(
            args.model, policy_path=args.policy, tags=_tags(settings), sample=args.sample, mapping=mapping,
            training=read_training(args.training), version=args.model_version, progress=step,
            catalogue_sample=None if args.sample else _catalogue_rows(settings),
        )
    _store(settings, args, bundle)


def bundle_validate(settings: Settings, args: argparse.Namespace) -> None:
    from services.bundles.validate import load_bundle

    registry = _registry(settings, args)
    with _refusals():
        bid = registry.resolve(args.bundle)
        with _progress("validate") as step:
            loaded = load_bundle(registry, bid, tags=_tags(settings), source_check=True, progress=step)
    print(f"bundle {bid}: valid: model {loaded.model_version}, policy {loaded.policy_version}; {loaded.parity}")


def _deployed_at(registry: Registry) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for dep in registry.index().deployments.values():
        out.setdefault(dep.bundle, []).append(dep.name)
        for arm in dep.challengers:
            out.setdefault(arm.bundle, []).append(f"{dep.name} ({arm.name} {arm.share:.0%})")
        for arm in dep.shadows:
            out.setdefault(arm.bundle, []).append(f"{dep.name} (shadow {arm.name})")
    return out


def bundle_list(settings: Settings, args: argparse.Namespace) -> None:
    registry = _registry(settings, args)
    deployed = _deployed_at(registry)
    ids = registry.ids()
    if not ids:
        print(f"no bundles in {registry.uri}")
    for bid in ids:
        where = ", ".join(deployed.get(bid, [])) or "-"
        try:
            m = registry.read(bid).manifest
            what = f"{m['model']['kind']:<8} model {m['model']['version']:<32} policy {m['policy']['version']:<16}"
        except (BundleError, KeyError, TypeError) as exc:  # listed anyway: `validate` says what is wrong
            what = f"unreadable ({exc})"
        print(f"{short(bid)}  {what} deployed: {where}")


def bundle_show(settings: Settings, args: argparse.Namespace) -> None:
    registry = _registry(settings, args)
    with _refusals():
        bid = registry.resolve(args.bundle)
        bundle = registry.read(bid)
    doc = {"id": bid, "manifest": bundle.manifest, "training": json.loads(bundle.files[TRAINING]),
           "deployed": _deployed_at(registry).get(bid, [])}
    print(json.dumps(doc, indent=2, default=str))


def bundle_diff(settings: Settings, args: argparse.Namespace) -> None:
    from services.bundles.diff import diff

    registry = _registry(settings, args)
    with _refusals():
        a, b = registry.resolve(args.old), registry.resolve(args.new)
        changes = diff(registry.read(a), registry.read(b))
    print(f"{short(a)} -> {short(b)}: {len(changes)} difference(s)")
    for change in changes:
        print(f"  {change}")


def bundle_promote(settings: Settings, args: argparse.Namespace) -> None:
    from services.bundles.deploy import promote

    registry = _registry(settings, args)
    name = _deployment(settings, args)
    with _refusals():
        bid = registry.resolve(args.bundle)
        with _progress("promote") as step:
            moved, loaded = promote(registry, name, bid, tags=_tags(settings), progress=step)
    before = short(moved.before) if moved.before else "(none)"
    print(f"deployment {name}: {before} -> {short(moved.after)} (index version {moved.index_version}); "
          f"model {loaded.model_version}, policy {loaded.policy_version}; replicas swap at their next poll")


def bundle_rollback(settings: Settings, args: argparse.Namespace) -> None:
    from services.bundles.deploy import rollback

    registry = _registry(settings, args)
    name = _deployment(settings, args)
    with _refusals():
        to = registry.resolve(args.to) if args.to else None
        with _progress("rollback") as step:
            moved, loaded = rollback(registry, name, to=to, tags=_tags(settings), progress=step)
    print(f"deployment {name}: {short(moved.before or '')} -> {short(moved.after)} rolled back "
          f"(index version {moved.index_version}); model {loaded.model_version}, policy {loaded.policy_version}")

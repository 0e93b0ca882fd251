"""``creditauth bundle challenge | shadow | retire``: what beside the champion decides.

A challenger answers a share of the merchants (a sticky split by merchant hash, the same
on every replica and after every restart); a shadow is scored on every decision's inputs
and never answers. Both are validated exactly like a promotion before the index changes,
and replicas pick the change up at their next poll, swapping between batches.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from services.bundles.manifest import short
from services.bundles.registry import Deployment
from services.settings import Settings

Command = Callable[[str, Callable[[Settings, argparse.Namespace], None], str], argparse.ArgumentParser]
_DEPLOYMENT_HELP = "deployment name (default: settings bundle.deployment, else 'default')"


def add_arms(command: Command) -> None:
    c = command("challenge", bundle_challenge, "validate a bundle, then let it answer a share of the merchants")
    c.add_argument("bundle", help="bundle id (or a unique prefix)")
    c.add_argument("--share", type=float, required=True, help="share of the merchants it answers, e.g. 0.1")
    c.add_argument("--name", default="challenger", help="the variant's name on responses and in the log")
    c.add_argument("--deployment", help=_DEPLOYMENT_HELP)
    s = command("shadow", bundle_shadow, "validate a bundle, then score it beside every decision (never answers)")
    s.add_argument("bundle", help="bundle id (or a unique prefix)")
    s.add_argument("--name", default="shadow", help="the shadow's name in the log and the metrics")
    s.add_argument("--deployment", help=_DEPLOYMENT_HELP)
    r = command("retire", bundle_retire, "remove a challenger or shadow (its merchants go back to the champion)")
    r.add_argument("name", help="the challenger's or shadow's name")
    r.add_argument("--deployment", help=_DEPLOYMENT_HELP)


def describe(dep: Deployment) -> str:
    """One deployment's variants, as the commands print them."""
    champion = 1.0 - sum(a.share for a in dep.challengers)
    parts = [f"champion {short(dep.bundle)} {champion:.2%}"]
    parts += [f"{a.name} {short(a.bundle)} {a.share:.2%}" for a in dep.challengers]
    parts += [f"shadow {a.name} {short(a.bundle)}" for a in dep.shadows]
    return f"deployment {dep.name}: " + ", ".join(parts)


def _set(settings: Settings, args: argparse.Namespace, share: float | None) -> None:
    from services.bundles.deploy import set_arm
    from services.cli.bundle import _deployment, _progress, _refusals, _registry, _tags

    registry = _registry(settings, args)
    with _refusals():
        bid = registry.resolve(args.bundle)
        with _progress("validate") as step:
            dep, loaded = set_arm(registry, _deployment(settings, args), bid, arm=args.name, share=share,
                                  tags=_tags(settings), progress=step)
    print(f"{describe(dep)}\n  {args.name}: model {loaded.model_version}, policy {loaded.policy_version}; "
          "replicas swap at their next poll")


def bundle_challenge(settings: Settings, args: argparse.Namespace) -> None:
    _set(settings, args, args.share)


def bundle_shadow(settings: Settings, args: argparse.Namespace) -> None:
    _set(settings, args, None)


def bundle_retire(settings: Settings, args: argparse.Namespace) -> None:
    from services.bundles.deploy import retire
    from services.cli.bundle import _deployment, _refusals, _registry

    with _refusals():
        dep = retire(_registry(settings, args), _deployment(settings, args), args.name)
    print(describe(dep))

"""creditauth's services: front end, runtime, scoring, policy, models, decision log."""

from __future__ import annotations


def version() -> str:
    """The installed package's version ("unknown" in a source tree never installed)."""
    from importlib import metadata

    try:
        return metadata.version("creditauth")
    except metadata.PackageNotFoundError:
        return "unknown"

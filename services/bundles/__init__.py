"""Bundles: the versioned, immutable, content-addressed unit that decides, and their registry.

``manifest`` (what a bundle is), ``registry`` (where bundles and the deployment index
live, any ``pyarrow.fs`` path), ``build`` (from our trained model or one trained
elsewhere), ``validate`` (checksums, model, policy, parity gate), ``deploy`` (promote,
rollback), ``diff``. docs/bundles.md.
"""

from services.bundles.manifest import Bundle, BundleError, Problem
from services.bundles.registry import Deployment, Index, Registry
from services.bundles.validate import LoadedBundle, load_bundle

__all__ = ["Bundle", "BundleError", "Deployment", "Index", "LoadedBundle", "Problem", "Registry", "load_bundle"]

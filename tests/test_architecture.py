"""The folders show the architecture; imports point one way only.

proto -> services -> features -> kernels. kernels import nothing of ours,
features never import services, loadtest reaches the system only over gRPC
(it may use the generated stubs in ``creditauth`` and nothing else of ours),
and only the seam (``services/runtime/seam/``) imports Ray. Inside services, the
runtime sits below the front end: only the composition root (``services.stack``)
imports both.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"services", "features", "kernels", "loadtest", "creditauth"}
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    "features": {"features", "kernels"},
    "services": {"services", "features", "kernels", "creditauth"},
    "loadtest": {"loadtest", "creditauth"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from services import stack`` imports services.stack: record both names.
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _sources(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts] + list(
        (ROOT / package).rglob("*.pyx")
    )


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package: str) -> None:
    bad = []
    for path in _sources(package):
        if path.suffix == ".pyx":
            text = path.read_text()
            for ours in OURS - ALLOWED[package] - {package}:
                if f"import {ours}" in text or f"from {ours}" in text:
                    bad.append(f"{path.relative_to(ROOT)} -> {ours}")
            continue
        for mod in _imports(path):
            top = mod.split(".")[0]
            if top in OURS and top not in ALLOWED[package] | {package}:
                bad.append(f"{path.relative_to(ROOT)} -> {mod}")
    assert not bad, "imports against the architecture:\n" + "\n".join(bad)


def test_only_the_seam_imports_ray() -> None:
    importers = []
    for package in ("services", "features", "kernels"):
        for path in _sources(package):
            if path.suffix == ".py" and any(m == "ray" or m.startswith("ray.") for m in _imports(path)):
                importers.append(str(path.relative_to(ROOT)))
    # The baselines measure Ray itself (the naive stack; Ray's own channels).
    baselines = {"services/baselines/naive.py", "services/baselines/ray_channels.py"}
    outside = [p for p in importers if not p.startswith("services/runtime/seam/") and p not in baselines]
    assert not outside, outside


def test_the_runtime_never_imports_the_front_end_or_the_stack() -> None:
    """Batches flow front end -> runtime; an import back up would make the runtime depend on gRPC."""
    above = ("services.frontend", "services.stack")
    bad = [
        f"{path.relative_to(ROOT)} -> {mod}"
        for path in _sources("services/runtime")
        if path.suffix == ".py"
        for mod in _imports(path)
        if any(mod == a or mod.startswith(a + ".") for a in above)
    ]
    assert not bad, bad


def test_the_channel_never_imports_ray() -> None:
    """The direct channel runs in replicas and front ends alike, and is tested without a cluster."""
    bad = [
        str(path.relative_to(ROOT))
        for path in _sources("services/runtime")
        if path.suffix == ".py" and "seam" not in path.parts
        for mod in _imports(path)
        if mod == "ray" or mod.startswith("ray.")
    ]
    assert not bad, bad


def test_only_entry_points_read_the_environment() -> None:
    readers = []
    for package in ("services", "features", "kernels"):
        for path in _sources(package):
            if path.suffix == ".py" and ("os.environ" in path.read_text() or "os.getenv" in path.read_text()):
                readers.append(str(path.relative_to(ROOT)))
    assert set(readers) <= {"services/cli/main.py"}, readers


def _store_kind_literals(path: Path) -> list[int]:
    """Lines where a store kind ("sqlite"/"redis") is compared with something: a branch on the kind."""
    from features.stores import STORE_KINDS

    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in STORE_KINDS for o in operands):
                lines.append(node.lineno)
        elif isinstance(node, ast.Match):
            lines += [c.pattern.lineno for c in node.cases if "redis" in ast.dump(c.pattern)]
    return lines


def test_only_the_store_factory_branches_on_the_store_kind() -> None:
    factory = ROOT / "features" / "stores" / "__init__.py"
    branches = []
    for package in ("services", "features", "kernels", "loadtest"):
        for path in _sources(package):
            if path.suffix == ".py" and path != factory:
                branches += [f"{path.relative_to(ROOT)}:{n}" for n in _store_kind_literals(path)]
    assert not branches, "branches on the store kind outside features.stores.open_backend:\n" + "\n".join(branches)


def test_only_the_redis_store_imports_a_redis_client() -> None:
    importers = []
    for package in ("services", "features", "kernels"):
        for path in _sources(package):
            if path.suffix == ".py" and any(m == "redis" or m.startswith("redis.") for m in _imports(path)):
                importers.append(str(path.relative_to(ROOT)))
    assert all(p.startswith("features/stores/redis/") for p in importers), importers


def test_the_online_path_imports_neither_polars_nor_the_generator(tmp_path: Path) -> None:
    """A replica's imports (the engine, its factory, a store backend and a reader of each kind)
    pull in neither polars nor the population generator nor Feast itself."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "import services.scoring.factory, services.runtime.seam.replica, services.frontend\n"
        "from features.settings import FeatureSettings\n"
        "from features.stores import open_backend\n"
        f"s = FeatureSettings(data_dir={str(tmp_path)!r})\n"
        "open_backend(s); open_backend(s.model_copy(update={'online_store': 'redis'}))\n"
        "import features.stores.sqlite.reader, features.stores.redis.reader\n"
        "import features.stores.sqlite.velocity, features.stores.redis.velocity\n"
        "import features.stores.sqlite.idempotency, features.stores.redis.idempotency\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('polars', 'feast')"
        " or m.startswith('features.population') or m in ('features.training', 'features.materialize'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", f"the online path imports {out.stdout.strip()}"


def test_the_architecture_picture_is_up_to_date() -> None:
    import subprocess
    import sys

    script = ROOT / "docs" / "diagrams" / "request_path.py"
    out = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr

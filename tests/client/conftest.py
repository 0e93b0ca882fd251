"""The client package built from the source tree (protos compiled now, as its build does),
made importable for the in-project tests without installing it into the project's venv.

It is built when this conftest is imported, before the test modules that import it are
collected; the directory is removed when the interpreter exits.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from services.frontend import FrontEnd
    from tests.conftest import World

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "proto" / "python"


def load_protogen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("creditauth_client_protogen", PACKAGE / "protogen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build() -> Path:
    # Stubs are left out: the project's venv has no mypy-protobuf (a build dependency of
    # the package only); the fresh-venv test checks the real build, stubs included.
    site = Path(tempfile.mkdtemp(prefix="creditauth-client-"))
    atexit.register(shutil.rmtree, site, ignore_errors=True)
    shutil.copytree(PACKAGE / "src" / "creditauth_client", site / "creditauth_client")
    load_protogen().generate(site / "creditauth_client" / "v1", stubs=False)
    return site


CLIENT_SITE = _build()
sys.path.insert(0, str(CLIENT_SITE))


@pytest.fixture(scope="module")
def front_end(world: World) -> Iterator[FrontEnd]:
    """The real front end over the real engine, in process (no Ray), plaintext on loopback."""
    from tests.e2e.conftest import start_local

    lt, fe = start_local(world)
    yield fe
    lt.run(fe.stop())
    lt.close()

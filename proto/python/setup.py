"""The build step pyproject.toml cannot express: compile ``proto/creditauth/v1/*.proto``.

``build_py`` writes the generated modules into the build tree (or, for an editable
install, into ``src/``), so a wheel always matches the protos it was built from.
``sdist`` carries the protos along under ``_protos/`` so the sdist builds on its own.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
# Build backends do not put the project directory on sys.path.
sys.path.insert(0, str(HERE))

import protogen  # noqa: E402


class BuildPyWithProtos(build_py):  # type: ignore[misc]
    def run(self) -> None:
        base = HERE / "src" if self.editable_mode else Path(self.build_lib)
        protogen.generate(base / "creditauth_client" / "v1")
        super().run()


class SdistWithProtos(sdist):  # type: ignore[misc]
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        root = protogen.proto_root()
        for proto in protogen.proto_files(root):
            target = Path(base_dir) / "_protos" / proto.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(proto, target)
        shutil.copy2(HERE / "protogen.py", Path(base_dir) / "protogen.py")


setup(cmdclass={"build_py": BuildPyWithProtos, "sdist": SdistWithProtos})

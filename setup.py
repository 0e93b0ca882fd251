"""Build steps that pyproject.toml cannot express: Cython extensions and gRPC stubs.

Every ``*.pyx`` under ``kernels/``, ``features/`` and ``services/`` becomes an extension module of
the same dotted name, so adding a kernel needs no edit here. The gRPC stubs are
generated from ``proto/`` on every build (regular or editable) into the
``creditauth`` package that ``proto/creditauth`` provides, so they are never stale
and never committed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"


def generate_protos() -> None:
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    for proto in sorted((PROTO_ROOT / "creditauth").rglob("*.proto")):
        rel = proto.relative_to(PROTO_ROOT)
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={PROTO_ROOT}",
            f"--pyi_out={PROTO_ROOT}",
            f"--grpc_python_out={PROTO_ROOT}",
            str(rel),
        ]
        # protoc resolves the file relative to -I, so run from the proto root.
        cwd = os.getcwd()
        os.chdir(PROTO_ROOT)
        try:
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {rel}")
        finally:
            os.chdir(cwd)


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


def extensions() -> list[Extension]:
    # -march=native is right for a service image built on the machine class it
    # runs on; CREDITAUTH_PORTABLE=1 builds generic x86-64 code instead.
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    if os.environ.get("CREDITAUTH_PORTABLE", "") != "1" and sys.platform != "win32":
        flags.append("-march=native")
    # CREDITAUTH_EXT_ONLY=kernels limits a build to one package's extensions
    # (handy while iterating on one kernel with build_ext --inplace).
    only = os.environ.get("CREDITAUTH_EXT_ONLY", "")
    exts = []
    sources = [*ROOT.glob("kernels/**/*.pyx"), *ROOT.glob("features/**/*.pyx"), *ROOT.glob("services/**/*.pyx")]
    for pyx in sorted(sources):
        if only and not str(pyx.relative_to(ROOT)).startswith(only):
            continue
        rel = pyx.relative_to(ROOT).with_suffix("")
        exts.append(
            Extension(
                ".".join(rel.parts),
                [str(pyx.relative_to(ROOT))],
                include_dirs=[numpy.get_include()],
                extra_compile_args=flags,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    )


setup(
    packages=[
        *find_packages(include=["services*", "features*", "kernels*", "loadtest*"]),
        "creditauth",
        "creditauth.v1",
    ],
    package_dir={"creditauth": "proto/creditauth"},
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPyWithProtos},
)

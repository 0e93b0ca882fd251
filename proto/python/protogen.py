"""Generate the client's protobuf/gRPC modules and their typed stubs from ``proto/``.

The ``.proto`` files stay the single source: they are compiled at build time (never
committed here) with grpcio-tools, and mypy-protobuf writes the ``.pyi`` stubs. The
generated modules import each other as ``creditauth.v1``; that name belongs to the
server's own package, so the imports are rewritten to ``creditauth_client.v1`` and the
two can live in one environment. The proto file names (``creditauth/v1/*.proto``) are
kept, so both register identical descriptors in protobuf's pool instead of clashing.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_PACKAGE = Path("creditauth") / "v1"
TARGET_PACKAGE = "creditauth_client.v1"
# Only import statements and the module names handed to protobuf's builder are
# rewritten; the serialized descriptor (a bytes literal) must keep "creditauth.v1".
_PY_IMPORT = re.compile(r"^(from|import) creditauth\.v1\b", re.MULTILINE)
_PY_MODULE_NAME = re.compile(r"'creditauth\.v1\.(\w+_pb2)'")
_PYI_NAME = re.compile(r"(?<![\w.\"'])creditauth\.v1\.(?=\w+_pb2\b)")


def proto_root() -> Path:
    """Where the ``.proto`` files are: beside this package in a checkout, inside an sdist."""
    for root in (HERE / "_protos", HERE.parent):
        if (root / PROTO_PACKAGE / "authorization.proto").is_file():
            return root
    raise FileNotFoundError(
        f"no {PROTO_PACKAGE / 'authorization.proto'} under {HERE / '_protos'} or {HERE.parent}: "
        "build from the repository's proto/python or from its sdist"
    )


def proto_files(root: Path) -> list[Path]:
    return sorted((root / PROTO_PACKAGE).glob("*.proto"))


def _plugin(name: str) -> str:
    exe = name + (".exe" if sys.platform == "win32" else "")
    found = shutil.which(exe) or shutil.which(exe, path=sysconfig.get_path("scripts"))
    found = found or shutil.which(exe, path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError(f"{name} not found: mypy-protobuf is a build requirement (pip install mypy-protobuf)")
    return found


def _rewrite(out: Path) -> None:
    for path in out.rglob("*_pb2*.py*"):
        text = _PY_IMPORT.sub(lambda m: f"{m.group(1)} {TARGET_PACKAGE}", path.read_text())
        if path.suffix == ".py":
            text = _PY_MODULE_NAME.sub(rf"'{TARGET_PACKAGE}.\1'", text)
        else:
            text = _PYI_NAME.sub(f"{TARGET_PACKAGE}.", text)
        path.write_text(text)


def generate(dest: Path, *, stubs: bool = True) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2_grpc.py`` (and with ``stubs`` their ``.pyi``) into ``dest``.

    ``dest`` is the ``creditauth_client/v1`` directory of a build. Returns the files written.
    """
    from grpc_tools import protoc

    root = proto_root()
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        args = ["grpc_tools.protoc", f"-I{root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
        if stubs:
            args += [
                f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
                f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
                f"--mypy_out={out}",
                f"--mypy_grpc_out={out}",
            ]
        args += [str(p.relative_to(root)) for p in proto_files(root)]
        # protoc resolves the files relative to -I; run from the proto root.
        cwd = os.getcwd()
        os.chdir(root)
        try:
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {root / PROTO_PACKAGE}")
        finally:
            os.chdir(cwd)
        generated = out / PROTO_PACKAGE
        _rewrite(generated)
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted(generated.iterdir()):
            if path.suffix in (".py", ".pyi"):
                shutil.copy2(path, dest / path.name)
                written.append(dest / path.name)
    return written


if __name__ == "__main__":
    # python protogen.py DEST: generate without installing (how the in-project tests build it).
    for p in generate(Path(sys.argv[1]), stubs="--no-stubs" not in sys.argv):
        print(p)

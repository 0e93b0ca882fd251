"""The bundle registry: immutable bundles and an index of what is deployed where.

Layout under the registry's root (a local directory, or any path ``pyarrow.fs`` opens:
``s3://bucket/prefix``, ``gs://...``, a mounted volume)::

    bundles/<id>/manifest.json, model.txt, policy.yaml, ...   one directory per bundle
    index/000000000007.json                                   the index, one file per version

A bundle's files are written first and its manifest last: a bundle exists once its
manifest does, so a reader never sees half of one. The index is updated by compare-and-
swap on its version number: an update writes version ``n + 1`` only if nobody has, and
readers read the highest version. On a local or mounted filesystem "only if nobody has"
is ``link(2)``, which fails when the name exists; object stores have no such primitive
in ``pyarrow.fs``, so there a check-then-write is used and promotion must be run by one
pipeline at a time (docs/bundles.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from services.bundles.manifest import ID_LENGTH, MANIFEST, Bundle, BundleError, Problem, sha256
from services.errors import ConfigError

MAX_FILE_BYTES = 512 * 1024 * 1024  # a bundle file larger than this is refused before it is read
MAX_INDEX_BYTES = 16 * 1024 * 1024
CAS_ATTEMPTS = 20
HISTORY_KEPT = 50  # earlier bundles a deployment can roll back to


class IndexConflict(ConfigError):
    """Another writer updated the index first, every time we tried."""


@dataclass(frozen=True)
class Arm:
    """A bundle beside the champion: a challenger answering ``share`` of the merchants
    (a sticky split by merchant hash), or a shadow (share 0) scored and never answering."""

    name: str
    bundle: str
    share: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "bundle": self.bundle, "share": self.share}


@dataclass(frozen=True)
class Deployment:
    name: str
    bundle: str
    history: tuple[str, ...] = ()  # earlier bundles, most recent first
    updated_at: str = ""
    action: str = ""
    challengers: tuple[Arm, ...] = ()
    shadows: tuple[Arm, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"bundle": self.bundle, "history": list(self.history), "updated_at": self.updated_at,
                               "action": self.action}
        if self.challengers:
            doc["challengers"] = [a.to_doc() for a in self.challengers]
        if self.shadows:
            doc["shadows"] = [a.to_doc() for a in self.shadows]
        return doc

    @classmethod
    def from_doc(cls, name: str, d: dict[str, Any]) -> Deployment:
        def arms(key: str) -> tuple[Arm, ...]:
            return tuple(Arm(str(a["name"]), str(a["bundle"]), float(a.get("share", 0.0))) for a in d.get(key, ()))

        return cls(name, d["bundle"], tuple(d.get("history", ())), d.get("updated_at", ""), d.get("action", ""),
                   arms("challengers"), arms("shadows"))

    @property
    def serving(self) -> tuple[str, tuple[Arm, ...], tuple[Arm, ...]]:
        """What a replica serves for this deployment: a change here is a swap."""
        return self.bundle, self.challengers, self.shadows


@dataclass(frozen=True)
class Index:
    version: int = 0
    deployments: dict[str, Deployment] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {"version": self.version, "deployments": {k: d.to_doc() for k, d in sorted(self.deployments.items())}}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> Index:
        try:
            doc = json.loads(data)
            deps = {name: Deployment.from_doc(name, d) for name, d in doc["deployments"].items()}
            return cls(int(doc["version"]), deps)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{where}: unreadable registry index: {exc}") from exc


def _open(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    text = str(uri)
    if "://" not in text:  # a plain path: pyarrow wants it absolute
        text = str(Path(text).expanduser().resolve())
    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, ValueError) as exc:
        raise ConfigError(f"bundle registry {uri}: cannot open: {exc}") from exc
    return fs, root.rstrip("/")


class Registry:
    def __init__(self, uri: str | Path) -> None:
        self.uri = str(uri)
        self._fs, self._root = _open(uri)
        self._local = isinstance(self._fs, pafs.LocalFileSystem)

    # -- paths -----------------------------------------------------------------------
    def bundle_dir(self, bundle_id: str) -> str:
        return f"{self._root}/bundles/{bundle_id}"

    def where(self, bundle_id: str, name: str) -> str:
        """A bundle file as error messages name it."""
        return f"{self.bundle_dir(bundle_id)}/{name}"

    def _index_dir(self) -> str:
        return f"{self._root}/index"

    # -- bundles ---------------------------------------------------------------------
    def put(self, bundle: Bundle) -> str:
        """Store ``bundle`` (idempotent: the same content is the same id); its id."""
        bid = bundle.id
        base = self.bundle_dir(bid)
        if self._exists(f"{base}/{MANIFEST}"):
            return bid  # immutable: already complete, and the id proves the content
        self._fs.create_dir(base, recursive=True)
        for name, data in sorted(bundle.files.items()):
            self._write(f"{base}/{name}", data)
        self._write(f"{base}/{MANIFEST}", bundle.manifest_bytes)  # last: now the bundle exists
        return bid

    def ids(self) -> list[str]:
        """Every complete bundle (its manifest written), sorted."""
        sel = pafs.FileSelector(f"{self._root}/bundles", allow_not_found=True)
        dirs = [i.base_name for i in self._fs.get_file_info(sel) if i.type == pafs.FileType.Directory]
        return sorted(d for d in dirs if len(d) == ID_LENGTH and self._exists(f"{self.bundle_dir(d)}/{MANIFEST}"))

    def resolve(self, prefix: str) -> str:
        """A bundle id from a unique prefix (at least 6 characters), as ``git`` does."""
        if len(prefix) == ID_LENGTH:
            return prefix
        hits = [i for i in self.ids() if i.startswith(prefix)] if len(prefix) >= 6 else []
        if len(hits) != 1:
            why = "no bundle" if not hits else f"{len(hits)} bundles"
            raise BundleError([Problem(f"{self._root}/bundles", "bundle", f"{why} with id prefix {prefix!r}")])
        return hits[0]

    def read(self, bundle_id: str) -> Bundle:
        """The bundle's manifest and every file it lists (not yet checked: see ``validate``)."""
        base = self.bundle_dir(bundle_id)
        manifest = self._read(f"{base}/{MANIFEST}", MAX_FILE_BYTES)
        try:
            names = list(json.loads(manifest)["files"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError([Problem(f"{base}/{MANIFEST}", "files", f"unreadable manifest: {exc}")]) from exc
        files = {}
        for name in names:
            if "/" in name or name.startswith("."):
                raise BundleError([Problem(f"{base}/{MANIFEST}", f"files.{name}", "not a plain file name")])
            files[name] = self._read(f"{base}/{name}", MAX_FILE_BYTES)
        return Bundle(files, manifest)

    def extra_files(self, bundle_id: str, bundle: Bundle) -> list[str]:
        """Files in the bundle's directory its manifest does not list (something was added)."""
        sel = pafs.FileSelector(self.bundle_dir(bundle_id), allow_not_found=True)
        present = {i.base_name for i in self._fs.get_file_info(sel)}
        return sorted(present - set(bundle.files) - {MANIFEST})

    # -- the index -------------------------------------------------------------------
    def index(self) -> Index:
        """The newest index (version 0, nothing deployed, before the first promotion)."""
        latest = self._latest_index()
        if latest == 0:
            return Index()
        path = f"{self._index_dir()}/{latest:012d}.json"
        return Index.parse(self._read(path, MAX_INDEX_BYTES), path)

    def index_version(self) -> int:
        """The newest index version: one listing, what a replica polls."""
        return self._latest_index()

    def update(self, change: Callable[[Index], dict[str, Deployment]]) -> Index:
        """Apply ``change`` (old index -> new deployments) by compare-and-swap; the new index."""
        for _ in range(CAS_ATTEMPTS):
            current = self.index()
            new = Index(current.version + 1, change(current))
            if self._claim(f"{self._index_dir()}/{new.version:012d}.json", new.to_bytes()):
                return new
        raise IndexConflict(f"{self._index_dir()}: another writer kept updating the index; try again")

    # -- filesystem ------------------------------------------------------------------
    def _latest_index(self) -> int:
        sel = pafs.FileSelector(self._index_dir(), allow_not_found=True)
        versions = [int(i.base_name[:-5]) for i in self._fs.get_file_info(sel)
                    if i.base_name.endswith(".json") and i.base_name[:-5].isdigit()]
        return max(versions, default=0)

    def _exists(self, path: str) -> bool:
        return bool(self._fs.get_file_info(path).type == pafs.FileType.File)

    def _read(self, path: str, limit: int) -> bytes:
        info = self._fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise BundleError([Problem(path, "<file>", "missing")])
        if info.size is not None and info.size > limit:
            raise BundleError([Problem(path, "<file>", f"{info.size} bytes, more than the {limit} allowed")])
        with self._fs.open_input_stream(path) as f:
            data: bytes = f.read()
        return data

    def _write(self, path: str, data: bytes) -> None:
        """Temp name then rename: a reader sees the whole file or none of it."""
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self._fs.open_output_stream(tmp) as f:
            f.write(data)
        self._fs.move(tmp, path)

    def _claim(self, path: str, data: bytes) -> bool:
        """Write ``path`` only if it does not exist yet (False: someone else won)."""
        self._fs.create_dir(self._index_dir(), recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self._fs.open_output_stream(tmp) as f:
            f.write(data)
        try:
            if self._local:
                try:
                    os.link(tmp, path)  # atomic create-if-absent
                except FileExistsError:
                    return False
                return True
            if self._exists(path):
                return False
            self._fs.copy_file(tmp, path)
            return True
        finally:
            self._fs.delete_file(tmp)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def checksum_problems(registry: Registry, bundle_id: str, bundle: Bundle) -> list[Problem]:
    """The manifest hashes to the id, every file to its checksum, and nothing was added."""
    base = registry.bundle_dir(bundle_id)
    problems = []
    if sha256(bundle.manifest_bytes) != bundle_id:
        problems.append(Problem(f"{base}/{MANIFEST}", "<file>", "content does not hash to the bundle id: tampered"))
    for name, want in bundle.manifest["files"].items():
        got = sha256(bundle.files[name])
        if got != want:
            problems.append(Problem(f"{base}/{name}", "<file>",
                                    f"sha256 {got[:16]}… != manifest's {want[:16]}…: tampered"))
    problems += [Problem(f"{base}/{n}", "<file>", "not listed in the manifest") for n in
                 registry.extra_files(bundle_id, bundle) if ".tmp-" not in n]
    return problems

"""What a bundle is: its files, their checksums, and the manifest whose hash is its id.

A bundle is the unit that decides: a model, the policy, the features it reads, the
reason-code table, training metadata and a reference sample for the parity gate::

    manifest.json           what follows, with the sha256 of every file (the id hashes this)
    model.txt | model.json  LightGBM text, XGBoost JSON, or a scorecard spec (JSON)
    policy.yaml             the policy, byte for byte as the risk team wrote it
    features.json           the feature service and the model's inputs, by catalogue name
    reasons.json            the reason-code table the policy gives this model
    training.json           data window, holdout metrics, where the model came from
    reference_x.npy         reference rows (float32, the model's column order) ...
    reference_expected.npy  ... and what the source library predicted for them

The manifest holds no timestamps, so the same content always has the same id: building a
bundle twice stores it once. ``.npy`` rather than ``.npz`` because numpy's zip writer
stamps the time into the archive and the bytes would differ on every build.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from services.errors import ConfigError

FORMAT = "creditauth-bundle/1"
MANIFEST = "manifest.json"
POLICY = "policy.yaml"
FEATURES = "features.json"
REASONS = "reasons.json"
TRAINING = "training.json"
REFERENCE_X = "reference_x.npy"
REFERENCE_EXPECTED = "reference_expected.npy"
ModelKind = Literal["lightgbm", "xgboost", "scorecard"]
MODEL_FILES: dict[str, str] = {"lightgbm": "model.txt", "xgboost": "model.json", "scorecard": "scorecard.json"}
ID_LENGTH = 64


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a bundle: ``FILE:LINE: field: message`` (line 0: the file as a whole)."""

    file: str
    field: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class BundleError(ConfigError):
    """A bundle that cannot be used (tampered, broken, unknown); ``problems`` says where."""

    def __init__(self, problems: list[Problem] | str) -> None:
        self.problems = [Problem("<bundle>", "<bundle>", problems)] if isinstance(problems, str) else problems
        super().__init__("; ".join(str(p) for p in self.problems))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(doc: Any) -> bytes:
    """JSON with sorted keys: the same document always gives the same bytes (and hash)."""
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True)
class Bundle:
    """A bundle's files in memory; ``manifest`` lists them and ``id`` is its hash."""

    files: dict[str, bytes]
    manifest_bytes: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return sha256(self.manifest_bytes)

    @property
    def manifest(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.manifest_bytes)
        return doc

    @property
    def model_file(self) -> str:
        return str(self.manifest["model"]["file"])


def assemble(files: dict[str, bytes], summary: dict[str, Any]) -> Bundle:
    """The manifest over ``files`` (their checksums) and ``summary`` (model, policy, features)."""
    doc = {"format": FORMAT, **summary, "files": {name: sha256(data) for name, data in sorted(files.items())}}
    return Bundle(dict(files), canonical(doc))


def short(bundle_id: str) -> str:
    return bundle_id[:12]

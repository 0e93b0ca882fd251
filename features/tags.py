"""The tag catalogue, for the policy layer: names -> bit ids, masks, lookups.

Every merchant carries 1,000+ rule-derived tags packed in one Bytes feature
(``merchant_tags:tags``; tag ``t`` is bit ``t % 8`` of byte ``t // 8``). The catalogue
(``<data_dir>/offline/tag_catalog.json``, written with the offline tables) gives each
bit its id, name, description, owner and the rule that sets it. Policies refer to tags
by name; resolve the names once at load time and test bits per batch:

    catalog = TagCatalog.load(settings)
    ids = catalog.ids(["behaviour.flag.high_refunds", "behaviour.flag.dormant_7d"])
    flagged = batch.has_tags(ids)                      # (n, 2) bool
    any_risky = (batch.tag_words() & catalog.mask(catalog.match("behaviour.flag.*"))).any(axis=1)
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from features.errors import FeatureConfigError, FeatureDataError
from features.settings import FeatureSettings

__all__ = ["Tag", "TagCatalog", "load_catalog", "write_catalog"]


@dataclass(frozen=True)
class Tag:
    id: int
    name: str
    description: str
    owner: str
    rule: str  # human-readable rule, for audit


def load_catalog(path: Path) -> list[Tag]:
    """The tags of a catalogue JSON file (a list of ``Tag`` fields per tag)."""
    return [Tag(**t) for t in json.loads(path.read_text())]


def write_catalog(path: Path, tags: Iterable[Tag]) -> None:
    path.write_text(json.dumps([asdict(t) for t in tags], indent=1))


class TagCatalog:
    """An immutable, indexed view of the tag catalogue."""

    def __init__(self, tags: Iterable[Tag]) -> None:
        self._tags = tuple(sorted(tags, key=lambda t: t.id))
        if [t.id for t in self._tags] != list(range(len(self._tags))):
            raise FeatureDataError("tag ids must be 0..n-1 without gaps")
        self._by_name = {t.name: t for t in self._tags}
        if len(self._by_name) != len(self._tags):
            raise FeatureDataError("tag names must be unique")

    @classmethod
    def load(cls, source: FeatureSettings | Path) -> TagCatalog:
        """From the settings' data directory or a catalogue JSON path."""
        path = source.tag_catalog_path if isinstance(source, FeatureSettings) else source
        try:
            return cls(load_catalog(path))
        except (OSError, ValueError, TypeError) as exc:
            raise FeatureDataError(f"tag catalogue {path} unreadable: {exc}") from exc

    def __len__(self) -> int:
        return len(self._tags)

    def __iter__(self) -> Iterator[Tag]:
        return iter(self._tags)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def n_bytes(self) -> int:
        """Bytes of the packed bitset: whole 64-bit words covering every tag."""
        return 8 * ((len(self._tags) + 63) // 64)

    def tag(self, name: str) -> Tag:
        try:
            return self._by_name[name]
        except KeyError:
            raise FeatureConfigError(f"unknown tag {name!r}") from None

    def by_id(self, tag_id: int) -> Tag:
        if not 0 <= tag_id < len(self._tags):
            raise FeatureConfigError(f"tag id {tag_id} out of range 0..{len(self._tags) - 1}")
        return self._tags[tag_id]

    def id(self, name: str) -> int:
        return self.tag(name).id

    def ids(self, names: Iterable[str]) -> npt.NDArray[np.int64]:
        """Bit ids of ``names``, in order; an unknown name is a configuration error."""
        return np.asarray([self.tag(n).id for n in names], dtype=np.int64)

    def match(self, pattern: str) -> list[str]:
        """Names matching a shell-style pattern, e.g. ``"bureau.delinquencies.*"``."""
        return [t.name for t in self._tags if fnmatch.fnmatchcase(t.name, pattern)]

    def mask(self, names: Iterable[str]) -> npt.NDArray[np.uint64]:
        """uint64 words with the bits of ``names`` set, shaped like ``FeatureBatch.tag_words()``
        rows: ``(batch.tag_words() & mask).any(axis=1)`` is "carries any of them"."""
        words = np.zeros(self.n_bytes // 8, dtype=np.uint64)
        for i in self.ids(names):
            words[i // 64] |= np.uint64(1) << np.uint64(i % 64)
        return words

    def names_of(self, bits: npt.NDArray[np.uint8]) -> list[str]:
        """The names of the tags set in one row of ``FeatureBatch.tags``."""
        on = np.flatnonzero(np.unpackbits(np.asarray(bits, dtype=np.uint8), bitorder="little"))
        return [self._tags[i].name for i in on if i < len(self._tags)]

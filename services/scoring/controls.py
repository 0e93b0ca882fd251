"""Operator controls applied to a batch's decisions: compiled once per version, applied per batch.

A version of the control set (``features.controls.ControlSnapshot``) is compiled into
tables over the ``K`` active controls: for each scope dimension a ``(K, values + 1)`` bool
table (the last column answers "unknown", e.g. a merchant without features), the (control,
tag) bit pairs, a sorted merchant list with its ``(merchants + 1, K)`` membership, and the
effects as ``(K,)`` arrays. A batch is then a handful of gathers into a ``(K, n)`` match
matrix and reductions over it: no loop over rows, none over controls.

Effects combine without compounding: the smallest limit factor and the largest APR
add-on of the controls that match apply; refer turns an approval into a review; decline
and pause decline. Every control that matches a decision is named in its reasons
(prepended, before the policy's own), whether or not a stricter one dominated it.
Names (products, channels, regions, industries, tags) are resolved at compile time; a
name this replica cannot resolve matches nothing (and is logged), and ``Vocabulary.check``
refuses such names when a control is set.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from features import MATRIX_COLUMNS, FeatureBatch, TagCatalog
from features.controls import Control, ControlCache, ControlError, ControlSnapshot
from services.schema.columns import MAX_REASONS
from services.schema.enums import APPROVE, CHANNELS, DECLINE, PRODUCTS, REVIEW
from services.schema.records import Rows

log = logging.getLogger(__name__)
_REGION = MATRIX_COLUMNS.index("region_code")
_INDUSTRY = MATRIX_COLUMNS.index("industry_code")
_CODE_RULE = re.compile(r"^(region_code|industry_code) == (\d+)$")
B2 = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Vocabulary:
    """The names a control may use, and their codes on the serving side."""

    regions: Mapping[str, int]
    industries: Mapping[str, int]
    tags: Mapping[str, int]
    products: Mapping[str, int]
    channels: Mapping[str, int]

    @classmethod
    def from_catalog(cls, catalog: TagCatalog | None) -> Vocabulary:
        """Regions and industries by name from the catalogue's identity tags
        (``identity.region.R05``: ``region_code == 4``); products and channels from the proto."""
        codes: dict[str, dict[str, int]] = {"region_code": {}, "industry_code": {}}
        tags: dict[str, int] = {}
        for t in catalog or ():
            tags[t.name] = t.id
            m = _CODE_RULE.match(t.rule)
            if m and t.name.startswith(("identity.region.", "identity.industry.")):
                codes[m.group(1)][t.name.rsplit(".", 1)[1]] = int(m.group(2))
        return cls(
            codes["region_code"], codes["industry_code"], tags,
            {p: i for i, p in enumerate(PRODUCTS, start=1)}, {c: i for i, c in enumerate(CHANNELS, start=1)},
        )

    def code(self, dimension: str, value: str) -> int | None:
        """The code of a name (a region or industry may also be given by its numeric code)."""
        table: Mapping[str, int] = getattr(self, dimension)
        if value in table:
            return table[value]
        if dimension in ("regions", "industries") and value.isdigit():
            return int(value)
        return None

    def check(self, control: Control) -> None:
        """Raise ``ControlError`` naming the first value this vocabulary does not know.

        Regions, industries and tags are checked only where a tag catalogue was loaded."""
        for dim in ("products", "channels", "regions", "industries", "tags"):
            known: Mapping[str, int] = getattr(self, dim)
            if dim in ("regions", "industries", "tags") and not self.tags:
                continue
            for i, v in enumerate(getattr(control.scope, dim)):
                if self.code(dim, v) is None:
                    sample = ", ".join(list(known)[:8])
                    raise ControlError(f"scope.{dim}[{i}]", f"unknown {dim[:-1]} {v!r} (known: {sample}, ...)")


@dataclass(frozen=True)
class Compiled:
    """One version's active controls as arrays (see the module doc)."""

    version: int
    valid_until: float  # the earliest expiry among them: compile again after it
    products: B2  # (K, len(PRODUCTS) + 1)
    channels: B2
    regions: B2  # (K, codes + 1): last column "unknown"
    industries: B2
    tag_pairs: npt.NDArray[np.int64]  # (P,) tag ids, grouped by control
    tag_starts: npt.NDArray[np.intp]  # (K,) where each control's pairs start in tag_pairs
    has_tags: npt.NDArray[np.bool_]
    merchants: npt.NDArray[np.bytes_]  # (M,) sorted ids
    member: B2  # (M + 1, K): last row "not listed"
    has_merchants: npt.NDArray[np.bool_]
    factor: npt.NDArray[np.float64]
    apr_add: npt.NDArray[np.int32]
    refer: npt.NDArray[np.bool_]
    decline: npt.NDArray[np.bool_]
    reason: npt.NDArray[np.int16]  # index into the batch's reason table
    # Pairs of dimensions as one table each, so a batch does two gathers, not four:
    # (K, products x channels) and (K, regions x industries), row-major.
    product_channel: B2 = field(init=False)
    region_industry: B2 = field(init=False)
    tag_owner: npt.NDArray[np.intp] = field(init=False)  # (P,) the control each tag pair belongs to

    def __post_init__(self) -> None:
        k = self.size
        pc = self.products[:, :, None] & self.channels[:, None, :]
        ri = self.regions[:, :, None] & self.industries[:, None, :]
        object.__setattr__(self, "product_channel", pc.reshape(k, pc.shape[1] * pc.shape[2]))
        object.__setattr__(self, "region_industry", ri.reshape(k, ri.shape[1] * ri.shape[2]))
        pairs = np.arange(self.tag_pairs.size)
        object.__setattr__(self, "tag_owner", np.searchsorted(self.tag_starts, pairs, side="right") - 1)

    @property
    def size(self) -> int:
        return len(self.factor)


def _table(controls: tuple[Control, ...], dim: str, vocab: Vocabulary, width: int) -> B2:
    """(K, width + 1): which values each control's ``dim`` admits (all, where it names none)."""
    out = np.zeros((len(controls), width + 1), dtype=bool)
    for k, c in enumerate(controls):
        values = getattr(c.scope, dim)
        if not values:
            out[k] = True  # unconstrained: every value, "unknown" too
            continue
        for v in values:
            code = vocab.code(dim, v)
            if code is None or not 0 <= code < width:
                log.error("control %s v%d: %s %r unknown here: it matches nothing", c.id, c.version, dim, v)
            else:
                out[k, code] = True
    return out


def _width(controls: tuple[Control, ...], dim: str, vocab: Vocabulary) -> int:
    codes = [vocab.code(dim, v) for c in controls for v in getattr(c.scope, dim)]
    known: Mapping[str, int] = getattr(vocab, dim)
    return max([*(x for x in codes if x is not None), *known.values(), -1]) + 1


def compile_controls(snap: ControlSnapshot, now: float, vocab: Vocabulary, reason_offset: int) -> Compiled:
    """The active controls of ``snap`` as arrays; reason indices start at ``reason_offset``."""
    cs = snap.active(now)
    k = len(cs)
    pairs: list[int] = []
    starts: list[int] = []
    for c in cs:
        starts.append(len(pairs))
        ids = [vocab.tags.get(name) for name in c.scope.tags]
        if None in ids:
            log.error("control %s v%d: tags unknown here match nothing: %s", c.id, c.version,
                      [t for t, i in zip(c.scope.tags, ids, strict=True) if i is None])
        pairs += [t for t in ids if t is not None]
    listed = sorted({m.encode() for c in cs for m in c.scope.merchants})
    index = {m: i for i, m in enumerate(listed)}
    member = np.zeros((len(listed) + 1, k), dtype=bool)
    for j, c in enumerate(cs):
        member[[index[m.encode()] for m in c.scope.merchants], j] = True
    return Compiled(
        version=snap.version,
        valid_until=min((c.expires_at for c in cs), default=float("inf")),
        products=_table(cs, "products", vocab, len(PRODUCTS) + 1),
        channels=_table(cs, "channels", vocab, len(CHANNELS) + 1),
        regions=_table(cs, "regions", vocab, _width(cs, "regions", vocab)),
        industries=_table(cs, "industries", vocab, _width(cs, "industries", vocab)),
        tag_pairs=np.asarray(pairs, dtype=np.int64),
        tag_starts=np.asarray(starts, dtype=np.intp),
        has_tags=np.array([bool(c.scope.tags) for c in cs], dtype=bool),
        merchants=np.array(listed, dtype="S64"),
        member=member,
        has_merchants=np.array([bool(c.scope.merchants) for c in cs], dtype=bool),
        factor=np.array([c.limit_factor if c.effect == "limit_factor" else 1.0 for c in cs]),
        apr_add=np.array([c.apr_add_bps if c.effect == "apr_add" else 0 for c in cs], dtype=np.int32),
        refer=np.array([c.effect == "refer" for c in cs], dtype=bool),
        decline=np.array([c.effect in ("decline", "pause") for c in cs], dtype=bool),
        reason=np.array([reason_offset + c.reason_slot for c in cs], dtype=np.int16),
    )


def _codes(values: npt.NDArray[np.float32], width: int) -> npt.NDArray[np.intp]:
    """Feature codes as table columns; NaN (unknown merchant) and out-of-range -> ``width``."""
    ok = ~np.isnan(values) & (values >= 0) & (values < width)
    return np.where(ok, np.nan_to_num(values), width).astype(np.intp)


def _tag_match(c: Compiled, feats: FeatureBatch) -> B2:
    """(K, n): each row carries any of each control's tags (True where a control names none)."""
    n = len(feats)
    out = np.ones((c.size, n), dtype=bool)
    if not c.has_tags.any():
        return out
    out[c.has_tags] = False
    words = feats.tag_words() if feats.tags.shape[1] else np.zeros((n, 0), np.uint64)
    ids = c.tag_pairs
    if ids.size and words.shape[1]:
        inside = ids < words.shape[1] * 64
        safe = np.where(inside, ids, 0)
        bits = (words[:, safe // 64] >> (safe % 64).astype(np.uint64)) & np.uint64(1)  # (n, P)
        bits = bits.astype(bool) & inside
        hit = np.zeros((c.size, n), dtype=bool)
        np.logical_or.at(hit, c.tag_owner, bits.T)
        out[c.has_tags] = hit[c.has_tags]
    return out


def _merchant_match(c: Compiled, merchant_ids: npt.NDArray[np.bytes_]) -> B2:
    if not c.has_merchants.any():
        return np.ones((c.size, len(merchant_ids)), dtype=bool)
    pos = np.searchsorted(c.merchants, merchant_ids)
    pos = np.minimum(pos, len(c.merchants) - 1)
    found = c.merchants[pos] == merchant_ids
    rows = np.where(found, pos, len(c.merchants))
    listed: B2 = c.member[rows].T
    return listed | ~c.has_merchants[:, None]


def match(c: Compiled, requests: Rows, feats: FeatureBatch) -> B2:
    """(K, n): which controls touch which requests (two gathers, then tags and lists where named)."""
    chan = c.channels.shape[1]
    m = c.product_channel[:, requests["product"].astype(np.intp) * chan + requests["channel"]]
    ind = c.industries.shape[1]
    where = _codes(feats.matrix[:, _REGION], c.regions.shape[1] - 1) * ind
    m &= c.region_industry[:, where + _codes(feats.matrix[:, _INDUSTRY], ind - 1)]
    if c.has_tags.any():
        m &= _tag_match(c, feats)
    if c.has_merchants.any():
        m &= _merchant_match(c, requests["merchant_id"])
    return m


def apply(c: Compiled, requests: Rows, feats: FeatureBatch, out: Rows, reason_limit: int = 1 << 15) -> int:
    """Adjust the decided records ``out`` of ``requests``; returns how many the controls touched.

    ``reason_limit``: the batch's reason table length; a control whose entry is not in it yet
    (the registry could not be published) still applies, unnamed, rather than break the answer."""
    if c.size == 0:
        return 0
    m = match(c, requests, feats)
    touched = np.flatnonzero(m.any(axis=0))
    if touched.size == 0:
        return 0
    m = m[:, touched]
    # Field by field on the touched rows only (a structured copy would move whole records).
    d = out["decision"][touched]
    if c.refer.any():
        d[m[c.refer].any(axis=0) & (d == APPROVE)] = REVIEW
    if c.decline.any():
        d[m[c.decline].any(axis=0)] = DECLINE
    kept = d != DECLINE
    out["decision"][touched] = d
    limited = c.factor < 1.0
    approved = out["approved_minor"][touched]
    if limited.any():
        factor = np.where(m[limited], c.factor[limited, None], 1.0).min(axis=0)
        approved = np.floor(approved * factor).astype(np.int64)
    out["approved_minor"][touched] = approved * kept
    apr = out["apr_bps"][touched]
    priced = c.apr_add > 0
    if priced.any():
        apr = np.where(apr > 0, apr + np.where(m[priced], c.apr_add[priced, None], 0).max(axis=0), apr)
    out["apr_bps"][touched] = apr * kept
    named = m.T & (c.reason < reason_limit)[None, :]
    _prepend_reasons(out, touched, np.where(named, c.reason[None, :], -1).astype(np.int16))
    return int(touched.size)


def _prepend_reasons(out: Rows, touched: npt.NDArray[np.intp], ctrl: npt.NDArray[np.int16]) -> None:
    """The controls' reasons first, then the decision's own; empty slots last, ``MAX_REASONS`` kept.

    Each kept reason's slot is the count of reasons before it (a cumulative sum), so the
    rows are compacted with one scatter instead of a sort."""
    reason = np.concatenate([ctrl, out["reason"][touched]], axis=1)
    contrib = np.concatenate([np.zeros(ctrl.shape, np.float32), out["reason_contrib"][touched]], axis=1)
    valid = reason >= 0
    slot = np.cumsum(valid, axis=1) - 1
    keep = valid & (slot < MAX_REASONS)
    row, col = np.nonzero(keep)
    new_reason = np.full((len(touched), MAX_REASONS), -1, dtype=np.int16)
    new_contrib = np.zeros((len(touched), MAX_REASONS), dtype=np.float32)
    new_reason[row, slot[row, col]] = reason[row, col]
    new_contrib[row, slot[row, col]] = contrib[row, col]
    out["reason"][touched] = new_reason
    out["reason_contrib"][touched] = new_contrib


class ControlStage:
    """The engine's view of the controls: the cache, compiled per version and expiry.

    ``current`` is an attribute read and a comparison per batch; a new version (or an
    expiry passing) compiles once, on the scoring thread that first sees it.
    """

    def __init__(self, cache: ControlCache, vocab: Vocabulary, reason_offset: int) -> None:
        self.cache = cache
        self._vocab = vocab
        self._offset = reason_offset
        self._snap: ControlSnapshot | None = None
        self._compiled: Compiled | None = None
        self._at = 0.0  # the batch time it was compiled for

    def current(self, now: float) -> tuple[ControlSnapshot, Compiled]:
        snap, compiled = self.cache.snapshot, self._compiled
        # Again on a new set, once the earliest expiry has passed, or for a batch timed earlier.
        if compiled is None or snap is not self._snap or not self._at <= now < compiled.valid_until:
            compiled = compile_controls(snap, now, self._vocab, self._offset)
            self._snap, self._compiled, self._at = snap, compiled, now
        return snap, compiled

    def close(self) -> None:
        self.cache.close()

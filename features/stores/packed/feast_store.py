"""The packed layout as a Feast custom online store, for the SDK and the ``feast`` CLI.

``feature_store.yaml``::

    online_store:
      type: features.stores.packed.feast_store.PackedRedisOnlineStore
      connection_string: 127.0.0.1:6379,db=0

``feast materialize``, ``push`` and ``get_online_features`` then read and write the packed
layout (``features.stores.packed.layout``): one ``SET`` per entity and view, one ``MGET``
per batch and view. This is the reference the project's compiled reader and writer are
tested against; it is plain redis-py and protobuf, written for clarity, not speed.
The connection string is Feast's own Redis one, and the redis-py client is the one Feast's
standard store builds from it, so the yaml carries credentials and TLS exactly as for
Feast's standard store. A single Redis server only: on a cluster the keys of a batch span
slots (``MGET`` would need splitting per node), which this store does not do yet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, Literal

from feast import Entity, FeatureView, RepoConfig, utils
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import compute_versioned_name
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import RepeatedValue
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel
from pydantic import StrictStr

from features.stores.packed import layout

CLASS_PATH = "features.stores.packed.feast_store.PackedRedisOnlineStore"
_SCAN_COUNT = 10_000

Row = tuple[EntityKeyProto, dict[str, ValueProto], dt.datetime, dt.datetime | None]


class PackedRedisOnlineStoreConfig(FeastConfigBaseModel):
    """Online store config of the packed Redis layout (a Redis server, or a cluster)."""

    type: Literal["features.stores.packed.feast_store.PackedRedisOnlineStore"] = (
        "features.stores.packed.feast_store.PackedRedisOnlineStore"
    )
    connection_string: StrictStr = "localhost:6379"
    """Feast's Redis connection string: ``host:port,db=0,password=...,ssl=true``."""
    key_ttl_seconds: int | None = None
    """Expire each entity's view after this long (None: never), as Feast's Redis store."""
    skip_dedup: bool = False
    """Write every row, without first reading the stored event times (Feast's option)."""
    redis_type: Literal["redis", "redis_cluster"] = "redis"
    """``redis_cluster``: redis-py's cluster client (an entity's views share a slot: its hash tag)."""


def _view_name(table: FeatureView, config: RepoConfig) -> str:
    return compute_versioned_name(table, config.registry.enable_online_feature_view_versioning)


def _schema(table: FeatureView, name: str) -> int:
    return layout.schema_id(name, ((f.name, f.dtype.to_value_type().name) for f in table.features))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _event_us(ts: dt.datetime) -> int:
    delta = utils.make_tzaware(ts) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class PackedRedisOnlineStore(OnlineStore):
    """One Redis string per entity and feature view (see ``features.stores.packed.layout``)."""

    _client: Any = None

    def _redis(self, config: RepoConfig) -> Any:
        """Feast's own redis-py client for the connection string (Feast builds and configures it)."""
        if self._client is None:
            standard = RedisOnlineStoreConfig(connection_string=config.online_store.connection_string,
                                              redis_type=config.online_store.redis_type)
            self._client = RedisOnlineStore()._get_client(standard)
        return self._client

    def _keys(self, config: RepoConfig, view: str, entity_keys: Sequence[EntityKeyProto]) -> list[bytes]:
        version = config.entity_key_serialization_version
        return [
            layout.key(serialize_entity_key(ek, entity_key_serialization_version=version), config.project, view)
            for ek in entity_keys
        ]

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        cfg = config.online_store
        client = self._redis(config)
        name = _view_name(table, config)
        schema = _schema(table, name)
        features = [f.name for f in table.features]
        keys = self._keys(config, name, [row[0] for row in data])
        stored = self._stored_event_us(client, keys) if not cfg.skip_dedup else [0] * len(keys)
        latest: dict[bytes, int] = {}
        with client.pipeline(transaction=False) as pipe:
            for key, prev, (_, values, ts, _) in zip(keys, stored, data, strict=True):
                event_us = _event_us(ts)
                # Feast's rule: skip a row not newer than the stored one or an earlier row of the batch.
                seen = max(prev, latest.get(key, 0))
                if not cfg.skip_dedup and seen and event_us <= seen:
                    continue
                latest[key] = event_us
                blob = layout.pack(schema, event_us, [_serialized(values.get(f)) for f in features])
                pipe.set(key, blob, ex=cfg.key_ttl_seconds)
            pipe.execute()
        if progress:
            progress(len(data))

    @staticmethod
    def _stored_event_us(client: Any, keys: list[bytes]) -> list[int]:
        """Each key's stored event time (0: none), reading only its header bytes."""
        start, end = layout.HEADER_BYTES - 8, layout.HEADER_BYTES - 1
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.getrange(key, start, end)
            raw = pipe.execute()
        return [int.from_bytes(r, "little", signed=True) if len(r) == 8 else 0 for r in raw]

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[dt.datetime | None, dict[str, ValueProto] | None]]:
        name = _view_name(table, config)
        schema = _schema(table, name)
        features = [f.name for f in table.features]
        wanted = set(requested_features or features)
        client = self._redis(config)
        # On a cluster the entities' keys span slots: redis-py splits the MGET per slot.
        mget = client.mget_nonatomic if config.online_store.redis_type == "redis_cluster" else client.mget
        blobs = mget(self._keys(config, name, entity_keys)) if entity_keys else []
        return [_row(blob, schema, name, features, wanted) for blob in blobs]

    def update(  # noqa: PLR0917 (Feast's signature)
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        # Strings need no schema set-up; a view removed from the registry takes its rows with it.
        for table in tables_to_delete:
            self._drop(config, layout.scan_pattern(config.project, _view_name(table, config)))

    def teardown(self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]) -> None:
        for table in tables:
            self._drop(config, layout.scan_pattern(config.project, _view_name(table, config)))

    def _drop(self, config: RepoConfig, pattern: bytes) -> None:
        client = self._redis(config)
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=_SCAN_COUNT):
            batch.append(key)
            if len(batch) >= _SCAN_COUNT:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)


def _serialized(value: ValueProto | None) -> bytes:
    return b"" if value is None else value.SerializeToString()


def _row(
    blob: bytes | None, schema: int, name: str, features: list[str], wanted: set[str]
) -> tuple[dt.datetime | None, dict[str, ValueProto] | None]:
    if blob is None:
        return None, None
    stored_schema, event_us = layout.unpack_header(blob)
    if stored_schema != schema:
        raise ValueError(
            f"packed row of {name} was written under another definition of the view "
            f"(schema {stored_schema:#010x}, now {schema:#010x}): materialize it again"
        )
    values = RepeatedValue.FromString(blob[layout.HEADER_BYTES:]).val
    if len(values) != len(features):
        raise ValueError(f"packed row of {name} holds {len(values)} values for {len(features)} features")
    ts = _EPOCH + dt.timedelta(microseconds=event_us)
    return ts, {f: v for f, v in zip(features, values, strict=True) if f in wanted}

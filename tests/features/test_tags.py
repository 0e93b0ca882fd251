"""The tag catalogue API and the tag bits merchants carry."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from features import FeatureError, TagCatalog
from features.errors import FeatureConfigError
from features.stores import open_backend
from tests.conftest import World, feature_settings


@pytest.fixture(scope="module")
def tag_catalog(world: World) -> TagCatalog:
    return TagCatalog.load(feature_settings(world))


def test_catalogue_has_1024_plus_named_owned_tags(tag_catalog: TagCatalog) -> None:
    assert len(tag_catalog) >= 1024
    assert tag_catalog.n_bytes == 8 * ((len(tag_catalog) + 63) // 64)
    assert all(t.name and t.description and t.owner and t.rule for t in tag_catalog)
    assert {t.owner for t in tag_catalog} >= {"kyc", "bureau", "risk-data", "risk-analytics"}


def test_bit_ids_are_stable(tag_catalog: TagCatalog) -> None:
    # Rules are only ever appended: these ids are part of the contract with policies.
    assert tag_catalog.id("identity.industry.grocery") == 0
    assert tag_catalog.id("identity.region.R01") == 12
    assert tag_catalog.id("behaviour.rev_mean_7d.v00") == 54
    assert tag_catalog.by_id(1045).name == "behaviour.industry_revenue.wholesale.q4"
    assert tag_catalog.id("behaviour.flag.long_gap_30d") == 1046


def test_names_resolve_and_unknown_names_are_config_errors(tag_catalog: TagCatalog) -> None:
    ids = tag_catalog.ids(["bureau.has_record", "behaviour.flag.night_trader"])
    assert [tag_catalog.by_id(int(i)).name for i in ids] == ["bureau.has_record", "behaviour.flag.night_trader"]
    assert "bureau.has_record" in tag_catalog and "nope" not in tag_catalog
    with pytest.raises(FeatureConfigError):
        tag_catalog.id("no.such.tag")
    with pytest.raises(FeatureError):
        tag_catalog.by_id(len(tag_catalog))
    assert len(tag_catalog.match("bureau.delinquencies.*")) == 4


def test_read_bits_agree_with_the_rules(world: World, tag_catalog: TagCatalog) -> None:
    off = world.data_dir / "offline"
    bureau = pl.read_parquet(off / "merchant_bureau.parquet").select("merchant_id", "delinquencies_12m")
    flows = pl.read_parquet(off / "merchant_flows.parquet").select("merchant_id", "refund_ratio_30d")
    ids = flows["merchant_id"].head(300).to_list()
    batch = open_backend(feature_settings(world)).reader().read(ids)
    names = ["bureau.has_record", "bureau.delinquencies.0", "behaviour.flag.high_refunds"]
    got = batch.has_tags(tag_catalog.ids(names))
    has_bureau = set(bureau["merchant_id"].to_list())
    clean = set(bureau.filter(pl.col("delinquencies_12m") == 0)["merchant_id"].to_list())
    refunds = dict(zip(flows["merchant_id"].to_list(), flows["refund_ratio_30d"].to_list(), strict=True))
    for i, m in enumerate(ids):
        assert got[i, 0] == (m in has_bureau)
        assert got[i, 1] == (m in clean)
        assert got[i, 2] == (refunds[m] is not None and refunds[m] > 0.05)
    # Masks over uint64 words say the same as bit tests.
    mask = tag_catalog.mask(names)
    assert np.array_equal((batch.tag_words() & mask).any(axis=1), got.any(axis=1))
    row = tag_catalog.names_of(batch.tags[0])
    assert sum(n.startswith("identity.industry.") for n in row) == 1

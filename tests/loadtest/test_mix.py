"""The request mix: realistic, skewed, tagged, and pre-encoded exactly like the proto."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from creditauth.v1 import authorization_pb2 as pb
from loadtest.mix import Kind, RequestMix
from tests.loadtest.echo_server import invalid_field


def test_encoded_requests_are_byte_for_byte_the_messages_the_builder_makes(population: Path) -> None:
    fast = RequestMix(population, seed=5, invalid_share=0.1, unknown_share=0.1, id_prefix="t")
    slow = RequestMix(population, seed=5, invalid_share=0.1, unknown_share=0.1, id_prefix="t")
    body, kinds = fast.batch_encoded(500)
    decoded = pb.AuthorizeBatchRequest.FromString(body)
    expected, expected_kinds = slow.tagged_batch(500)
    assert decoded == expected
    assert kinds == expected_kinds
    one, kind = fast.next_encoded()
    again, kind2 = slow.next_tagged()
    assert pb.AuthorizeRequest.FromString(one) == again and kind == kind2


def test_shares_of_bad_and_unknown_requests(population: Path) -> None:
    mix = RequestMix(population, seed=1, invalid_share=0.05, unknown_share=0.10)
    kinds = Counter(mix.next_tagged()[1] for _ in range(20_000))
    assert kinds[Kind.BAD] / 20_000 == pytest.approx(0.05, abs=0.01)
    assert kinds[Kind.UNKNOWN] / 20_000 == pytest.approx(0.10, abs=0.01)


def test_bad_requests_are_really_invalid_and_good_ones_valid(population: Path) -> None:
    mix = RequestMix(population, seed=2, invalid_share=0.3, unknown_share=0.1)
    reasons: Counter[str] = Counter()
    for _ in range(2000):
        req, kind = mix.next_tagged()
        bad = invalid_field(req)
        assert (bad is not None) == (kind == Kind.BAD), (req, kind)
        if bad:
            reasons[bad] += 1
        if kind == Kind.UNKNOWN:
            assert req.merchant_id.startswith("UNKNOWN")
    # Every kind of invalidity shows up: negative amount, currency, missing merchant, term.
    assert set(reasons) == {"requested_amount.amount_minor", "requested_amount.currency", "merchant_id", "term_months"}


def test_merchant_popularity_is_skewed_and_ids_are_unique(population: Path) -> None:
    mix = RequestMix(population, seed=3, unknown_share=0.0)
    reqs = [mix.next() for _ in range(10_000)]
    top = Counter(r.merchant_id for r in reqs).most_common(1)[0][1]
    assert top > 5 * (10_000 / 500)  # the favourite merchant: far above a uniform share
    assert len({r.application_id for r in reqs}) == 10_000
    # Amounts and terms come from the population's past applications.
    assert all(r.requested_amount.amount_minor > 0 and r.term_months in (3, 6, 12, 18, 24, 36) for r in reqs)


def test_missing_population_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="creditauth data generate"):
        RequestMix(tmp_path)

"""Operator controls: decision tables per effect and scope, propagation under load on both
stores, restarts, expiry, the admin service's locked door, the CLI, and what they cost.

Everything runs through real parts: the engine built by the factory on the small world,
the SQLite and Redis control stores, a TLS front end with tokens.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from creditauth.v1 import controls_pb2 as cpb
from creditauth.v1 import controls_pb2_grpc as cpb_grpc
from features import MATRIX_COLUMNS, TagCatalog, open_backend
from features.controls import Control, ControlError, Scope
from features.stores.base import ControlStore
from services.frontend import FrontEnd
from services.frontend.controls import open_controls
from services.policy.decide import APPROVE, DECLINE, REVIEW
from services.runtime import LocalBackend
from services.schema.records import REQUEST_DTYPE, DecisionBatch, RequestBatch
from services.scoring import ScoringEngine
from services.scoring.controls import Vocabulary
from services.scoring.factory import build_engine
from services.settings import Settings, load_settings
from tests.conftest import World, feature_settings
from tests.e2e.api_checks import request
from tests.e2e.conftest import LoopThread
from tests.pki import Authority, TokenIssuer

N = 300
WAIT_S = 5.0  # bound on every wait for a replica to see a change (the target is 2 s)


def settings_of(world: World, **serving: Any) -> Settings:
    return load_settings(None, {"features": feature_settings(world).model_dump(), "serving": serving})


def ctl(cid: str, effect: str, code: str, scope: Scope, **kw: Any) -> Control:
    now = time.time()
    kw.setdefault("expires_at", now + 600)
    return Control(id=cid, scope=scope, effect=effect, reason_code=code, justification=f"test {cid}",
                   author="tester", set_at=now, **kw)


def batch(merchants: list[str], deadline: float | None = None) -> RequestBatch:
    """Requests for ``merchants``: products cycle 1..4, channels 1..5, fresh application ids."""
    r = np.zeros(len(merchants), REQUEST_DTYPE)
    r["application_id"] = [f"c-{uuid.uuid4().hex}".encode() for _ in merchants]
    r["merchant_id"] = [m.encode() for m in merchants]
    r["amount_minor"], r["currency"], r["term_months"] = 500_000, 0, 12
    r["product"] = np.arange(len(merchants)) % 4 + 1
    r["channel"] = np.arange(len(merchants)) % 5 + 1
    r["declared_revenue_minor"] = np.nan
    r["deadline"] = deadline or time.time() + 3600
    return RequestBatch(r)


def codes(resp: DecisionBatch) -> list[list[str]]:
    return [resp.reason_codes(i) for i in range(len(resp))]


def clear_all(store: ControlStore) -> None:
    for c in store.snapshot().controls:
        store.clear(c.id, "tester", "test cleanup", time.time())


@dataclass
class Table:
    """An engine (no velocity: the same request decides the same), its store and a baseline."""

    engine: ScoringEngine
    store: ControlStore
    merchants: list[str]
    region: np.ndarray
    industry: np.ndarray
    tags: np.ndarray  # (n, words) uint64
    vocab: Vocabulary

    def put(self, *controls: Control) -> None:
        version = 0
        for c in controls:
            version = self.store.put(c).version
        assert self.engine.controls is not None and self.engine.controls.wait_for(version, WAIT_S)

    def score(self, now: float | None = None) -> DecisionBatch:
        resp = self.engine.score(batch(self.merchants), now)
        assert (resp.status == 0).all()
        return resp


@pytest.fixture(scope="module")
def table(clean_world: World) -> Iterator[Table]:
    s = settings_of(clean_world, record_velocity=False)
    backend = open_backend(s.features)
    store = backend.controls()
    clear_all(store)
    engine = build_engine(s)
    merchants = [f"M{i:08d}" for i in range(N)] + ["NOBODY-1"]
    feats = backend.reader().read(merchants)
    t = Table(engine, store, merchants, feats.matrix[:, MATRIX_COLUMNS.index("region_code")],
              feats.matrix[:, MATRIX_COLUMNS.index("industry_code")], feats.tag_words(),
              Vocabulary.from_catalog(TagCatalog.load(s.features)))
    yield t
    clear_all(store)
    engine.close()
    store.close()


@pytest.fixture
def tbl(table: Table) -> Iterator[Table]:
    yield table
    clear_all(table.store)
    assert table.engine.controls is not None and table.engine.controls.wait_for(table.store.version(), WAIT_S)


def _name(mapping: dict[str, int] | Any, code: int) -> str:
    return next(k for k, v in mapping.items() if v == code)


def _common(values: np.ndarray) -> int:
    known = values[~np.isnan(values)].astype(int)
    return int(np.bincount(known).argmax())


def test_effects_by_product_and_channel(tbl: Table) -> None:
    base = tbl.score()
    rows = batch(tbl.merchants).rows
    tbl.put(
        ctl("wc-half", "limit_factor", "CTRL_WC_HALF", Scope(products=("WORKING_CAPITAL",)), limit_factor=0.5),
        ctl("web-apr", "apr_add", "CTRL_WEB_APR", Scope(channels=("WEB",)), apr_add_bps=250),
        ctl("eq-pause", "pause", "CTRL_EQ_PAUSE", Scope(products=("EQUIPMENT",))),
    )
    got = tbl.score()
    cs = codes(got)
    wc, web, eq = rows["product"] == 1, rows["channel"] == 3, rows["product"] == 3
    for i in range(len(rows)):
        expected = [c for c, on in (("CTRL_WC_HALF", wc[i]), ("CTRL_WEB_APR", web[i]), ("CTRL_EQ_PAUSE", eq[i])) if on]
        assert sorted(cs[i][: len(expected)]) == sorted(expected), i  # every touching control named, first
        assert cs[i][len(expected):] == base.reason_codes(i), i  # then the policy's own, unchanged
    d0, d1 = base["decision"], got["decision"]
    assert (d1[eq] == DECLINE).all() and (got["approved_minor"][eq] == 0).all() and (got["apr_bps"][eq] == 0).all()
    keep = ~eq
    assert (d1[keep] == d0[keep]).all()  # limit factors and APR add-ons never change the decision
    half = wc & (d0 != DECLINE)
    assert half.sum() > 10
    assert (got["approved_minor"][half] == np.floor(base["approved_minor"][half] * 0.5)).all()
    priced = web & keep & (base["apr_bps"] > 0)
    assert priced.sum() > 5 and (got["apr_bps"][priced] == base["apr_bps"][priced] + 250).all()
    untouched = ~(wc | web | eq)
    for col in ("decision", "approved_minor", "apr_bps", "reason"):
        assert (got[col][untouched] == base[col][untouched]).all(), col


def test_refer_by_region_and_decline_by_industry(tbl: Table) -> None:
    base = tbl.score()
    region, industry = _common(tbl.region), _common(tbl.industry)
    tbl.put(
        ctl("reg-refer", "refer", "CTRL_REGION_REFER", Scope(regions=(_name(tbl.vocab.regions, region),))),
        ctl("ind-decline", "decline", "CTRL_IND_DECLINE", Scope(industries=(str(industry),))),  # by code
    )
    got = tbl.score()
    in_region, in_industry = tbl.region == region, tbl.industry == industry
    assert in_region.sum() > 5 and in_industry.sum() > 5
    assert (got["decision"][in_industry] == DECLINE).all()
    referred = in_region & ~in_industry
    was = base["decision"][referred]
    assert (got["decision"][referred] == np.where(was == APPROVE, REVIEW, was)).all()
    assert (was == APPROVE).any()  # the table exercises an approval turned into a review
    for i in np.flatnonzero(in_region | in_industry):
        assert {"CTRL_REGION_REFER", "CTRL_IND_DECLINE"} & set(got.reason_codes(i))
    # The unknown merchant has no region or industry: a feature scope never touches it.
    assert not any(c.startswith("CTRL_") for c in got.reason_codes(N))
    other = ~(in_region | in_industry)
    assert (got["decision"][other] == base["decision"][other]).all()


def test_tags_merchant_lists_and_combined_scopes(tbl: Table) -> None:
    base = tbl.score()
    carried = np.unpackbits(tbl.tags[:N].view(np.uint8), axis=1, bitorder="little").sum(axis=0)
    tag = int(np.flatnonzero((carried > 20) & (carried < N - 20))[0])
    name = _name(tbl.vocab.tags, tag)
    has_tag = ((tbl.tags[:, tag // 64] >> np.uint64(tag % 64)) & np.uint64(1)).astype(bool)
    listed = [*tbl.merchants[10:20], "NOBODY-1"]
    region = _common(tbl.region)
    tbl.put(
        ctl("tag-decline", "decline", "CTRL_TAG", Scope(tags=(name,))),
        ctl("list-refer", "refer", "CTRL_LIST", Scope(merchants=tuple(listed))),
        ctl("both", "limit_factor", "CTRL_BOTH", Scope(regions=(str(region),), products=("INVENTORY",)),
            limit_factor=0.25),
        ctl("both-more", "limit_factor", "CTRL_BOTH_MORE", Scope(products=("INVENTORY",)), limit_factor=0.5),
    )
    got = tbl.score()
    rows = batch(tbl.merchants).rows
    assert (got["decision"][has_tag] == DECLINE).all()
    assert all("CTRL_TAG" in got.reason_codes(i) for i in np.flatnonzero(has_tag))
    assert all("CTRL_TAG" not in got.reason_codes(i) for i in np.flatnonzero(~has_tag))
    in_list = np.isin(np.array(tbl.merchants), listed)
    assert all(("CTRL_LIST" in got.reason_codes(i)) == bool(in_list[i]) for i in range(len(rows)))
    assert got["decision"][N] == REVIEW  # the unknown merchant, listed by id, is touched
    inv = rows["product"] == 2
    both = inv & (tbl.region == region) & ~has_tag
    only = inv & (tbl.region != region) & ~has_tag
    assert both.sum() > 0 and only.sum() > 0
    # The strictest factor applies, factors never compound, and both controls are named.
    assert (got["approved_minor"][both] == np.floor(base["approved_minor"][both] * 0.25)).all()
    assert (got["approved_minor"][only] == np.floor(base["approved_minor"][only] * 0.5)).all()
    assert all({"CTRL_BOTH", "CTRL_BOTH_MORE"} <= set(got.reason_codes(i)) for i in np.flatnonzero(both))
    assert all("CTRL_BOTH" not in got.reason_codes(i) for i in np.flatnonzero(only))


def test_expiry_and_restart(tbl: Table, clean_world: World) -> None:
    now = time.time()
    tbl.put(ctl("short", "decline", "CTRL_SHORT", Scope(products=("WORKING_CAPITAL",)), expires_at=now + 120))
    wc = batch(tbl.merchants).rows["product"] == 1
    assert (tbl.score(now)["decision"][wc] == DECLINE).all()
    # Past its expiry the control no longer applies (the engine's clock is the batch's).
    later = tbl.score(now + 121)
    assert all("CTRL_SHORT" not in later.reason_codes(i) for i in range(len(later)))
    # A replica started after the control was set brakes from its first batch.
    fresh = build_engine(settings_of(clean_world, record_velocity=False))
    try:
        first = fresh.score(batch(tbl.merchants), now)
        assert (first["decision"][wc] == DECLINE).all()
        assert all(first.reason_codes(int(i))[0] == "CTRL_SHORT" for i in np.flatnonzero(wc))
    finally:
        fresh.close()


def test_versions_and_audit(tbl: Table) -> None:
    v0 = tbl.store.version()
    a = tbl.store.put(ctl("aud", "refer", "CTRL_AUD", Scope(channels=("WEB",))))
    b = tbl.store.put(ctl("aud", "refer", "CTRL_AUD", Scope(channels=("BRANCH",))))
    cleared = tbl.store.clear("aud", "ops-2", "incident over", time.time())
    assert cleared is not None and cleared[0].scope.channels == ("BRANCH",) and cleared[1] == b.version + 1
    assert v0 < a.version < b.version
    assert tbl.store.clear("aud", "ops-2", "again", time.time()) is None
    tail = tbl.store.history(3)
    assert [(e.action, e.version, e.author) for e in tail] == [
        ("set", a.version, "tester"), ("set", b.version, "tester"), ("clear", b.version + 1, "ops-2")]
    assert tail[2].justification == "incident over" and tail[2].control.version == b.version
    # The reason entry of a control keeps its slot: the same code and text, the same slot.
    assert a.reason_slot == b.reason_slot >= 0


@pytest.mark.parametrize("field,change", [
    ("id", {"id": "bad id"}), ("reason_code", {"reason_code": "HIGH_VELOCITY"}),
    ("limit_factor", {"limit_factor": 1.5}), ("scope", {"scope": Scope()}),
    ("scope.products", {"effect": "pause", "limit_factor": 1.0, "scope": Scope(regions=("R01",))}),
    ("expires_at", {"expires_at": 1.0}), ("scope.merchants[1]", {"scope": Scope(merchants=("M1", "a b"))}),
])
def test_bad_controls_name_the_field(field: str, change: dict[str, Any]) -> None:
    base = ctl("ok", "limit_factor", "CTRL_OK", Scope(products=("WORKING_CAPITAL",)), limit_factor=0.5)
    doc = {**base.__dict__, **change}
    with pytest.raises(ControlError) as err:
        Control(**doc).check(time.time())
    assert err.value.field == field


# -- propagation under load ------------------------------------------------------------


class Scorer(threading.Thread):
    """Scores batches back to back; notes when decisions start and stop carrying ``code``."""

    def __init__(self, engine: ScoringEngine, merchants: list[str], code: str) -> None:
        super().__init__(daemon=True)
        self.engine, self.merchants, self.code = engine, merchants, code
        self.state = False
        self.changed = threading.Condition()
        self.seen_at = 0.0
        self.stop = threading.Event()
        self.batches = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                resp = self.engine.score(batch(self.merchants))
                done = time.perf_counter()
                on = any(self.code in cs for cs in codes(resp))
                with self.changed:
                    self.batches += 1
                    if on != self.state:
                        self.state, self.seen_at = on, done
                    self.changed.notify_all()
        except BaseException as exc:
            self.error = exc
            with self.changed:
                self.changed.notify_all()

    def wait_batches(self, n: int) -> None:
        """Let ``n`` more batches go by (spreads the next change over the poll period)."""
        with self.changed:
            target = self.batches + n
            assert self.changed.wait_for(lambda: self.batches >= target or self.error is not None, WAIT_S)

    def wait(self, state: bool) -> float:
        with self.changed:
            assert self.changed.wait_for(lambda: self.state == state or self.error is not None, WAIT_S), state
        assert self.error is None, self.error
        return self.seen_at


def propagation(world: World, repeats: int) -> list[float]:
    engine = build_engine(settings_of(world))
    store = open_backend(settings_of(world).features).controls()
    code = "CTRL_PROPAGATION"
    scorer = Scorer(engine, [f"M{i:08d}" for i in range(64)], code)
    scorer.start()
    out = []
    rng = np.random.default_rng(11)
    started = time.perf_counter()
    try:
        scorer.wait_batches(1)
        per_batch = (time.perf_counter() - started) / max(scorer.batches, 1)
        for _ in range(repeats):
            # A random phase against the cache's poll: without it each set would follow the
            # previous clear's poll by a fixed delay.
            scorer.wait_batches(int(rng.integers(0, max(2, int(0.5 / per_batch)))))
            t0 = time.perf_counter()
            store.put(ctl("prop", "refer", code, Scope(products=("WORKING_CAPITAL",))))
            out.append(scorer.wait(True) - t0)
            store.clear("prop", "tester", "next repeat", time.time())
            scorer.wait(False)
        assert scorer.batches > repeats  # it was scoring all along
    finally:
        scorer.stop.set()
        scorer.join(WAIT_S)
        clear_all(store)
        engine.close()
        store.close()
    return out


def _report(kind: str, lat: list[float]) -> None:
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    print(f"\ncontrol propagation ({kind}, {len(lat)} repeats, set -> first decision): "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms")
    assert max(lat) < 2.0


def test_propagation_sqlite(world: World) -> None:
    _report("sqlite, polling", propagation(world, 20))


def test_propagation_redis(redis_world: World) -> None:
    _report("redis, pub/sub", propagation(redis_world, 30))


class Unnotified:
    """The real Redis control store with its notification left unused: only the poll remains."""

    def __init__(self, store: ControlStore) -> None:
        self.store = store
        self.poll_s = store.poll_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def watch(self, notify: Any) -> None:
        return None


def test_redis_polling_fallback_without_notifications(redis_world: World) -> None:
    from features.controls import ControlCache

    s = settings_of(redis_world)
    store = open_backend(s.features).controls()
    cache = ControlCache(Unnotified(open_backend(s.features).controls())).start()  # type: ignore[arg-type]
    try:
        t0 = time.perf_counter()
        version = store.put(ctl("poll", "refer", "CTRL_POLL", Scope(channels=("WEB",)))).version
        assert cache.wait_for(version, WAIT_S)
        took = time.perf_counter() - t0
        print(f"\nredis without notifications: seen after {took * 1000:.0f} ms (poll every {cache.poll_s:g} s)")
        assert took < cache.poll_s + 0.5 < 2.0
    finally:
        cache.close()
        clear_all(store)
        store.close()


def test_redis_survives_restart_and_cleans_up(redis_world: World) -> None:
    s = settings_of(redis_world, record_velocity=False)
    store = open_backend(s.features).controls()
    try:
        store.put(ctl("r-decline", "decline", "CTRL_R", Scope(channels=("POS_TERMINAL",))))
        engine = build_engine(s)
        try:
            resp = engine.score(batch([f"M{i:08d}" for i in range(20)]))
            pos = batch(["x"] * 20).rows["channel"] == 1
            assert (resp["decision"][pos] == DECLINE).all() and resp.reason_codes(0)[0] == "CTRL_R"
        finally:
            engine.close()
    finally:
        clear_all(store)
        store.close()
    # Leave nothing of ours in the shared Redis: the counter, the audit, the registry.
    backend = open_backend(s.features)
    keys = [f"{s.features.project}:controls:{k}".encode() for k in ("active", "version", "reasons", "slots", "audit")]
    backend.client.command(b"UNLINK", *keys)  # type: ignore[attr-defined]
    assert backend.controls().version() == 0 and backend.controls().history(5) == []


# -- the admin service, over TLS with tokens, and the CLI -----------------------------


@dataclass
class Admin:
    lt: LoopThread
    fe: FrontEnd
    engine: ScoringEngine
    tokens: TokenIssuer
    ca: bytes
    root: Path


@pytest.fixture(scope="module")
def admin(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    root = tmp_path_factory.mktemp("controls-pki")
    ca, tokens = Authority(), TokenIssuer()
    cert, key = ca.issue("frontend.test", server=True).write(root, "server")
    (root / "jwt.pub").write_bytes(tokens.public_pem())
    (root / "ca.crt").write_bytes(ca.pem)
    s = load_settings(None, {
        "features": feature_settings(world).model_dump(), "serving": {"host": "127.0.0.1", "port": 0},
        "security": {
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            "callers": [{"name": "ops", "rights": ["admin"]}, {"name": "shop-b"}],
            "jwt": [{"issuer": tokens.issuer, "audience": tokens.audience, "key_file": str(root / "jwt.pub"),
                     "algorithms": ["ES256"]}],
        },
    })
    lt = LoopThread()
    engine = build_engine(s)
    servicer = open_controls(s)

    async def up() -> FrontEnd:
        fe = FrontEnd(LocalBackend(engine), s.serving, s.security, controls=servicer)
        await fe.start()
        return fe

    a = Admin(lt, lt.run(up()), engine, tokens, ca.pem, root)
    yield a
    clear_all(open_backend(s.features).controls())
    lt.run(a.fe.stop())
    lt.close()


def _channel(a: Admin) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=a.ca)
    options = [("grpc.ssl_target_name_override", "localhost")]
    return grpc.secure_channel(f"127.0.0.1:{a.fe.port}", creds, options=options)


def _md(a: Admin, who: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {a.tokens.token(who)}")]


def _set_request(**over: Any) -> cpb.SetControlRequest:
    c = cpb.Control(id="adm", effect=cpb.CONTROL_EFFECT_DECLINE, reason_code="CTRL_ADMIN", justification="drill",
                    scope=cpb.ControlScope(products=[pb.PRODUCT_INVENTORY]))
    for k, v in over.items():
        if isinstance(v, cpb.ControlScope):
            c.scope.CopyFrom(v)
        else:
            setattr(c, k, v)
    return cpb.SetControlRequest(control=c, ttl_seconds=600)


def test_admin_rpc_refuses_callers_without_the_admin_right(admin: Admin) -> None:
    with _channel(admin) as ch:
        stub = cpb_grpc.ControlsStub(ch)
        for call in (lambda md: stub.Set(_set_request(), metadata=md, timeout=10),
                     lambda md: stub.List(cpb.ListControlsRequest(), metadata=md, timeout=10),
                     lambda md: stub.Clear(cpb.ClearControlRequest(id="adm", justification="x"), metadata=md,
                                           timeout=10)):
            with pytest.raises(grpc.RpcError) as err:
                call(_md(admin, "shop-b"))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "admin" in (err.value.details() or "")
            with pytest.raises(grpc.RpcError) as err:
                call(None)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.List(cpb.ListControlsRequest(), metadata=_md(admin, "ops"), timeout=10).controls == []


def test_admin_sets_and_a_decision_names_the_control(admin: Admin) -> None:
    with _channel(admin) as ch:
        stub = cpb_grpc.ControlsStub(ch)
        resp = stub.Set(_set_request(), metadata=_md(admin, "ops"), timeout=10)
        assert resp.control.author == "ops" and resp.control.version == resp.version > 0
        assert admin.engine.controls is not None and admin.engine.controls.wait_for(resp.version, WAIT_S)
        r = pb_grpc.CreditAuthorizationStub(ch).Authorize(
            request(0, product=pb.PRODUCT_INVENTORY), metadata=_md(admin, "shop-b"), timeout=30)
        assert r.decision == pb.DECISION_DECLINE and r.reasons[0].code == "CTRL_ADMIN"
        assert "operator control adm, set by ops" in r.reasons[0].description
        listed = stub.List(cpb.ListControlsRequest(history=5), metadata=_md(admin, "ops"), timeout=10)
        assert [c.id for c in listed.controls] == ["adm"] and listed.history[-1].author == "ops"
        cleared = stub.Clear(cpb.ClearControlRequest(id="adm", justification="drill over"),
                             metadata=_md(admin, "ops"), timeout=10)
        assert cleared.cleared.id == "adm" and cleared.version == resp.version + 1
        with pytest.raises(grpc.RpcError) as err:
            stub.Clear(cpb.ClearControlRequest(id="adm", justification="again"), metadata=_md(admin, "ops"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("over,field", [
    ({"reason_code": "LOWER"}, "control.reason_code"),
    ({"effect": cpb.CONTROL_EFFECT_LIMIT_FACTOR, "limit_factor": 2.0}, "control.limit_factor"),
    ({"scope": cpb.ControlScope(tags=["no.such.tag"])}, "control.scope.tags[0]"),
    ({"scope": cpb.ControlScope(regions=["R01", "MARS"])}, "control.scope.regions[1]"),
    ({"scope": cpb.ControlScope(products=[99])}, "control.scope.products[0]"),
])
def test_admin_bad_input_names_the_field(admin: Admin, over: dict[str, Any], field: str) -> None:
    with _channel(admin) as ch:
        with pytest.raises(grpc.RpcError) as err:
            cpb_grpc.ControlsStub(ch).Set(_set_request(**over), metadata=_md(admin, "ops"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(f"{field}:")


def test_cli_set_list_clear(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli.main import main

    token = admin.root / "ops.jwt"
    token.write_text(admin.tokens.token("ops"))
    conn = ["--target", f"127.0.0.1:{admin.fe.port}", "--ca-file", str(admin.root / "ca.crt"),
            "--server-name", "localhost", "--token-file", str(token)]
    merchants = admin.root / "merchants.txt"
    merchants.write_text("# watch list\nM00000001\nM00000002\n")
    main(["controls", "set", *conn, "--id", "cli", "--effect", "limit_factor", "--limit-factor", "0.5",
          "--reason-code", "CTRL_CLI", "--justification", "from the cli", "--ttl", "10m",
          "--merchants-file", str(merchants), "--product", "working_capital"])
    assert "cli v" in capsys.readouterr().out
    main(["controls", "list", *conn, "--history", "2"])
    out = capsys.readouterr().out
    assert "CTRL_CLI" in out and "by ops" in out and "M00000002" in out
    main(["controls", "clear", *conn, "cli", "--justification", "done"])
    assert "cleared" in capsys.readouterr().out
    bad = admin.root / "bad.txt"
    bad.write_text("M00000001\nnot an id\n")
    with pytest.raises(SystemExit):
        main(["controls", "set", *conn, "--id", "x", "--effect", "refer", "--reason-code", "CTRL_X",
              "--justification", "j", "--ttl", "1m", "--merchants-file", str(bad)])
    assert f"{bad}:2: merchant id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["controls", "set", *conn, "--id", "x", "--effect", "refer", "--reason-code", "bad",
              "--justification", "j", "--ttl", "1m", "--channel", "WEB"])
    assert "control.reason_code" in (err := capsys.readouterr().err) and "--reason-code" in err


# -- what controls cost ---------------------------------------------------------------


def ten_controls(vocab: Vocabulary, merchants: list[str]) -> list[Control]:
    regions, industries = list(vocab.regions), list(vocab.industries)
    flags = [t for t in vocab.tags if t.startswith("behaviour.flag.")]
    return [
        ctl("b-r1", "limit_factor", "CTRL_B1", Scope(regions=(regions[0], regions[1])), limit_factor=0.5),
        ctl("b-r2", "limit_factor", "CTRL_B2", Scope(regions=(regions[2],)), limit_factor=0.8),
        ctl("b-i1", "refer", "CTRL_B3", Scope(industries=(industries[0],))),
        ctl("b-i2", "refer", "CTRL_B4", Scope(industries=(industries[1], industries[2]))),
        ctl("b-p", "pause", "CTRL_B5", Scope(products=("EQUIPMENT",))),
        ctl("b-c", "apr_add", "CTRL_B6", Scope(channels=("WEB", "PARTNER_API")), apr_add_bps=150),
        ctl("b-t1", "refer", "CTRL_B7", Scope(tags=(flags[0], flags[1]))),
        ctl("b-t2", "limit_factor", "CTRL_B8", Scope(tags=(flags[2],)), limit_factor=0.7),
        ctl("b-m", "decline", "CTRL_B9", Scope(merchants=tuple(merchants[::6]))),
        ctl("b-rp", "decline", "CTRL_B10", Scope(regions=(regions[3],), products=("INVENTORY",))),
    ]


def test_controls_cost_on_batch_throughput(world: World) -> None:
    """10 active controls vs none, one engine, one run: rounds alternate on/off (ABBA, after a
    warm-up round each), batches of 512; also the policy stage's time per batch, where they run."""
    s = settings_of(world)
    store = open_backend(s.features).controls()
    engine = build_engine(s)
    assert engine.controls is not None
    rng = np.random.default_rng(5)
    batches = [[f"M{i:08d}" for i in rng.integers(0, 3000, 512)] for _ in range(8)]
    controls = ten_controls(Vocabulary.from_catalog(TagCatalog.load(s.features)), [f"M{i:08d}" for i in range(3000)])
    rates: dict[str, list[float]] = {"on": [], "off": []}
    # CPU seconds of each batch on the scoring thread: what a busy, shared machine distorts least.
    cpu_s: dict[str, list[float]] = {"on": [], "off": []}
    policy_s: dict[str, list[float]] = {"on": [], "off": []}
    order = ["on", "off"] + ["on", "off", "off", "on"] * 4
    try:
        for k, arm in enumerate(order):
            if arm == "on":
                version = max(store.put(c).version for c in controls)
            else:
                clear_all(store)
                version = store.version()
            assert engine.controls.wait_for(version, WAIT_S)
            reqs = [batch(m) for m in batches]
            t0 = time.perf_counter()
            answers, cpu = [], []
            for b in reqs:
                c0 = time.thread_time()
                answers.append(engine.score(b))
                cpu.append(time.thread_time() - c0)
            elapsed = time.perf_counter() - t0
            assert len(engine.controls.snapshot.active(time.time())) == (10 if arm == "on" else 0)
            touched = sum(any(c.startswith("CTRL_B") for c in cs) for a in answers for cs in codes(a))
            assert (touched > 0) == (arm == "on")
            if k >= 2:  # the first pair warms the feature cache and the connections
                rates[arm].append(512 * len(reqs) / elapsed)
                cpu_s[arm] += cpu
                policy_s[arm] += [a.stage_s["policy"] for a in answers]
    finally:
        clear_all(store)
        engine.close()
        store.close()
    on, off = float(np.median(rates["on"])), float(np.median(rates["off"]))
    extra_ms = (np.median(policy_s["on"]) - np.median(policy_s["off"])) * 1000
    p_off, p_on = (float(np.median(policy_s[a])) * 1000 for a in ("off", "on"))
    c_on, c_off = (512 / float(np.median(cpu_s[a])) for a in ("on", "off"))
    print(f"\nengine batch throughput, batches of 512, {len(rates['on'])} rounds each: controls off {off:,.0f}/s, "
          f"10 controls on {on:,.0f}/s ({(1 - on / off) * 100:+.1f}%); policy stage +{extra_ms:.2f} ms per batch "
          f"with controls (median {p_off:.2f} -> {p_on:.2f} ms); per CPU second (median batch) "
          f"{c_off:,.0f} -> {c_on:,.0f} ({(1 - c_on / c_off) * 100:+.1f}%)")
    # Throughput on this shared 2-core machine swings by +-15% between runs; the controls' own
    # time, measured inside the engine where they run, is the steady figure. The target is
    # 10% with caps: the controls alone must stay well inside it.
    share = extra_ms / 1000 / float(np.median(cpu_s["off"]))
    print(f"controls' own time: {share * 100:.1f}% of a batch's CPU time")
    assert share < 0.05

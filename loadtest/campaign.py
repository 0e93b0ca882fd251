"""Campaign files: phases of load against a target, and the SLO gates that judge them.

See ``docs/loadtest.md`` and ``loadtest/campaigns/*.yaml`` for the format. Every
key is checked; unknown keys, wrong types and impossible values are rejected
with the file, line and key path, all problems at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loadtest.schedule import Schedule
from loadtest.targets import TargetRefused, check_target
from loadtest.yamlcheck import Reader, SchemaError

RPCS = ("unary", "batch", "stream")
ARRIVALS = ("uniform", "poisson")
# Sanity bounds: a campaign asking for more is a typo, not a plan.
MAX_PHASE_S = 24 * 3600.0
MAX_TOTAL_S = 48 * 3600.0
MAX_RATE = 5_000_000.0
_LABEL = r"[A-Za-z0-9._-]{1,40}"

_TOP = {
    "name", "description", "target", "target_label", "compare", "allowed_hosts", "data_dir",
    "processes", "seed", "timeout", "connect_timeout", "drain", "max_in_flight", "arrivals",
    "mix", "slo", "phases",
}
_MIX = {"rpc", "batch_size", "streams", "unknown_merchant_share", "invalid_share", "zipf"}
_SLO = {"p50_ms", "p99_ms", "p999_ms", "max_error_rate", "min_throughput"}
_PHASE = {
    "name", "mode", "duration", "rate", "ramp", "steps", "spike", "concurrency", "max_requests",
    "rpc", "batch_size", "arrivals", "gate", "slo",
}
_SHAPES = ("rate", "ramp", "steps", "spike")


class CampaignError(SchemaError):
    pass


@dataclass(frozen=True)
class Slo:
    """Gates for one phase; ``None`` means not gated on that measure."""

    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_error_rate: float | None = None
    min_throughput: float | None = None  # correctly answered decisions per second

    def merged(self, override: Slo | None) -> Slo:
        if override is None:
            return self
        return Slo(**{
            f.name: getattr(override, f.name) if getattr(override, f.name) is not None else getattr(self, f.name)
            for f in dataclasses.fields(Slo)
        })

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(Slo))


@dataclass(frozen=True)
class Mix:
    rpc: str = "unary"
    batch_size: int = 100
    streams: int = 2  # in total, spread over the generator processes
    unknown_merchant_share: float = 0.01
    invalid_share: float = 0.0
    zipf: float = 1.01  # see docs/loadtest.md: 1.1 made ~45% of decisions HIGH_VELOCITY reviews


@dataclass(frozen=True)
class Phase:
    name: str
    mode: str  # "open" (a rate schedule) or "closed" (a fixed number in flight)
    duration: float
    schedule: Schedule | None  # decisions per second over the phase; open only
    concurrency: int = 0  # closed only; in total, spread over the generator processes
    max_requests: int | None = None  # closed only
    rpc: str = "unary"
    batch_size: int = 100
    arrivals: str = "uniform"
    gate: bool = True
    slo: Slo = field(default_factory=Slo)

    @property
    def offered_rate(self) -> float | None:
        return self.schedule.mean_rate if self.schedule is not None else None


@dataclass(frozen=True)
class Campaign:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    path: str = ""
    target: str = "127.0.0.1:50051"
    target_label: str = "target"
    compare: str | None = None
    compare_label: str = "compare"
    allowed_hosts: tuple[str, ...] = ()
    data_dir: str = ".creditauth"
    processes: int = 1
    seed: int = 1
    timeout: float = 2.0  # per-RPC deadline, seconds
    connect_timeout: float = 30.0
    drain: float | None = None  # after the last phase; default: timeout + 1 s
    max_in_flight: int = 1000  # per generator process
    mix: Mix = field(default_factory=Mix)

    @property
    def duration(self) -> float:
        return sum(p.duration for p in self.phases)

    @property
    def drain_s(self) -> float:
        return self.drain if self.drain is not None else self.timeout + 1.0

    def phase_starts(self) -> list[float]:
        out, t = [], 0.0
        for p in self.phases:
            out.append(t)
            t += p.duration
        return out

    def with_overrides(
        self,
        *,
        target: str | None = None,
        compare: str | None = None,
        compare_label: str | None = None,
        data_dir: str | None = None,
        processes: int | None = None,
    ) -> Campaign:
        """CLI overrides, re-checked against the campaign's allowed hosts."""
        c = dataclasses.replace(
            self,
            target=target or self.target,
            compare=compare or self.compare,
            compare_label=compare_label or self.compare_label,
            data_dir=data_dir or self.data_dir,
            processes=processes or self.processes,
        )
        for t in (c.target, c.compare):
            if t is not None:
                try:
                    check_target(t, c.allowed_hosts)
                except TargetRefused as exc:
                    raise CampaignError([f"{self.path}: {exc}"]) from None
        return c


def load_campaign(path: Path | str) -> Campaign:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CampaignError([f"{p}: cannot read: {exc.strerror}"]) from None
    return parse_campaign(text, p)


def parse_campaign(text: str, path: Path | str = "<campaign>") -> Campaign:
    r = Reader(path)
    root = r.compose(text)
    if root is None:
        r.problems = r.problems or [f"{path}: empty campaign file"]
        raise CampaignError(r.problems)
    top = r.mapping(root, "", _TOP, required=("name", "phases"))
    if top is None:
        raise CampaignError(r.problems)
    kw: dict[str, object] = {"path": str(path)}
    _read_keys(r, top, _TOP_NAMING, kw)
    _read_targets(r, top, kw)
    _read_keys(r, top, _TOP_LIMITS, kw)
    arrivals = r.choice(top["arrivals"], "arrivals", ARRIVALS) if "arrivals" in top else "uniform"
    mix = _mix(r, top["mix"]) if "mix" in top else Mix()
    kw["mix"] = mix
    slo = _slo(r, top["slo"], "slo") if "slo" in top else Slo()
    phases = _phases(r, top, mix=mix, slo=slo, arrivals=arrivals or "uniform")
    if r.problems:
        raise CampaignError(r.problems)
    return Campaign(phases=tuple(phases), **kw)  # type: ignore[arg-type]


_KeyReader = Callable[[Reader, yaml.Node, str], object]


def _hosts(r: Reader, node: yaml.Node, where: str) -> tuple[str, ...]:
    return tuple(
        h for i, n in enumerate(r.sequence(node, where)) if (h := r.string(n, f"{where}[{i}]")) is not None
    )


# How each plain top-level key is read: (key, reader(r, node, where)), in reading (and so
# reporting) order. Naming keys come before the targets (which need allowed_hosts), limits after.
_TOP_NAMING: tuple[tuple[str, _KeyReader], ...] = (
    ("name", lambda r, n, w: r.string(n, w, pattern=_LABEL)),
    ("target_label", lambda r, n, w: r.string(n, w, pattern=_LABEL)),
    ("description", lambda r, n, w: r.string(n, w)),
    ("data_dir", lambda r, n, w: r.string(n, w)),
    ("allowed_hosts", _hosts),
)
_TOP_LIMITS: tuple[tuple[str, _KeyReader], ...] = (
    ("processes", lambda r, n, w: r.integer(n, w, lo=1, hi=64)),
    ("seed", lambda r, n, w: r.integer(n, w, lo=0)),
    ("max_in_flight", lambda r, n, w: r.integer(n, w, lo=1, hi=1_000_000)),
    ("timeout", lambda r, n, w: r.duration(n, w, hi=3600.0)),
    ("connect_timeout", lambda r, n, w: r.duration(n, w, hi=3600.0)),
    ("drain", lambda r, n, w: r.duration(n, w, lo_open=False, hi=3600.0)),
)


def _read_keys(
    r: Reader, m: dict[str, yaml.Node], readers: tuple[tuple[str, _KeyReader], ...], kw: dict[str, object]
) -> None:
    for key, read in readers:
        if key in m:
            kw[key] = read(r, m[key], key)


def _read_targets(r: Reader, top: dict[str, yaml.Node], kw: dict[str, object]) -> None:
    """``target`` and ``compare``, each checked against the allowed hosts already read into ``kw``."""
    allowed = kw.get("allowed_hosts", ())
    if "target" in top:
        kw["target"] = _target(r, top["target"], "target", allowed)  # type: ignore[arg-type]
    if "compare" in top:
        cmp = r.mapping(top["compare"], "compare", {"target", "label"}, required=("target",))
        if cmp is not None:
            if "target" in cmp:
                kw["compare"] = _target(r, cmp["target"], "compare.target", allowed)  # type: ignore[arg-type]
            if "label" in cmp:
                kw["compare_label"] = r.string(cmp["label"], "compare.label", pattern=_LABEL)


def _phases(r: Reader, top: dict[str, yaml.Node], *, mix: Mix, slo: Slo, arrivals: str) -> list[Phase]:
    phases = []
    names: set[str] = set()
    for i, node in enumerate(r.sequence(top["phases"], "phases", min_len=1) if "phases" in top else []):
        ph = _phase(r, node, f"phases[{i}]", mix=mix, slo=slo, arrivals=arrivals)
        if ph is not None:
            if ph.name in names:
                r.fail(node, f"phases[{i}].name", f"duplicate phase name {ph.name!r}")
            names.add(ph.name)
            phases.append(ph)
    total = sum(p.duration for p in phases)
    if total > MAX_TOTAL_S:
        r.fail(top.get("phases"), "phases", f"total duration {total:g} s exceeds {MAX_TOTAL_S:g} s")
    return phases


def _target(r: Reader, node: yaml.Node, where: str, allowed: tuple[str, ...]) -> str | None:
    t = r.string(node, where)
    if t is None:
        return None
    try:
        return check_target(t, allowed)
    except TargetRefused as exc:
        r.fail(node, where, str(exc))
        return None


def _mix(r: Reader, node: yaml.Node) -> Mix:
    m = r.mapping(node, "mix", _MIX)
    if m is None:
        return Mix()
    kw: dict[str, object] = {}
    if "rpc" in m:
        kw["rpc"] = r.choice(m["rpc"], "mix.rpc", RPCS)
    if "batch_size" in m:
        kw["batch_size"] = r.integer(m["batch_size"], "mix.batch_size", lo=1, hi=100_000)
    if "streams" in m:
        kw["streams"] = r.integer(m["streams"], "mix.streams", lo=1, hi=4096)
    for key in ("unknown_merchant_share", "invalid_share"):
        if key in m:
            kw[key] = r.number(m[key], f"mix.{key}", lo=0.0, hi=1.0)
    if "zipf" in m:
        kw["zipf"] = r.number(m["zipf"], "mix.zipf", lo=1.0, lo_open=True, hi=10.0)
    out = Mix(**{k: v for k, v in kw.items() if v is not None})  # type: ignore[arg-type]
    if out.unknown_merchant_share + out.invalid_share > 1.0:
        r.fail(node, "mix", "unknown_merchant_share + invalid_share must be at most 1")
    return out


def _slo(r: Reader, node: yaml.Node, where: str) -> Slo:
    m = r.mapping(node, where, _SLO)
    if m is None:
        return Slo()
    kw: dict[str, float | None] = {}
    for key in ("p50_ms", "p99_ms", "p999_ms"):
        if key in m:
            kw[key] = r.number(m[key], f"{where}.{key}", lo=0.0, lo_open=True)
    if "max_error_rate" in m:
        kw["max_error_rate"] = r.number(m["max_error_rate"], f"{where}.max_error_rate", lo=0.0, hi=1.0)
    if "min_throughput" in m:
        kw["min_throughput"] = r.number(m["min_throughput"], f"{where}.min_throughput", lo=0.0)
    return Slo(**kw)


def _phase(r: Reader, node: yaml.Node, where: str, *, mix: Mix, slo: Slo, arrivals: str) -> Phase | None:
    m = r.mapping(node, where, _PHASE, required=("name",))
    if m is None:
        return None
    before = len(r.problems)
    name = r.string(m["name"], f"{where}.name", pattern=_LABEL) if "name" in m else None
    shapes = [s for s in _SHAPES if s in m]
    closed = "concurrency" in m
    mode = r.choice(m["mode"], f"{where}.mode", ("open", "closed")) if "mode" in m else None
    mode = mode or ("closed" if closed else "open")
    duration: float | None = None
    if "duration" in m:
        duration = r.duration(m["duration"], f"{where}.duration", hi=MAX_PHASE_S)
    schedule: Schedule | None = None
    concurrency = 0
    max_requests: int | None = None
    if mode == "open":
        schedule = _open_schedule(r, node, m, where, shapes=shapes, duration=duration)
        if schedule is not None:
            duration = schedule.duration
    else:
        concurrency, max_requests = _closed_limits(r, node, m, where, shapes=shapes, duration=duration)
    rpc = r.choice(m["rpc"], f"{where}.rpc", RPCS) if "rpc" in m else mix.rpc
    batch = r.integer(m["batch_size"], f"{where}.batch_size", lo=1, hi=100_000) if "batch_size" in m else None
    arr = r.choice(m["arrivals"], f"{where}.arrivals", ARRIVALS) if "arrivals" in m else arrivals
    gate = r.boolean(m["gate"], f"{where}.gate") if "gate" in m else True
    own = _slo(r, m["slo"], f"{where}.slo") if "slo" in m else None
    if len(r.problems) > before or name is None or duration is None:
        return None
    return Phase(
        name=name, mode=mode, duration=duration, schedule=schedule, concurrency=concurrency,
        max_requests=max_requests, rpc=rpc or mix.rpc, batch_size=batch or mix.batch_size,
        arrivals=arr or "uniform", gate=bool(gate), slo=slo.merged(own),
    )


def _open_schedule(
    r: Reader, node: yaml.Node, m: dict[str, yaml.Node], where: str, *, shapes: list[str], duration: float | None
) -> Schedule | None:
    """The rate schedule of an open-loop phase: exactly one shape, within the rate bounds."""
    if "concurrency" in m or "max_requests" in m:
        key = "concurrency" if "concurrency" in m else "max_requests"
        r.fail(m[key], f"{where}.{key}", "only closed-loop phases (mode: closed) take this key")
    schedule: Schedule | None = None
    if len(shapes) != 1:
        r.fail(node, where, f"an open-loop phase needs exactly one of {', '.join(_SHAPES)}; got "
               f"{', '.join(shapes) or 'none'}")
    elif shapes[0] == "steps":
        if "duration" in m:
            r.fail(m["duration"], f"{where}.duration", "is implied by steps (rates x each); remove it")
        schedule = _steps(r, m["steps"], f"{where}.steps")
    elif duration is None and "duration" not in m:
        r.fail(node, where, "missing required key 'duration'")
    elif duration is not None:
        schedule = _shape(r, shapes[0], m[shapes[0]], f"{where}.{shapes[0]}", duration)
    if schedule is not None:
        if schedule.peak_rate > MAX_RATE:
            r.fail(node, where, f"peak rate {schedule.peak_rate:g}/s exceeds {MAX_RATE:g}/s")
        if schedule.total < 1:
            r.fail(node, where, "the schedule asks for no requests at all")
    return schedule


def _closed_limits(
    r: Reader, node: yaml.Node, m: dict[str, yaml.Node], where: str, *, shapes: list[str], duration: float | None
) -> tuple[int, int | None]:
    """``(concurrency, max_requests)`` of a closed-loop phase, which takes no rate shape."""
    if shapes:
        r.fail(m[shapes[0]], f"{where}.{shapes[0]}", "a closed-loop phase takes concurrency, not a rate")
    concurrency = 0
    max_requests: int | None = None
    if "concurrency" not in m:
        r.fail(node, where, "a closed-loop phase needs 'concurrency'")
    else:
        concurrency = r.integer(m["concurrency"], f"{where}.concurrency", lo=1, hi=100_000) or 0
    if "max_requests" in m:
        max_requests = r.integer(m["max_requests"], f"{where}.max_requests", lo=1)
    if duration is None and "duration" not in m:
        r.fail(node, where, "missing required key 'duration' (closed-loop phases are bounded in time too)")
    return concurrency, max_requests


def _rate(r: Reader, node: yaml.Node, where: str, *, zero_ok: bool = False) -> float | None:
    return r.number(node, where, lo=0.0, lo_open=not zero_ok, hi=MAX_RATE)


def _shape(r: Reader, shape: str, node: yaml.Node, where: str, duration: float) -> Schedule | None:
    if shape == "rate":
        rate = _rate(r, node, where)
        return None if rate is None else Schedule.constant(rate, duration)
    if shape == "ramp":
        m = r.mapping(node, where, {"from", "to"}, required=("from", "to"))
        if m is None or "from" not in m or "to" not in m:
            return None
        lo, hi = _rate(r, m["from"], f"{where}.from", zero_ok=True), _rate(r, m["to"], f"{where}.to", zero_ok=True)
        return None if lo is None or hi is None else Schedule.ramp(lo, hi, duration)
    m = r.mapping(node, where, {"base", "peak", "at", "length"}, required=("base", "peak", "at", "length"))
    if m is None or len(m) != 4:
        return None
    base, peak = _rate(r, m["base"], f"{where}.base", zero_ok=True), _rate(r, m["peak"], f"{where}.peak")
    at = r.duration(m["at"], f"{where}.at", lo_open=False)
    length = r.duration(m["length"], f"{where}.length")
    if None in (base, peak, at, length):
        return None
    assert base is not None and peak is not None and at is not None and length is not None
    if at + length > duration:
        r.fail(node, where, f"the spike (at {at:g} s for {length:g} s) must end within the phase's {duration:g} s")
        return None
    return Schedule.spike(base, peak, at, length, duration)


def _steps(r: Reader, node: yaml.Node, where: str) -> Schedule | None:
    m = r.mapping(node, where, {"rates", "each"}, required=("rates", "each"))
    if m is None or len(m) != 2:
        return None
    items = r.sequence(m["rates"], f"{where}.rates", min_len=1)
    rates = [_rate(r, n, f"{where}.rates[{i}]") for i, n in enumerate(items)]
    each = r.duration(m["each"], f"{where}.each", hi=MAX_PHASE_S)
    if each is None or not rates or any(x is None for x in rates):
        return None
    if each * len(rates) > MAX_PHASE_S:
        r.fail(node, where, f"steps last {each * len(rates):g} s, more than {MAX_PHASE_S:g} s")
        return None
    return Schedule.steps([x for x in rates if x is not None], each)

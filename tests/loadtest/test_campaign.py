"""Campaign files: strict validation with file, line and key in every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.campaign import CampaignError, load_campaign, parse_campaign
from loadtest.cli import main

CAMPAIGNS = Path(__file__).resolve().parents[2] / "loadtest" / "campaigns"

GOOD = """\
name: ok
target: 127.0.0.1:50051
slo: {p99_ms: 100}
phases:
  - name: warm-up
    rate: 10
    duration: 2s
    gate: false
  - name: ramp
    ramp: {from: 10, to: 100}
    duration: 1m
  - name: steps
    steps: {rates: [10, 20], each: 500ms}
  - name: spike
    spike: {base: 10, peak: 50, at: 1s, length: 1s}
    duration: 3s
    slo: {p99_ms: 500, min_throughput: 5}
  - name: closed
    concurrency: 4
    duration: 1s
    rpc: batch
    batch_size: 10
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(CampaignError) as exc:
        parse_campaign(text, "c.yaml")
    return exc.value.problems


def test_every_shipped_campaign_is_valid() -> None:
    files = sorted(CAMPAIGNS.glob("*.yaml"))
    assert {f.name for f in files} >= {"smoke.yaml", "saturation.yaml", "soak.yaml"}
    for f in files:
        c = load_campaign(f)
        assert c.phases and c.duration > 0
    assert load_campaign(CAMPAIGNS / "smoke.yaml").duration < 60


def test_a_good_campaign_parses_into_phases_and_schedules() -> None:
    c = parse_campaign(GOOD, "c.yaml")
    names = [p.name for p in c.phases]
    assert names == ["warm-up", "ramp", "steps", "spike", "closed"]
    ramp = c.phases[1]
    assert ramp.duration == 60.0 and ramp.schedule is not None and ramp.schedule.total == pytest.approx(3300)
    assert c.phases[2].duration == 1.0  # implied by steps
    assert c.phases[0].gate is False
    # Phase SLOs override the campaign's field by field.
    assert c.phases[3].slo.p99_ms == 500 and c.phases[3].slo.min_throughput == 5
    assert c.phases[1].slo.p99_ms == 100
    closed = c.phases[4]
    assert (closed.mode, closed.concurrency, closed.rpc, closed.batch_size) == ("closed", 4, "batch", 10)


def test_unknown_key_is_rejected_with_file_line_and_a_suggestion() -> None:
    problems = errors_of(GOOD.replace("    duration: 1m\n", "    duratoin: 1m\n"))
    hit = [p for p in problems if "duratoin" in p]
    assert hit, problems
    assert hit[0].startswith("c.yaml:11:5: phases[1].duratoin: unknown key (did you mean 'duration'?)")


def test_unknown_top_level_key_and_bad_values_are_all_reported_at_once() -> None:
    text = GOOD.replace("name: ok\n", "name: ok\nprocesess: 2\n").replace("rate: 10\n", "rate: -5\n", 1)
    text = text.replace("batch_size: 10", "batch_size: ten")
    problems = errors_of(text)
    assert any(p.startswith("c.yaml:2:1: procesess: unknown key (did you mean 'processes'?)") for p in problems)
    assert any("phases[0].rate: must be > 0, got -5" in p and p.startswith("c.yaml:7:") for p in problems)
    assert any("phases[4].batch_size: must be an integer, got 'ten'" in p for p in problems)


def test_duplicate_keys_are_rejected() -> None:
    problems = errors_of(GOOD.replace("    rate: 10\n", "    rate: 10\n    rate: 20\n", 1))
    assert any("c.yaml:7:5: phases[0].rate: duplicate key" in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("    rate: 10\n", "    rate: 10\n    ramp: {from: 1, to: 2}\n"), "exactly one of rate, ramp, steps, spike"),
        (("    concurrency: 4\n", ""), "exactly one of rate, ramp, steps, spike"),
        (("at: 1s, length: 1s", "at: 2.5s, length: 1s"), "must end within the phase's 3 s"),
        (("steps: {rates: [10, 20], each: 500ms}", "steps: {rates: [10, 20], each: 500ms}\n    duration: 1s"),
         "is implied by steps"),
        (("    duration: 2s\n", "    duration: 2 seconds\n"), "must be a duration like 500ms"),
        (("    concurrency: 4\n", "    concurrency: 4\n    rate: 5\n"), "a closed-loop phase takes concurrency"),
        (("slo: {p99_ms: 100}", "slo: {p99: 100}"), "slo.p99: unknown key (did you mean 'p99_ms'?)"),
        (("    gate: false\n", "    gate: maybe\n"), "gate: must be true or false"),
        (("name: closed", "name: spike"), "duplicate phase name 'spike'"),
        (("    rpc: batch\n", "    rpc: grpc\n"), "rpc: must be one of unary, batch, stream"),
    ],
)
def test_semantic_errors_name_the_key(change: tuple[str, str], message: str) -> None:
    problems = errors_of(GOOD.replace(*change))
    assert any(message in p and p.startswith("c.yaml:") for p in problems), problems


def test_yaml_syntax_error_names_file_and_line() -> None:
    problems = errors_of("name: x\nphases: [\n  - {name: a\n")
    assert problems and problems[0].startswith("c.yaml:") and "invalid YAML" in problems[0]


def test_non_loopback_target_is_refused_unless_allowed() -> None:
    text = GOOD.replace("127.0.0.1:50051", "10.1.2.3:50051")
    problems = errors_of(text)
    assert any("c.yaml:2:9: target: refusing target '10.1.2.3:50051'" in p for p in problems), problems
    allowed = parse_campaign(text.replace("name: ok\n", "name: ok\nallowed_hosts: [10.1.2.3]\n"), "c.yaml")
    assert allowed.target == "10.1.2.3:50051"


def test_cli_override_to_a_foreign_host_is_refused() -> None:
    c = parse_campaign(GOOD, "c.yaml")
    with pytest.raises(CampaignError, match=r"refusing target 'example\.com:443'"):
        c.with_overrides(target="example.com:443")
    assert c.with_overrides(target="[::1]:50052").target == "[::1]:50052"


def test_validate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("gate: false", "gates: false"))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:8:5: phases[0].gates: unknown key (did you mean 'gate'?)" in err


def test_campaign_command_rejects_a_bad_file_with_exit_code_2(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nphases: []\n")
    assert main(["campaign", str(bad)]) == 2
    assert "phases: must have at least 1 item(s)" in capsys.readouterr().err

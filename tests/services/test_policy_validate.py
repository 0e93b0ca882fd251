"""``creditauth policy validate FILE``: broken copies of the packaged default policy, each
error reported as ``FILE:LINE: field.path: message`` at the line that is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from features.tags import Tag, write_catalog
from services.cli.main import main
from services.errors import ConfigError
from services.policy.config import DEFAULT_POLICY, load_policy

DEFAULT_TEXT = DEFAULT_POLICY.read_text()


def _line_of(text: str, needle: str) -> int:
    """1-based line of the only line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def _broken(tmp_path: Path, old: str, new: str, text: str = DEFAULT_TEXT) -> tuple[Path, str]:
    assert text.count(old) == 1, old
    broken = text.replace(old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(broken)
    return path, broken


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory whose tag catalogue holds every tag the default policy names."""
    names = sorted(set(re.findall(r"behaviour\.flag\.[a-z0-9_]+", DEFAULT_TEXT)))
    out = tmp_path / "data"
    catalog = out / "offline" / "tag_catalog.json"
    catalog.parent.mkdir(parents=True)
    write_catalog(catalog, [Tag(i, n, n, "risk", "test") for i, n in enumerate(names)])
    return out


def _validate(path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    try:
        main(["policy", "validate", str(path), "--data-dir", str(data_dir), *extra])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if re.match(r"^\S+:\d+: ", line)]


def test_the_packaged_policy_is_valid(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _validate(DEFAULT_POLICY, data_dir, capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert "valid policy policy-2026.11.1" in lines[0] and "tags checked against" in lines[0]


def test_tags_are_not_checked_without_a_catalogue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _validate(DEFAULT_POLICY, tmp_path / "empty", capsys)
    assert code == 0 and "tags not checked" in out


def test_catalogue_given_explicitly_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _validate(DEFAULT_POLICY, tmp_path, capsys, "--tags", str(tmp_path / "none.json"))
    assert code == 2 and "none.json" in err


@pytest.mark.parametrize(
    ("old", "new", "needle", "field", "message"),
    [
        # A key that is not allowed: reported at the key's line.
        ("review_pd: 0.12", "review_pdd: 0.12", "review_pdd", "review_pdd", "Extra inputs are not permitted"),
        # A bad value inside a list item (flow style, one line per grade).
        ("{grade: C, max_pd: 0.10,", "{grade: C, max_pd: 2.0,", "grade: C", "grades[2].max_pd",
         "less than or equal to 1"),
        # A whole-policy consistency check names its field by its words.
        ("review_pd: 0.12", "review_pd: 0.9", "review_pd: 0.9", "review_pd", "review_pd must not exceed decline_pd"),
        ("{grade: B, max_pd: 0.05, limit_multiple: 2.0, apr_bps: [780, 830, 900, 990, 1080]}",
         "{grade: B, max_pd: 0.05, limit_multiple: 2.0, apr_bps: [780, 830]}", "grade: B",
         "grades[1].apr_bps", "apr_bps needs 5 entries"),
        ("apr_term_buckets: [3, 6, 12, 24, 60]", "apr_term_buckets: [3, 6, 12, 60, 24]", "apr_term_buckets",
         "apr_term_buckets", "must be increasing"),
        # A condition's own validator: the condition's line.
        ("when: [{tag: behaviour.flag.very_high_refunds}]", "when: [{tag: behaviour.flag.very_high_refunds, op: '<'}]",
         "very_high_refunds", "rules[3].when[0]", "'tag' takes op 'has' or 'lacks'"),
        # Block style: the exact line of the key inside a multi-line rule.
        ("code: EW_DORMANT", "code: ew_dormant", "ew_dormant", "rules[1].code", "should match pattern"),
        # The policy's own checks: features and tags the rules name.
        ("{feature: rev_growth_30d,", "{feature: rev_growth_31d,", "rev_growth_31d", "rules[2].when[0].feature",
         "unknown feature 'rev_growth_31d'"),
        ("when: [{tag: behaviour.flag.very_high_refunds}]", "when: [{tag: behaviour.flag.very_high_refundz}]",
         "very_high_refundz", "rules[3].when[0].tag", "unknown tag 'behaviour.flag.very_high_refundz'"),
        ("{tags: [behaviour.flag.night_trader, behaviour.flag.high_refunds], op: all}",
         "{tags: [behaviour.flag.night_trader, behaviour.flag.high_refundz], op: all}", "high_refundz",
         "rules[4].when[0].tags[1]", "unknown tag"),
    ],
    ids=["extra-key", "nested-value", "consistency", "grade-apr", "buckets", "condition", "block-style",
         "unknown-feature", "unknown-tag", "unknown-tag-in-list"],
)
def test_each_error_names_file_line_and_field(
    *, tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str],
    old: str, new: str, needle: str, field: str, message: str,
) -> None:
    path, text = _broken(tmp_path, old, new)
    code, out, err = _validate(path, data_dir, capsys)
    assert code == 2 and out == ""
    wanted = f"{path}:{_line_of(text, needle)}: {field}: "
    hits = [e for e in _errors(err) if e.startswith(wanted)]
    assert hits, f"no {wanted!r} in:\n{err}"
    assert message in hits[0]


def test_a_missing_field_is_named_at_its_enclosing_mapping(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, text = _broken(tmp_path, "{grade: D, max_pd: 0.20, limit_multiple: 0.6,", "{grade: D, max_pd: 0.20,")
    code, _, err = _validate(path, data_dir, capsys)
    assert code == 2
    assert f"{path}:{_line_of(text, 'grade: D')}: grades[3].limit_multiple: Field required" in err


def test_every_error_is_listed(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, text = _broken(tmp_path, "review_pd: 0.12", "review_pd: 7")
    path, text = _broken(tmp_path, "min_limit_base_minor: 50000", "min_limit_base_minor: -1", text)
    code, _, err = _validate(path, data_dir, capsys)
    assert code == 2
    found = {(int(e.split(":")[1]), e.split(": ")[1]) for e in _errors(err)}
    assert (_line_of(text, "review_pd: 7"), "review_pd") in found
    assert (_line_of(text, "min_limit_base_minor: -1"), "min_limit_base_minor") in found
    assert "2 problem(s)" in err


def test_yaml_syntax_error_names_the_line(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, text = _broken(tmp_path, "velocity: {review_apps_1h: 5, review_apps_24h: 20}",
                         "velocity: {review_apps_1h: 5, review_apps_24h: [20}")
    code, _, err = _validate(path, data_dir, capsys)
    assert code == 2
    (error,) = _errors(err)
    assert error.startswith(f"{path}:{_line_of(text, 'review_apps_24h: [20')}: <yaml>: invalid YAML")


def test_an_unreadable_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _validate(tmp_path / "missing.yaml", tmp_path, capsys)
    assert code == 2 and "missing.yaml:1: <file>: cannot read policy" in err


def test_a_policy_that_is_not_a_mapping(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    code, _, err = _validate(path, data_dir, capsys)
    assert code == 2 and f"{path}:1: <policy>: a policy must be a YAML mapping" in err


def test_load_policy_errors_carry_the_line(tmp_path: Path) -> None:
    path, text = _broken(tmp_path, "{grade: C, max_pd: 0.10,", "{grade: C, max_pd: 2.0,")
    line = _line_of(text, "grade: C")
    with pytest.raises(ConfigError, match=rf"policy\.yaml:{line}: grades\[2\]\.max_pd: "):
        load_policy(path)

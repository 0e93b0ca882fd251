"""``creditauth policy validate FILE``: check a policy file before it ships.

Every problem is printed as ``FILE:LINE: field.path: message`` (YAML syntax,
schema, consistency, rules naming features the serving matrix lacks or tags
the catalogue lacks); the exit code is 0 when the file is valid (with a
one-line summary) and 2 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from services.settings import Settings

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_INVALID = 2


def add_policy(sub: _Subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    pol = sub.add_parser("policy", help="credit policy files: check one before it ships")
    pol_sub = pol.add_subparsers(dest="cmd", required=True)
    val = pol_sub.add_parser("validate", help="check a policy YAML; every error names file, line and field")
    common(val)
    val.add_argument("file", type=Path, help="the policy YAML to check")
    val.add_argument(
        "--tags", type=Path,
        help="tag catalogue JSON to check rule tags against (default: the data directory's tag_catalog.json)",
    )
    val.set_defaults(run=policy_validate)


def _tag_names(settings: Settings, given: Path | None) -> tuple[set[str] | None, str]:
    """The catalogue's tag names, or None (with why) when there is no catalogue to check against."""
    from features import TagCatalog

    path = given or settings.features.tag_catalog_path
    if given is None and not path.exists():
        return None, f"tags not checked: no tag catalogue at {path} (run `creditauth data generate` or pass --tags)"
    # An unreadable catalogue is a FeatureError naming its path: main prints it and exits 2.
    return {t.name for t in TagCatalog.load(path)}, f"tags checked against {path}"


def policy_validate(settings: Settings, args: argparse.Namespace) -> None:
    from features import MATRIX_COLUMNS
    from services.policy.lines import PolicyProblem, validate_policy_text

    file: Path = args.file
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(PolicyProblem(str(file), 1, "<file>", f"cannot read policy: {exc}"), file=sys.stderr)
        sys.exit(EXIT_INVALID)
    tags, tag_note = _tag_names(settings, args.tags)
    config, problems = validate_policy_text(str(file), text, MATRIX_COLUMNS, tags)
    if config is None:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{file}: {len(problems)} problem(s); the policy is not valid", file=sys.stderr)
        sys.exit(EXIT_INVALID)
    print(
        f"{file}: valid policy {config.version}: {len(config.grades)} grades, {len(config.rules)} rules, "
        f"{len(config.reasons)} reason mappings; {tag_note}"
    )

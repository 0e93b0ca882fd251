"""Where in a policy file a problem is: ``FILE:LINE: field.path: message``.

PyYAML's composer keeps every node's position (``start_mark``); pydantic names
a failing value by its location tuple (``('grades', 2, 'max_pd')``). Walking the
composed node tree along that tuple finds the line the risk team has to edit:
the key's line for a mapping entry (a key that is not allowed, or a value that
is wrong), the entry's line for a list item, the nearest enclosing node's line
for a field that is missing. The policy's own checks (rules naming unknown tags
or features) are reported the same way.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

if TYPE_CHECKING:
    from services.policy.config import PolicyConfig

__all__ = ["NodeLines", "PolicyProblem", "reference_problems", "validate_policy_text", "validation_problems"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyProblem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class NodeLines:
    """Line numbers (1-based) of a composed YAML document, addressed by location tuples."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root

    @classmethod
    def of(cls, text: str) -> NodeLines:
        return cls(yaml.compose(text, Loader=yaml.SafeLoader))

    def locate(self, loc: Loc) -> tuple[int, Loc]:
        """The line of ``loc`` and the part of it that names document nodes.

        Components the document does not have are skipped (pydantic adds type
        tags such as ``'str'`` or ``'function-after[...]'``), except a last
        one, which is the name of a missing field and is kept.
        """
        node = self._root
        line = node.start_mark.line + 1 if node is not None else 1
        matched: list[str | int] = []
        for i, part in enumerate(loc):
            found = _child(node, part) if node is not None else None
            if found is None:
                if i == len(loc) - 1 and not _is_type_tag(part):
                    matched.append(part)
                continue
            key_line, node = found
            line = key_line
            matched.append(part)
        return line, tuple(matched)

    def resolve(self, dotted: str) -> Loc | None:
        """``'degraded.products.INVENTORY'`` as a location tuple, if the document has it."""
        loc: list[str | int] = []
        node = self._root
        for part in dotted.split("."):
            key: str | int = int(part) if part.isdigit() else part
            found = _child(node, key) if node is not None else None
            if found is None:
                return None
            loc.append(key)
            node = found[1]
        return tuple(loc)

    def sequence_index(self, key: str, field: str, value: str) -> int | None:
        """Index of the first item of top-level list ``key`` whose ``field`` is ``value``."""
        found = _child(self._root, key) if self._root is not None else None
        if found is None or not isinstance(found[1], yaml.SequenceNode):
            return None
        for i, item in enumerate(found[1].value):
            hit = _child(item, field)
            if hit is not None and isinstance(hit[1], yaml.ScalarNode) and hit[1].value == value:
                return i
        return None

    def length(self, key: str) -> int:
        found = _child(self._root, key) if self._root is not None else None
        return len(found[1].value) if found is not None and isinstance(found[1], yaml.SequenceNode) else 0


def _child(node: yaml.Node, part: str | int) -> tuple[int, yaml.Node] | None:
    """``(line, child)``: a mapping entry's key line and value, or a list item's line and node."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key.start_mark.line + 1, value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item.start_mark.line + 1, item
    return None


def _is_type_tag(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none"))


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<policy>"


_GRADE = re.compile(r"\bgrade ([A-Z])\b")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")


def _loc_from_message(lines: NodeLines, message: str) -> Loc:
    """Which field a whole-policy check (pydantic loc ``()``) is about, from its words.

    The policy's consistency checks name the field they are about
    ("review_pd must not exceed decline_pd", "grade B: apr_bps needs 5
    entries", "degraded.products.X.grade ..."): the first word or dotted path
    the document has is the field.
    """
    tokens = _PATH.findall(message)
    grade = _GRADE.search(message)
    index = lines.sequence_index("grades", "grade", grade.group(1)) if grade is not None else None
    if index is None and "last grade" in message and lines.length("grades"):
        index = lines.length("grades") - 1
    if index is not None:
        # The field of the grade is named after the grade ("grade B: apr_bps ...").
        after = message[grade.end():] if grade is not None else message.split("last grade", 1)[-1]
        inner = (lines.resolve(f"grades.{index}.{t}") for t in _PATH.findall(after))
        return next((loc for loc in inner if loc is not None), ("grades", index))
    # "rule names must be unique" is about ``rules``: try each word's plural too.
    for token in tokens:
        loc = lines.resolve(token) or lines.resolve(f"{token}s")
        if loc is not None:
            return loc
    return ()


def validation_problems(file: Path | str, exc: ValidationError, text: str | None = None) -> list[PolicyProblem]:
    """One problem per pydantic error, located in the file (read again unless ``text`` is given)."""
    try:
        lines = NodeLines.of(text if text is not None else Path(file).read_text())
    except (OSError, yaml.YAMLError):
        lines = NodeLines(None)
    problems = []
    for err in exc.errors():
        loc: Loc = tuple(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if not loc:
            loc = _loc_from_message(lines, message)
        line, named = lines.locate(loc)
        problems.append(PolicyProblem(str(file), line, _dotted(named), message))
    return sorted(problems, key=lambda p: p.line)


def _condition_problems(
    lines: NodeLines, file: str, at: Loc, condition: Any, *, features: Collection[str], tags: Collection[str] | None
) -> Iterable[PolicyProblem]:
    if condition.feature is not None and condition.feature not in features:
        line, named = lines.locate((*at, "feature"))
        yield PolicyProblem(file, line, _dotted(named), f"unknown feature {condition.feature!r}")
    if tags is None:
        return
    if condition.tag is not None and condition.tag not in tags:
        line, named = lines.locate((*at, "tag"))
        yield PolicyProblem(file, line, _dotted(named), f"unknown tag {condition.tag!r}")
    for k, tag in enumerate(condition.tags or ()):
        if tag not in tags:
            line, named = lines.locate((*at, "tags", k))
            yield PolicyProblem(file, line, _dotted(named), f"unknown tag {tag!r}")


def reference_problems(
    config: PolicyConfig, lines: NodeLines, file: str, features: Collection[str], tags: Collection[str] | None
) -> list[PolicyProblem]:
    """Rules naming features the serving matrix lacks (``velocity.above_usual`` reads one too), or
    tags the catalogue lacks (None: not checked)."""
    from services.policy.usual import USUAL_COLUMN

    problems: list[PolicyProblem] = []
    for i, rule in enumerate(config.rules):
        for j, condition in enumerate(rule.when):
            at = ("rules", i, "when", j)
            problems.extend(_condition_problems(lines, file, at, condition, features=features, tags=tags))
    if config.velocity.above_usual is not None and USUAL_COLUMN not in features:
        line, named = lines.locate(("velocity", "above_usual"))
        problems.append(PolicyProblem(file, line, _dotted(named), f"reads unknown feature {USUAL_COLUMN!r}"))
    return problems


def validate_policy_text(
    file: str, text: str, features: Collection[str], tags: Collection[str] | None
) -> tuple[PolicyConfig | None, list[PolicyProblem]]:
    """Everything wrong with a policy document, each problem with its line; the policy if none."""
    from services.policy.config import PolicyConfig

    try:
        lines = NodeLines.of(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [PolicyProblem(file, line, "<yaml>", f"invalid YAML: {problem}")]
    if not isinstance(raw, dict):
        return None, [PolicyProblem(file, 1, "<policy>", "a policy must be a YAML mapping")]
    try:
        config = PolicyConfig.model_validate(raw)
    except ValidationError as exc:
        return None, validation_problems(file, exc, text)
    problems = reference_problems(config, lines, file, features, tags)
    return (None if problems else config), problems

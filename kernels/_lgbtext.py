"""Read the line structure of a LightGBM text model, keeping line numbers.

This mirrors what LightGBM's own loader (``GBDT::LoadModelFromString`` and
``Tree::Tree(const char*)``) accepts, so files written by older LightGBM
versions load here exactly when they load there:

* the header is every ``key=value`` line (or bare flag) before the first
  ``Tree=`` line; only ``max_feature_idx`` and ``num_class`` are needed to
  score (``version``, ``num_tree_per_iteration``, ``objective``,
  ``tree_sizes`` and ``feature_names`` may be absent, as in older files);
* with a ``tree_sizes`` line (LightGBM >= 2.1) the file holds exactly that
  many trees; without one, trees follow each other until the first line that
  is not ``Tree=`` (older files have no ``end of trees`` line and LightGBM
  never required one).

Every refusal names ``source:line`` and the key, so a risk team can open the
file at the place that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kernels.errors import ModelFormatError


@dataclass
class Block:
    """``key=value`` lines with their (1-based) line numbers; a header or a ``Tree=`` block."""

    source: str
    title: str
    line: int
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)

    def where(self, key: str | None = None) -> str:
        """``source:line: title key``: the line of ``key`` if present, else the block's."""
        if key is None:
            return f"{self.source}:{self.line}: {self.title}"
        line = self.lines.get(key, self.line)
        return f"{self.source}:{line}: {self.title} {key}"

    def need(self, key: str) -> str:
        if key not in self.values:
            raise ModelFormatError(f"{self.where()}: missing '{key}'")
        return self.values[key]

    def add(self, key: str, value: str, line: int) -> None:
        self.values[key] = value
        self.lines[key] = line


@dataclass(frozen=True)
class ModelText:
    header: Block
    trees: tuple[Block, ...]


def read_model_text(text: str, source: str) -> ModelText:
    """Split a LightGBM text model into its header and ``Tree=`` blocks."""
    if not isinstance(text, str):
        raise ModelFormatError(
            f"{source}: a LightGBM model must be given as text (Booster.model_to_string())"
        )
    lines = text.splitlines()
    if not lines or lines[0].strip() != "tree":
        raise ModelFormatError(f"{source}:1: not a LightGBM text model (first line is not 'tree')")
    header, i = _read_header(lines, source)
    trees: list[Block] = []
    while i < len(lines) and lines[i].strip().startswith("Tree="):
        block, i = _read_tree(lines, i, source)
        trees.append(block)
        while i < len(lines) and not lines[i].strip():
            i += 1
    _check_tree_count(header, trees, source, len(lines))
    return ModelText(header=header, trees=tuple(trees))


def _read_header(lines: list[str], source: str) -> tuple[Block, int]:
    header = Block(source=source, title="header", line=1)
    i = 1
    while i < len(lines) and not lines[i].strip().startswith("Tree="):
        line = lines[i].strip()
        i += 1
        if not line:
            continue
        if line == "end of trees":
            break
        if "=" in line:
            key, value = line.split("=", 1)
            header.add(key, value, i)
        else:
            header.flags.add(line)
            header.lines[line] = i
    return header, i


def _read_tree(lines: list[str], i: int, source: str) -> tuple[Block, int]:
    """The ``Tree=`` block at line index ``i``: its lines up to the next blank line."""
    block = Block(source=source, title=lines[i].strip(), line=i + 1)
    i += 1
    while i < len(lines) and lines[i].strip():
        raw = lines[i]
        if "=" not in raw:
            raise ModelFormatError(f"{source}:{i + 1}: {block.title}: expected key=value, got {raw[:60]!r}")
        key, value = raw.split("=", 1)
        block.add(key.strip(), value, i + 1)
        i += 1
    return block, i


def _check_tree_count(header: Block, trees: list[Block], source: str, n_lines: int) -> None:
    """A current file says how many trees it holds (``tree_sizes``); hold it to that."""
    if not trees:
        raise ModelFormatError(f"{source}:{n_lines}: LightGBM model has no trees")
    if "tree_sizes" not in header.values:
        return
    expected = len(header.values["tree_sizes"].split())
    if expected != len(trees):
        raise ModelFormatError(
            f"{header.where('tree_sizes')}: lists {expected} trees but the file holds "
            f"{len(trees)} (truncated after {trees[-1].title}, line {trees[-1].line})"
        )

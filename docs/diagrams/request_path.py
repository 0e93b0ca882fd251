"""Draws docs/diagrams/request_path.svg: the request path, folder by folder.

    python docs/diagrams/request_path.py          # rewrite the SVG
    python docs/diagrams/request_path.py --check  # exit 1 if the SVG is out of date (a test runs this)

The picture is data (boxes and arrows below); the SVG is plain text written by this script
with nothing but the standard library, so it regenerates anywhere.
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

OUT = Path(__file__).with_suffix(".svg")
W, H = 1280, 660

# (key, x, y, width, height, title, lines, fill)
BOXES: list[tuple[str, int, int, int, int, str, tuple[str, ...], str]] = [
    ("caller", 20, 280, 130, 80, "calling service",
     ("Authorize", "AuthorizeBatch", "AuthorizeStream"), "#ffffff"),
    ("proto", 200, 40, 240, 70, "proto/creditauth/v1",
     ("authorization.proto: the API",), "#f4f4f4"),
    ("schema", 200, 130, 240, 100, "services/schema",
     ("columns.py: the one declaration", "records.py: request & decision", "records, batches",
      "codes.py, enums.py: from the protos"), "#fff7e0"),
    ("frontend", 200, 250, 240, 140, "services/frontend (grpc.aio)",
     ("servicer.py: the three RPCs", "wire.py + _wire.pyx: bytes <-> records", "  (tables compiled from schema)",
      "batcher.py: coalesce, shed,", "  deadlines", "server.py: health, reflection, drain"), "#e8f1ff"),
    ("runtime", 530, 250, 230, 140, "services/runtime",
     ("backend.py: ScoringBackend protocol", "channel/: router, membership,", "  connection, frames (op codes)",
      "seam/: the only Ray code:", "  cluster, app, replica,", "  registry, handle"), "#e8f1ff"),
    ("stack", 530, 130, 230, 70, "services/stack.py",
     ("composition root: Ray, Serve app,", "front ends, telemetry"), "#f4f4f4"),
    ("scoring", 850, 250, 210, 140, "services/scoring (replica)",
     ("engine.py: the pipeline", "replays.py: idempotency", "gather.py: velocity + features",
      "decider.py: kernel + policy", "stages.py: named timers"), "#e9f7ec"),
    ("policy", 1100, 150, 170, 90, "services/policy",
     ("YAML, validated; one", "decide() per batch", "(rules run in kernels/)"), "#e9f7ec"),
    ("models", 1100, 280, 170, 70, "services/models",
     ("parity-gated artifacts",), "#e9f7ec"),
    ("kernels", 1100, 380, 170, 90, "kernels/",
     ("compiled trees, reasons,", "scorecards, rules,", "parity gate"), "#fdeaea"),
    ("features", 850, 430, 210, 110, "features/",
     ("catalog.py: the contract", "batch.py, cache.py, velocity.py", "request.py, tags.py",
      "feast_repo.py, materialize.py"), "#f1eafd"),
    ("stores", 530, 430, 230, 110, "features/stores",
     ("open_backend: the one branch", "layout.py: Feast's layout", "sqlite/, redis/: reader, writer,",
      "  velocity, idempotency"), "#f1eafd"),
    ("online", 530, 570, 230, 60, "online store",
     ("SQLite (embedded) / Redis",), "#ffffff"),
]

# (from, to, label)
ARROWS: list[tuple[str, str, str]] = [
    ("caller", "frontend", "gRPC"),
    ("proto", "schema", "field numbers, enums"),
    ("schema", "frontend", "tables"),
    ("frontend", "runtime", "batches (records)"),
    ("stack", "frontend", "starts"),
    ("stack", "runtime", "starts"),
    ("runtime", "scoring", "direct channel"),
    ("scoring", "policy", ""),
    ("scoring", "models", ""),
    ("models", "kernels", ""),
    ("scoring", "features", "one read per batch"),
    ("features", "stores", ""),
    ("stores", "online", ""),
]


def _centre(key: str) -> tuple[float, float, float, float]:
    b = next(b for b in BOXES if b[0] == key)
    return b[1], b[2], b[3], b[4]


def _edge(a: str, b: str) -> tuple[float, float, float, float]:
    """From the side of box a facing b to the side of box b facing a (below first: a box
    that overlaps another's columns connects top to bottom)."""
    ax, ay, aw, ah = _centre(a)
    bx, by, bw, bh = _centre(b)
    acx, acy, bcx, bcy = ax + aw / 2, ay + ah / 2, bx + bw / 2, by + bh / 2
    if by >= ay + ah and bx < ax + aw and bx + bw > ax - 200:  # b below (or below-left)
        return acx if bx + bw > ax else ax, ay + ah, bcx if bx + bw > ax else bx + bw - 40, by
    if bx >= ax + aw:  # b to the right
        return ax + aw, acy, bx, bcy
    if bx + bw <= ax:  # b to the left
        return ax, acy, bx + bw, bcy
    if by >= ay + ah:  # b below
        return acx, ay + ah, bcx, by
    return acx, ay, bcx, by + bh  # b above


def render() -> str:
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="DejaVu Sans, Arial, sans-serif">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#444"/></marker></defs>',
        f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
        '<text x="20" y="24" font-size="16" font-weight="bold">creditauth: the request path</text>',
    ]
    for key, x, y, w, h, title, lines, fill in BOXES:
        out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="#555"/>')
        out.append(f'<text x="{x + 8}" y="{y + 18}" font-size="12.5" font-weight="bold">{escape(title)}</text>')
        for i, line in enumerate(lines):
            indent = 10 if line.startswith("  ") else 0
            out.append(f'<text x="{x + 8 + indent}" y="{y + 36 + 15 * i}" font-size="11">{escape(line.strip())}</text>')
        del key
    for a, b, label in ARROWS:
        x1, y1, x2, y2 = _edge(a, b)
        out.append(
            f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="#444" '
            'stroke-width="1.4" marker-end="url(#arrow)"/>'
        )
        if label:
            out.append(
                f'<text x="{(x1 + x2) / 2:.0f}" y="{(y1 + y2) / 2 - 5:.0f}" font-size="10" fill="#333" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    svg = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != svg:
            print(f"{OUT} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main())

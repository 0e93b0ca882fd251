"""Controls the scan proposes, for an operator to apply with one command each.

A proposal is a ``features.controls.Control`` (checked here as the store would check it)
plus the ``creditauth controls set`` command that sets it through the admin service, so the
operator, not the scan, authenticates and is the audited author. The scan never sets a
control itself: a sudden drop in a region can be a data fault as easily as a downturn.

- a flagged region or industry: ``limit_factor`` (default 0.5) on that segment;
- flagged merchants: one ``refer`` control listing them (a merchants file beside the
  proposal file, since a command line cannot carry thousands of ids).
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from features.controls import MAX_MERCHANTS, Control, Scope
from features.early_warning.scan import ScanResult

AUTHOR = "warnings-scan"
DEFAULT_TTL_S = 7 * 86400.0
_CODE = {"region": "CTRL_EW_REGION_SHOCK", "industry": "CTRL_EW_INDUSTRY_SHOCK"}


@dataclass(frozen=True)
class Proposal:
    control: Control
    ttl_s: float
    merchants_file: str | None  # the file the command's --merchants-file reads, if any

    def command(self) -> list[str]:
        """``creditauth controls set ...`` for this control (connection options to add)."""
        c = self.control
        argv = ["creditauth", "controls", "set", "--id", c.id, "--effect", c.effect,
                "--reason-code", c.reason_code, "--justification", c.justification, "--ttl", f"{self.ttl_s:.0f}s"]
        if c.effect == "limit_factor":
            argv += ["--limit-factor", f"{c.limit_factor:g}"]
        for flag, values in (("--region", c.scope.regions), ("--industry", c.scope.industries)):
            for v in values:
                argv += [flag, v]
        if self.merchants_file is not None:
            argv += ["--merchants-file", self.merchants_file]
        return argv

    def shell(self) -> str:
        return shlex.join(self.command())


def _segment(row: dict[str, Any], as_of: dt.date, *, factor: float, now: float, ttl_s: float) -> Proposal:
    kind, subject = str(row["kind"]), str(row["subject"])
    scope = Scope(regions=(subject,)) if kind == "region" else Scope(industries=(subject,))
    why = (f"early-warning scan {as_of}: {row['dropped']} of {row['merchants']} merchants in {kind} {subject} "
           f"({float(row['share']):.0%}; usual {float(row['median_share']):.0%}) lost revenue against their own "
           f"baseline; limits x{factor:g} until reviewed")
    control = Control(id=f"ew-{kind}-{subject}-{as_of:%Y%m%d}"[:64], scope=scope, effect="limit_factor",
                      reason_code=_CODE[kind], justification=why, expires_at=now + ttl_s, author=AUTHOR,
                      limit_factor=factor)
    return Proposal(control, ttl_s, None)


def propose(result: ScanResult, *, now: float, ttl_s: float = DEFAULT_TTL_S, factor: float = 0.5,
            merchants_file: Path | None = None) -> list[Proposal]:
    """The proposals for ``result``, each ``Control.check``-ed (``ControlError`` if not).

    ``merchants_file``: where the flagged merchants' ids are written for their ``refer``
    proposal (none is made without it or without flagged merchants).
    """
    out = [
        _segment(row, result.as_of, factor=factor, now=now, ttl_s=ttl_s)
        for row in result.segments.filter("flagged").iter_rows(named=True)
    ]
    ids = result.merchants.filter("flagged").sort("rev_robust_z_7d")["merchant_id"].head(MAX_MERCHANTS)
    if merchants_file is not None and ids.len():
        merchants_file.parent.mkdir(parents=True, exist_ok=True)
        merchants_file.write_text(f"# early-warning scan {result.as_of}: revenue drop\n" + "\n".join(ids) + "\n")
        why = (f"early-warning scan {result.as_of}: last week's revenue fell against the merchant's own "
               f"13-week profile (robust z <= {result.thresholds.z:g}, change <= {result.thresholds.change:.0%})")
        control = Control(id=f"ew-merchants-{result.as_of:%Y%m%d}", scope=Scope(merchants=tuple(ids)),
                          effect="refer", reason_code="CTRL_EW_MERCHANT_DROP", justification=why,
                          expires_at=now + ttl_s, author=AUTHOR)
        out.append(Proposal(control, ttl_s, str(merchants_file)))
    for p in out:
        p.control.check(now)
    return out


def write_proposals(proposals: list[Proposal], path: Path, *, as_of: dt.date) -> Path:
    """A JSON document: per proposal the control and the command that applies it."""
    entries: list[dict[str, Any]] = []
    for p in proposals:
        control = {k: v for k, v in asdict(p.control).items() if k not in ("version", "reason_slot", "set_at")}
        if p.merchants_file is not None:  # the ids are in the file the command reads, not repeated here
            control["scope"]["merchants"] = f"<{len(p.control.scope.merchants)} ids in {p.merchants_file}>"
        entries.append({"control": control, "ttl_s": p.ttl_s, "command": p.command(), "shell": p.shell()})
    doc = {
        "as_of": as_of.isoformat(),
        "apply": "run each proposal's command (add --target and the operator's credentials)",
        "proposals": entries,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


"""Run a fuzz target in a subprocess and report inputs, crashes and rate.

    python -m tests.fuzz.run resp --runs 1000000
    python -m tests.fuzz.run --list

A target is ``tests/fuzz/fuzz_<name>.py``, found by its file name (adding one needs no
edit here). The driver runs it as ``python tests/fuzz/fuzz_<name>.py --runs N [extra...]``
in its own process, so a crash that kills it (a segfault, an abort) is seen as such
rather than taking the driver down. A harness reports in either of two forms, both parsed:

- its own summary line: ``target <name>: inputs <N> crashes <C> ...``;
- libFuzzer's (atheris): ``Done <N> runs in <S> second(s)``, with crashes seen as a non-zero
  exit and ``Test unit written to <path>``.

A run is a crash if the process exits non-zero, dies by a signal, or reports crashes.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_SUMMARY = re.compile(r"target (\S+): inputs (\d+) crashes (\d+)")
_LIBFUZZER_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Report:
    target: str
    inputs: int
    seconds: float
    crashes: int
    returncode: int
    artifacts: list[str] = field(default_factory=list)
    tail: str = ""  # the last lines of output, for a crash's story

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.crashes == 0

    def line(self) -> str:
        how = f"exit {self.returncode}" if self.returncode >= 0 else f"killed by {_signal_name(-self.returncode)}"
        return (f"target {self.target}: inputs {self.inputs:,} crashes {self.crashes} in {self.seconds:.1f} s "
                f"({self.rate:,.0f}/s), {how}" + "".join(f"\n  crashing input: {a}" for a in self.artifacts))


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def targets() -> dict[str, Path]:
    return {p.stem.removeprefix("fuzz_"): p for p in sorted(HERE.glob("fuzz_*.py"))}


# The harness is started by a small launcher rather than by this process: on Linux a child's
# ru_maxrss starts at its parent's resident size, and libFuzzer reads ru_maxrss against its
# -rss_limit_mb (2 GB), so a harness forked straight from a test run grown past 2 GB reports a
# false out-of-memory crash at its first input. The launcher is small; its own child starts
# fresh. It exits as the harness did, dying by the same signal where the harness did.
_FRESH_RSS = (
    "import os, signal, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "if rc < 0:\n"
    "    signal.signal(-rc, signal.SIG_DFL)\n"
    "    os.kill(os.getpid(), -rc)\n"
    "sys.exit(rc)\n"
)


def run(target: str, runs: int, extra: list[str] | None = None, *, timeout_s: float | None = None) -> Report:
    """Fuzz ``target`` for ``runs`` inputs in a subprocess; never raises for a crash, reports it."""
    known = targets()
    if target not in known:
        raise ValueError(f"unknown fuzz target {target!r}; known: {', '.join(known) or 'none'}")
    cmd = [sys.executable, "-c", _FRESH_RSS, sys.executable, str(known[target]), "--runs", str(runs), *(extra or [])]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=timeout_s)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # a hang is a finding too
        out = (exc.stdout or "") + (exc.stderr or "") if isinstance(exc.stdout, str) else ""
        out, rc = out + f"\ntimed out after {timeout_s} s", -int(signal.SIGKILL)
    seconds = time.perf_counter() - t0
    return _parse(target, out, rc, seconds)


def _parse(target: str, out: str, rc: int, seconds: float) -> Report:
    inputs, crashes = 0, 0
    summary = _SUMMARY.findall(out)
    if summary:
        inputs, crashes = int(summary[-1][1]), int(summary[-1][2])
    elif done := _LIBFUZZER_DONE.findall(out):
        inputs = int(done[-1][0])
    artifacts = _ARTIFACT.findall(out)
    if rc != 0 and crashes == 0:
        crashes = max(1, len(artifacts))  # libFuzzer stops at the first crash
    tail = "\n".join(out.strip().splitlines()[-40:]) if rc != 0 or crashes else ""
    return Report(target, inputs, seconds, crashes, rc, artifacts, tail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", nargs="?", help="a target name (tests/fuzz/fuzz_<name>.py)")
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--list", action="store_true", help="list the targets")
    args, extra = ap.parse_known_args(argv)
    if args.list or not args.target:
        print("\n".join(targets()))
        return 0
    report = run(args.target, args.runs, extra)
    print(report.line())
    if report.tail:
        print(report.tail)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

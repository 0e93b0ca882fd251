"""The loop a fuzz harness runs: seeded mutation, or atheris when it is installed.

A harness declares a ``Target`` (its seeds, its one-input check, its mutator) and calls
``main(target)``; it prints the report line ``tests/fuzz/run.py`` reads:
``target NAME: inputs N crashes C seconds S``.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    name: str
    module: str  # the harness's module name: atheris instruments its functions
    seeds: Callable[[], list[bytes]]
    one_input: Callable[[bytes], str]  # an outcome name; raises on a crash
    mutate: Callable[[bytes, random.Random, list[bytes]], bytes]
    keep: Callable[[str, random.Random], bool]  # a mutated input with this outcome joins the corpus
    corpus_max: int
    max_len: int
    instrument: tuple[str, ...]  # the module's functions atheris instruments (one_input first)
    check_seed: Callable[[int, str], None] = lambda i, outcome: None


def run_mutation(t: Target, runs: int, seed: int) -> int:
    rng = random.Random(seed)
    corpus = t.seeds()
    outcomes: dict[str, int] = {}
    crashes = 0
    t0 = time.perf_counter()
    for n in range(runs):
        data = t.mutate(rng.choice(corpus), rng, corpus) if n >= len(corpus) else corpus[n]
        try:
            outcome = t.one_input(data)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if len(corpus) < t.corpus_max and t.keep(outcome, rng):
                corpus.append(data)
        except Exception as exc:
            crashes += 1
            print(f"CRASH {type(exc).__name__}: {exc}\n  input {data.hex()}", flush=True)
    seconds = time.perf_counter() - t0
    print(f"outcomes {dict(sorted(outcomes.items()))}")
    print(f"target {t.name}: inputs {runs} crashes {crashes} seconds {seconds:.1f} ({runs / seconds:,.0f}/s)")
    return 1 if crashes else 0


def run_atheris(t: Target, argv: list[str]) -> None:
    import atheris

    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{t.name}-"))
    for sub in ("corpus", "seeds"):
        (work / sub).mkdir()
    for i, s in enumerate(t.seeds()):
        t.check_seed(i, t.one_input(s))  # the seeds themselves must pass
        (work / "seeds" / f"seed-{i}").write_bytes(s)
    flags = [a for a in argv[1:] if a.startswith("-")]
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={t.max_len}")
    module = sys.modules[t.module]
    for name in t.instrument:
        setattr(module, name, atheris.instrument_func(getattr(module, name)))
    atheris.Setup([argv[0], *flags, str(work / "corpus"), str(work / "seeds")], getattr(module, t.instrument[0]))
    atheris.Fuzz()


def main(t: Target) -> None:
    args = sys.argv[1:]
    runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 100_000
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 1
    try:
        import atheris  # noqa: F401
    except ImportError:
        args.append("--mutate")
    if "--mutate" in args:
        sys.exit(run_mutation(t, runs, seed))
    run_atheris(t, [sys.argv[0], f"-runs={runs}", f"-seed={seed}"])

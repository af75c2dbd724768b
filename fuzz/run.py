"""Run one fuzz harness under libFuzzer (atheris) with its seeds, and summarize the run.

    python -m fuzz.run sip  --runs 200000          # bounded by inputs
    python -m fuzz.run mi   --seconds 30           # bounded by time
    python -m fuzz.run sip  --runs 10000000 --explore 1800   # the long run of docs/reliability.md

Harnesses: `sip` (fuzz/sip_engine.py: the SIP engine, scanned path against general path, sanitized C
scanner), `mi` (fuzz/mi_rpc.py: the MI's JSON-RPC framing), `rows` (fuzz/socket_rows.py: socket rows and
static sockets). The working corpus is build/fuzz/corpus/HARNESS (or --corpus): the committed seeds
(fuzz/corpus/HARNESS, plus RFC 4475's messages for `sip`) are copied into it, and libFuzzer adds what it
finds there, so a later run starts where an earlier one stopped. A failing input is saved under
build/fuzz/crashes/HARNESS/ and the command exits non-zero naming it; replay it with
`python -m fuzz.run HARNESS --replay FILE`.

`--explore S` (sip only) splits the run in two: S seconds with the engine's Python code instrumented
(atheris counts its branches and traces its comparisons: the fuzzer learns the grammar, but each input
costs ten to thirty times more), then the rest of the --runs budget on the mypyc-compiled core the proxy
runs, with only the scanner's C branches as guide, starting from the corpus the first phase grew. Every
input of both phases is checked the same way (both paths, equal outcomes, no exception, sanitized scanner).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fuzz.sanitized import BUILD, ROOT, build_scanner, sanitized_env

HARNESSES = {"sip": "fuzz.sip_engine", "mi": "fuzz.mi_rpc", "rows": "fuzz.socket_rows"}
CORPUS = ROOT / "fuzz" / "corpus"
SEEDS = {
    "sip": [(CORPUS / "sip", "*.sip"), (ROOT / "tests" / "data" / "rfc4475", "*.dat")],
    "mi": [(CORPUS / "mi", "*.json")],
    "rows": [(CORPUS / "rows", "*.txt")],
}
# Per harness: the longest input and the memory limit (ASan's quarantine and shadow memory need room).
LIMITS = {"sip": ["-max_len=4096", "-rss_limit_mb=4096"], "mi": ["-max_len=4096"], "rows": ["-max_len=512"]}
# libFuzzer dictionaries: tokens the harness' code compares in C (json's scanner), where atheris sees nothing.
DICTS = {"mi": ROOT / "fuzz" / "dicts" / "json.dict", "rows": ROOT / "fuzz" / "dicts" / "rows.dict"}
STAT = re.compile(rb"^stat::(\w+):\s+(\d+)", re.M)
PROGRESS = re.compile(rb"cov: (\d+) ft: (\d+) corp: (\d+)/")


@dataclass
class Result:
    returncode: int
    executed: int
    exec_per_sec: int
    new_units: int
    peak_rss_mb: int
    cov: int
    features: int
    corpus: int
    seconds: float
    artifacts: list[Path]


def seed(corpus: Path, harness: str) -> int:
    """Copy the committed seeds into the working corpus (named by content, as libFuzzer names its own)."""
    corpus.mkdir(parents=True, exist_ok=True)
    copied = 0
    for folder, pattern in SEEDS[harness]:
        for path in sorted(folder.glob(pattern)):
            data = path.read_bytes()
            target = corpus / hashlib.sha1(data).hexdigest()
            if not target.exists():
                target.write_bytes(data)
                copied += 1
    return copied


def harness_env(harness: str, python_coverage: str) -> dict[str, str]:
    if harness == "sip":
        build_scanner()
        env = sanitized_env()
        env["SIPSOCKETS_FUZZ_PYTHON_COVERAGE"] = python_coverage
    else:
        env = sanitized_env()
        # Pure Python harnesses load no sanitized library: atheris' own libFuzzer is enough.
        del env["LD_PRELOAD"]
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_libfuzzer(
    harness: str, corpus: Path, budget: list[str], python_coverage: str, log: Path, extra: list[str]
) -> Result:
    crashes = BUILD / "crashes" / harness
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.iterdir())
    cmd = [
        sys.executable,
        "-m",
        HARNESSES[harness],
        *LIMITS[harness],
        *([f"-dict={DICTS[harness]}"] if harness in DICTS else []),
        *budget,
        "-timeout=10",
        "-print_final_stats=1",
        "-print_pcs=0",
        f"-artifact_prefix={crashes}/",
        *extra,
        str(corpus),
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    print("+", " ".join(cmd), flush=True)
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(
            cmd, env=harness_env(harness, python_coverage), stdout=out, stderr=subprocess.STDOUT, check=False
        )
    seconds = time.monotonic() - started
    text = log.read_bytes()
    stats = {m.group(1).decode(): int(m.group(2)) for m in STAT.finditer(text)}
    progress = PROGRESS.findall(text)
    cov, ft, corp = (int(x) for x in progress[-1]) if progress else (0, 0, 0)
    return Result(
        returncode=done.returncode,
        executed=stats.get("number_of_executed_units", 0),
        exec_per_sec=stats.get("average_exec_per_sec", 0),
        new_units=stats.get("new_units_added", 0),
        peak_rss_mb=stats.get("peak_rss_mb", 0),
        cov=cov,
        features=ft,
        corpus=corp,
        seconds=seconds,
        artifacts=sorted(set(crashes.iterdir()) - before),
    )


def report(name: str, result: Result, log: Path) -> None:
    print(
        f"{name}: {result.executed} inputs in {result.seconds:.0f} s ({result.exec_per_sec} exec/s), "
        f"coverage {result.cov} edges / {result.features} features, corpus {result.corpus} inputs "
        f"({result.new_units} new), peak RSS {result.peak_rss_mb} MB, exit {result.returncode}; log {log}",
        flush=True,
    )
    for path in result.artifacts:
        print(
            f"{name}: failing input saved as {path} (replay: python -m fuzz.run "
            f"{name.split(maxsplit=1)[0]} --replay {path})",
            flush=True,
        )


def corpus_stats(harness: str, corpus: Path) -> int:
    cmd = [sys.executable, "-m", HARNESSES[harness], "--stats", str(corpus)]
    return subprocess.run(cmd, env=harness_env(harness, "off"), check=False).returncode


def replay(harness: str, path: Path) -> int:
    cmd = [sys.executable, "-m", HARNESSES[harness], "-runs=1", str(path)]
    return subprocess.run(cmd, env=harness_env(harness, "off"), check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("harness", choices=sorted(HARNESSES))
    parser.add_argument("--runs", type=int, help="stop after this many inputs")
    parser.add_argument("--seconds", type=int, help="stop after this many seconds")
    parser.add_argument("--explore", type=int, default=0, help="sip: seconds with Python coverage first")
    parser.add_argument(
        "--python-coverage",
        choices=("full", "branches", "off", "compiled"),
        default="full",
        help="sip: the engine's Python code with branches and comparisons traced, branches only, not "
        "instrumented, or the mypyc-compiled core the proxy runs (the last two: guided by the scanner's C "
        "branches)",
    )
    parser.add_argument("--corpus", type=Path, help="working corpus (default build/fuzz/corpus/HARNESS)")
    parser.add_argument("--replay", type=Path, help="run one saved input and exit")
    parser.add_argument("--stats", action="store_true", help="sip: which path answered each corpus input")
    parser.add_argument("extra", nargs="*", help="more libFuzzer flags (after --)")
    args = parser.parse_args(argv)
    if args.replay is not None:
        return replay(args.harness, args.replay)
    if args.stats and args.harness == "sip":
        return corpus_stats(args.harness, args.corpus or BUILD / "corpus" / args.harness)
    if args.runs is None and args.seconds is None:
        parser.error("give --runs or --seconds: a run must be bounded")
    corpus: Path = args.corpus or BUILD / "corpus" / args.harness
    print(f"{args.harness}: {seed(corpus, args.harness)} seeds added to {corpus}", flush=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    logs = BUILD / "logs"
    phases: list[tuple[str, list[str], str]] = []
    if args.explore and args.harness == "sip":
        phases.append(("explore", [f"-max_total_time={args.explore}"], "full"))
    limit = [f"-runs={args.runs}"] if args.runs is not None else []
    limit += [f"-max_total_time={args.seconds}"] if args.seconds is not None else []
    coverage = "compiled" if args.explore else args.python_coverage
    phases.append(("run", limit, coverage))
    executed = 0
    for phase, planned, mode in phases:
        budget = planned
        if phase == "run" and args.runs is not None and executed:
            budget = [f"-runs={max(args.runs - executed, 1)}", *planned[1:]]
        log = logs / f"{args.harness}-{stamp}-{phase}.log"
        result = run_libfuzzer(args.harness, corpus, budget, mode, log, args.extra)
        executed += result.executed
        report(f"{args.harness} {phase} (python coverage {mode})", result, log)
        if result.returncode != 0 or result.artifacts:
            sys.stdout.write(log.read_bytes()[-6000:].decode("utf-8", "replace"))
            return result.returncode or 1
    if len(phases) > 1:
        print(f"{args.harness}: {executed} inputs in all, no failure", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench [proxy_cpu] [reload_latency] [operator] [udp_pool] [tls] [handover] [reliability]
[options]`: the named benchmarks (default: all but reliability).

Figures are printed and written as JSON to `<workdir>/results.json`; nothing is asserted. Every process a
benchmark starts is stopped when it ends, fails, or is interrupted (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import (
    handover,
    machine,
    operator_apply,
    proxy_cpu,
    reliability,
    reload_latency,
    tls_edge,
    udp_pool,
)

BENCHES: dict[str, Callable[[argparse.Namespace, Path], Awaitable[dict[str, Any]]]] = {
    "proxy_cpu": proxy_cpu.run,
    "reload_latency": reload_latency.run,
    "operator": operator_apply.run,
    "udp_pool": udp_pool.run,
    "tls": tls_edge.run,
    "handover": handover.run,
    "reliability": reliability.run,
}
# Without names: all but `reliability`, about 20 minutes (docs/reliability.md), which is run on its own.
DEFAULT = [name for name in BENCHES if name != "reliability"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"any of {', '.join(BENCHES)} (default: {', '.join(DEFAULT)})",
    )
    parser.add_argument(
        "--workdir", type=Path, help="logs and results (default: a new /tmp/sipsockets-bench-*)"
    )
    proxy_cpu.add_arguments(parser.add_argument_group("proxy_cpu"))
    reload_latency.add_arguments(parser.add_argument_group("reload_latency"))
    operator_apply.add_arguments(parser.add_argument_group("operator"))
    udp_pool.add_arguments(parser.add_argument_group("udp_pool"))
    tls_edge.add_arguments(parser.add_argument_group("tls"))
    handover.add_arguments(parser.add_argument_group("handover"))
    reliability.add_arguments(parser.add_argument_group("reliability"))
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    return args


async def main(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="sipsockets-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    names = args.names or DEFAULT
    results: dict[str, Any] = {"machine": machine.describe(), "argv": sys.argv[1:], "results": {}}
    print(f"bench: {', '.join(names)}; workdir {workdir}")
    m = results["machine"]
    print(f"machine: {m['nproc']} x {m['cpu_model']}, load {m['loadavg']}; {m['kamailio']}; {m['sipp']}")
    code = 0
    for name in names:
        t0 = time.monotonic()
        try:
            (workdir / name).mkdir(parents=True, exist_ok=True)
            results["results"][name] = await BENCHES[name](args, workdir / name)
        except (RuntimeError, OSError, TimeoutError) as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            results["results"][name] = {"error": str(exc)}
            code = 1
        print(f"{name}: {time.monotonic() - t0:.0f}s, load {machine.load()}", flush=True)
        (workdir / "results.json").write_text(json.dumps(results, indent=1))
    results["machine"]["loadavg_end"] = machine.load()
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {workdir / 'results.json'}")
    return code


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; processes stopped", file=sys.stderr)
        sys.exit(130)

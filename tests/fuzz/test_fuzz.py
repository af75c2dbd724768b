"""Short bounded runs of the three fuzz harnesses (fuzz/), as `make test` runs them, and their oracles.

Each run starts from the committed seeds in a fresh corpus and fails when the fuzzer finds an input that
makes a harness fail (the output names the saved input and how to replay it). The long run and its
figures are in docs/reliability.md.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from fuzz.mi_rpc import Violation as MiViolation
from fuzz.mi_rpc import check_response
from fuzz.run import SEEDS
from fuzz.sanitized import build_extension, sanitized_env
from fuzz.socket_rows import check as check_row

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"(\d+) inputs in \d+ s .*coverage (\d+) edges / (\d+) features")
# Inputs and a time cap per harness: the SIP engine runs instrumented Python twice per input (about 400
# inputs a second here), the other two are much cheaper. Together well under three minutes on 2 cores.
BUDGETS = {"sip": ("20000", "60"), "mi": ("300000", "25"), "rows": ("300000", "25")}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("harness", sorted(BUDGETS))
def test_short_fuzz_run_finds_nothing(harness: str, tmp_path: Path) -> None:
    runs, seconds = BUDGETS[harness]
    cmd = [sys.executable, "-m", "fuzz.run", harness, "--runs", runs, "--seconds", seconds]
    done = subprocess.run(
        [*cmd, "--corpus", str(tmp_path / "corpus")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    summary = SUMMARY.search(output)
    assert summary is not None, output[-3000:]
    inputs, edges, _ = (int(x) for x in summary.groups())
    assert inputs > 0 and edges > 0, summary.group(0)


@pytest.mark.parametrize(
    ("call", "report"),
    [
        ("faulty.read_past_end(b'abc')", "ERROR: AddressSanitizer"),
        ("faulty.overflow(5)", "runtime error: signed integer overflow"),
    ],
)
def test_the_harness_setup_stops_on_a_memory_error_or_undefined_behaviour(
    call: str, report: str, tmp_path: Path
) -> None:
    """The flags and the environment that the SIP harness builds and runs the scanner with catch both kinds
    of bug, on a C extension that has one of each: the process aborts with the sanitizer's report."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    build_extension(Path(__file__).parent / "data" / "faulty.c", tmp_path / f"faulty{suffix}")
    done = subprocess.run(
        [sys.executable, "-c", f"import faulty; {call}"],
        cwd=tmp_path,
        env=sanitized_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and report in done.stderr, done.stderr[-3000:]


def test_seeds_are_committed_and_small() -> None:
    captures = sorted((ROOT / "fuzz" / "corpus" / "sip").glob("*.sip"))
    assert 20 <= len(captures) < 200
    starts = (b"SIP/2.0 ", b"INVITE ", b"ACK ", b"BYE ", b"OPTIONS ")
    assert all(p.read_bytes().startswith(starts) for p in captures)
    for harness in ("mi", "rows"):
        folder, pattern = SEEDS[harness][0]
        assert len(list(folder.glob(pattern))) >= 10


REQUEST = b'{"jsonrpc":"2.0","method":"version","id":7}'


@pytest.mark.parametrize(
    ("body", "response"),
    [
        (REQUEST, {"jsonrpc": "2.0", "result": 1, "error": {"code": 1, "message": "x"}, "id": 7}),
        (REQUEST, {"jsonrpc": "2.0", "result": 1, "id": 8}),
        (REQUEST, {"jsonrpc": "2.0", "error": {"code": "1", "message": "x"}, "id": 7}),
        (REQUEST, {"jsonrpc": "2.0", "error": {"code": 1}, "id": 7}),
        (REQUEST, {"result": 1, "id": 7}),
        (REQUEST, None),
        (b'{"jsonrpc":"2.0","method":"version","id":1e400}', {"jsonrpc": "2.0", "result": 1, "id": math.inf}),
        (b"[1]", {"jsonrpc": "2.0", "result": math.nan, "id": None}),
    ],
)
def test_mi_oracle_refuses_what_is_not_a_json_rpc_answer(body: bytes, response: Any) -> None:
    with pytest.raises(MiViolation):
        check_response(body, response)


def test_mi_oracle_accepts_answers_and_notifications() -> None:
    check_response(REQUEST, {"jsonrpc": "2.0", "result": {"Server": "x"}, "id": 7})
    check_response(b"{", {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None})
    check_response(b'{"jsonrpc":"2.0","method":"version"}', None)


def test_rows_oracle_reads_rows_and_static_sockets() -> None:
    spec = check_row("udp:proxy.example|[2001:db8::1]:5099|edge|frag,anycast|#16")
    assert spec is not None and spec.host == "192.0.2.10" and spec.tos == 16
    assert check_row("static tcp:[::1] as 198.51.100.7 tag core use_workers 3 reuse_port") is not None
    assert check_row("udp:twice.example") is None  # a RowError with its reason

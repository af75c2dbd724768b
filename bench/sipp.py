"""SIPp runners: a `-sn uas` that answers every call, a `-sn uac` that places a fixed number at a fixed rate.

The uac's result comes from its `-trace_stat` CSV (cumulative columns of the last line, written at exit)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Processes

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
RECV_TIMEOUT_MS = 5000  # a call with no answer for this long counts as failed instead of hanging the run
# SIPp's default socket buffers (64 KiB) overflow on the first burst a proxy delivers after a scheduling stall
# of a shared machine; then the losses measured are SIPp's, not the proxy's. Same size as sipproxy's own.
BUFF_SIZE = 4 << 20


@dataclass(frozen=True)
class SippStats:
    successful: int
    failed: int
    retransmissions: int
    elapsed_s: float
    created: int
    failures: dict[str, int]  # the non-zero Failed*(C) counters by reason
    watchdog: int  # SIPp's own scheduling alarms (WatchdogMinor + WatchdogMajor)

    @property
    def achieved_rate(self) -> float:
        return self.created / self.elapsed_s if self.elapsed_s > 0 else 0.0


def uas_argv(host: str, port: int) -> list[str]:
    return [SIPP, "-sn", "uas", "-i", host, "-p", str(port), "-buff_size", str(BUFF_SIZE), "-nostdin"]


# A real UA ignores a 180 that arrives after the 200; SIPp's built-in uac aborts the call on it (counted as
# failed). With this SIPp goes on with the call as a UA would.
TOLERATE_REORDER = ("-default_behaviors", "all,-abortunexp")


def uac_argv(
    target: str,
    host: str,
    port: int,
    rate: float,
    calls: int,
    stat_file: Path,
    extra: Sequence[str] = (),
    scenario: Sequence[str] = ("-sn", "uac"),
) -> list[str]:
    return [
        SIPP,
        *scenario,
        target,
        "-i",
        host,
        "-p",
        str(port),
        "-r",
        f"{rate:g}",
        "-m",
        str(calls),
        "-recv_timeout",
        str(RECV_TIMEOUT_MS),
        "-buff_size",
        str(BUFF_SIZE),
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-fd",
        "1",
        "-nostdin",
        *extra,
    ]


def _epoch(text: str) -> float:
    # SIPp writes times as "date<TAB>time<TAB>epoch.microseconds"; ElapsedTime has whole seconds only.
    return float(text.rsplit("\t", maxsplit=1)[-1])


def parse_stat_csv(text: str) -> SippStats:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError("SIPp statistics file has no data line")
    header = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    col = dict(zip(header, values, strict=False))
    return SippStats(
        successful=int(col["SuccessfulCall(C)"]),
        failed=int(col["FailedCall(C)"]),
        retransmissions=int(col["Retransmissions(C)"]),
        elapsed_s=_epoch(col["CurrentTime"]) - _epoch(col["StartTime"]),
        created=int(col["TotalCallCreated"]),
        failures={
            k[len("Failed") : -len("(C)")]: int(v)
            for k, v in col.items()
            if k.startswith("Failed")
            and k.endswith("(C)")
            and k != "FailedCall(C)"
            and v.isdigit()
            and int(v)
        },
        watchdog=sum(int(col.get(k, "0") or 0) for k in ("WatchdogMinor(C)", "WatchdogMajor(C)")),
    )


async def run_uac(
    procs: Processes,
    name: str,
    target: str,
    host: str,
    rate: float,
    calls: int,
    workdir: Path,
    port: int,
    extra: Sequence[str] = (),
    scenario: Sequence[str] = ("-sn", "uac"),
) -> SippStats:
    """Place `calls` calls at `rate` per second to `target`; bounded by the expected duration plus margins.
    `scenario` replaces the built-in uac (e.g. `-sf FILE -inf TARGETS`), `extra` adds options."""
    stat_file = workdir / f"{name}.csv"
    with contextlib.suppress(FileNotFoundError):
        stat_file.unlink()
    argv = uac_argv(target, host, port, rate, calls, stat_file, extra, scenario)
    proc = await procs.start(name, argv, stdout_to_log=False)
    limit = calls / rate + RECV_TIMEOUT_MS / 1000 * 3 + 30
    try:
        await asyncio.wait_for(proc.wait(), limit)
    except TimeoutError:
        raise RuntimeError(f"{name}: SIPp uac did not finish within {limit:.0f}s") from None
    finally:
        await procs.stop(proc)
    try:
        return parse_stat_csv(stat_file.read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise RuntimeError(f"{name}: no SIPp statistics ({exc}); log: {procs.log_tail(name)}") from None


def spread_scenario(workdir: Path, targets: Sequence[tuple[str, int]]) -> list[str]:
    """SIPp options for the built-in uac flow, each call sent to the next of `targets` in turn: the built-in
    scenario as SIPp exports it (`-sd uac`), with a `setdest` to the call's target read from an injection file
    (so nothing of SIPp's is kept in this repository)."""
    # SIPp exits 99 after dumping a scenario: judge by what it printed.
    text = subprocess.run([SIPP, "-sd", "uac"], capture_output=True, text=True, check=False).stdout
    head = "<scenario name="
    if head not in text:
        raise RuntimeError(f"`sipp -sd uac` printed no scenario: {text[:200]!r}")
    start = text.index(head)
    end = text.index(">", start) + 1
    text = (
        text[:start]
        + '<scenario name="uac spread over sockets">\n  <nop><action>'
        + '<setdest host="[field0]" port="[field1]" protocol="udp" /></action></nop>'
        + text[end:]
    )
    text = text.replace(
        "INVITE sip:[service]@[remote_ip]:[remote_port]", "INVITE sip:[service]@[field0]:[field1]"
    )
    text = text.replace("<sip:[service]@[remote_ip]:[remote_port]>", "<sip:[service]@[field0]:[field1]>")
    scenario, inf = workdir / "uac-spread.xml", workdir / "uac-spread-targets.csv"
    scenario.write_text(text)
    inf.write_text("SEQUENTIAL\n" + "".join(f"{host};{port};\n" for host, port in targets))
    return ["-sf", str(scenario), "-inf", str(inf)]

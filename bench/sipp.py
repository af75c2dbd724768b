"""SIPp runners: a `-sn uas` that answers every call, a `-sn uac` that places a fixed number at a fixed rate.

The uac's result comes from its `-trace_stat` CSV (cumulative columns of the last line, written at exit)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
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


def uac_argv(target: str, host: str, port: int, rate: float, calls: int, stat_file: Path) -> list[str]:
    return [
        SIPP,
        "-sn",
        "uac",
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
) -> SippStats:
    """Place `calls` calls at `rate` per second to `target`; bounded by the expected duration plus margins."""
    stat_file = workdir / f"{name}.csv"
    with contextlib.suppress(FileNotFoundError):
        stat_file.unlink()
    proc = await procs.start(name, uac_argv(target, host, port, rate, calls, stat_file), stdout_to_log=False)
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

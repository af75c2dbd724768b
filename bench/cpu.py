"""CPU time of a process tree from /proc: utime and stime of every process in the tree.

The reaped children's time (cutime, cstime) is counted too, so a worker that exits between two samples is
not lost: its time moves from its own line to its parent's."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    utime: int  # clock ticks
    stime: int
    cutime: int
    cstime: int


@dataclass(frozen=True)
class CpuTimes:
    user: float  # seconds
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.system - other.system)


def parse_stat(text: str) -> ProcStat:
    """One /proc/PID/stat line. The command name is in parentheses and may itself hold spaces or ')'."""
    head, _, rest = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    f = rest.split()
    # rest starts at field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    return ProcStat(
        pid=pid, ppid=int(f[1]), utime=int(f[11]), stime=int(f[12]), cutime=int(f[13]), cstime=int(f[14])
    )


def read_all(proc: Path = Path("/proc")) -> dict[int, ProcStat]:
    stats: dict[int, ProcStat] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return stats


def tree(stats: Mapping[int, ProcStat], root: int) -> list[ProcStat]:
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out: list[ProcStat] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out.append(stats[pid])
            todo.extend(children.get(pid, []))
    return out


def cpu_of(stats: Iterable[ProcStat]) -> CpuTimes:
    user = sum(s.utime + s.cutime for s in stats)
    system = sum(s.stime + s.cstime for s in stats)
    return CpuTimes(user / CLK_TCK, system / CLK_TCK)


def tree_cpu(root: int) -> CpuTimes:
    return cpu_of(tree(read_all(), root))


def exec_seconds(pid: int) -> float:
    """On-CPU time of every thread of one process from schedstat: nanosecond-exact, unlike utime/stime,
    which the kernel splits between user and system by sampling at each tick."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def tree_exec_seconds(root: int) -> float:
    """schedstat on-CPU time of the live processes of the tree (exited ones are not counted)."""
    return sum(exec_seconds(st.pid) for st in tree(read_all(), root))


def process_cpu(pid: int) -> CpuTimes:
    st = parse_stat(Path(f"/proc/{pid}/stat").read_text())
    return cpu_of([st])


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of one process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def udp_drops(path: Path = Path("/proc/net/udp")) -> dict[int, int]:
    """Local port -> datagrams the kernel dropped on that IPv4 UDP socket (full receive buffer)."""
    out: dict[int, int] = {}
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        try:
            port = int(f[1].rsplit(":", 1)[1], 16)
            out[port] = out.get(port, 0) + int(f[-1])
        except (IndexError, ValueError):
            continue
    return out


def memory_and_fds(root: int) -> dict[str, int]:
    """RSS of the proxy's whole tree (KiB), and the descriptors the supervisor and its workers hold."""
    rss = fds = 0
    procs = tree(read_all(), root)
    for st in procs:
        try:
            for line in Path(f"/proc/{st.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{st.pid}/fd"))
        except OSError:
            continue
    return {"rss_kib": rss, "fds": fds, "processes": len(procs)}

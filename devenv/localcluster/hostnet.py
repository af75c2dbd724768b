"""What the node changes on the machine, and how it is undone: its bridge, its nftables table, cgroups,
mounts and leftover processes. Every function here is idempotent so that `down` can run after any failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from devenv.localcluster import layout

CGROUP_MOUNT = Path("/sys/fs/cgroup")


def _run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, input=input, check=False, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


# -- bridge --------------------------------------------------------------------------------------------------


def bridge_up() -> None:
    """The pod bridge with the node address, before the kubelet starts (its node IP must exist)."""
    if _run("ip", "link", "show", layout.BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", layout.BRIDGE, "type", "bridge")
    prefix = layout.POD_SUBNET.prefixlen
    _run("ip", "addr", "replace", f"{layout.NODE_IP}/{prefix}", "dev", layout.BRIDGE)
    _run("ip", "link", "set", layout.BRIDGE, "up")
    # Per-interface, not machine-wide: Service traffic from a pod to another pod is routed back out of this
    # bridge, and the API server's Service address is translated to 127.0.0.1 (route_localnet).
    _sysctl(f"net/ipv4/conf/{layout.BRIDGE}/forwarding", "1")
    _sysctl(f"net/ipv4/conf/{layout.BRIDGE}/route_localnet", "1")
    _sysctl(f"net/ipv6/conf/{layout.BRIDGE}/disable_ipv6", "1")


def bridge_down() -> None:
    if _run("ip", "link", "show", layout.BRIDGE, check=False).returncode == 0:
        _run("ip", "link", "del", layout.BRIDGE, check=False)


# -- nftables -----------------------------------------------------------------------------------------------


def nft_apply(script: str) -> None:
    # One transaction: create-if-missing, flush by deleting, then the new table.
    prologue = f"table ip {layout.NFT_TABLE}\ndelete table ip {layout.NFT_TABLE}\n"
    _run("nft", "-f", "-", input=prologue + script)


def nft_delete() -> None:
    _run("nft", "delete", "table", "ip", layout.NFT_TABLE, check=False)


def kubelet_iptables_cleanup() -> None:
    """The kubelet creates a few KUBE-* chains (canary, hint, localnet firewall); remove them again."""
    for tool in ("iptables", "ip6tables"):
        for table, chain, parents in (
            ("filter", "KUBE-FIREWALL", ("INPUT", "OUTPUT")),
            ("mangle", "KUBE-KUBELET-CANARY", ()),
            ("nat", "KUBE-KUBELET-CANARY", ()),
            ("filter", "KUBE-KUBELET-CANARY", ()),
            ("mangle", "KUBE-IPTABLES-HINT", ()),
        ):
            if _run(tool, "-w", "-t", table, "-S", chain, check=False).returncode != 0:
                continue
            for parent in parents:
                while _run(tool, "-w", "-t", table, "-D", parent, "-j", chain, check=False).returncode == 0:
                    pass
            _run(tool, "-w", "-t", table, "-F", chain, check=False)
            _run(tool, "-w", "-t", table, "-X", chain, check=False)


# -- cgroups -------------------------------------------------------------------------------------------------


def _cgroup_hierarchies() -> list[Path]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] in ("cgroup", "cgroup2") and fields[4].startswith(str(CGROUP_MOUNT)):
            found.append(Path(fields[4]))
    return found


def cgroup_root_create() -> None:
    """The kubelet's cgroupRoot must exist in every hierarchy; cpuset needs its cpus and mems filled in."""
    for hierarchy in _cgroup_hierarchies():
        d = hierarchy / layout.CGROUP_ROOT.lstrip("/")
        d.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (d / knob).exists() and not (d / knob).read_text().strip():
                (d / knob).write_text((hierarchy / knob).read_text())


def cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / layout.CGROUP_ROOT.lstrip("/")
        if root.is_dir():
            for procs in root.rglob("cgroup.procs"):
                try:
                    pids |= {int(p) for p in procs.read_text().split()}
                except OSError:
                    pass
    return pids


def cgroup_cleanup(timeout: float = 20.0) -> None:
    """Kill whatever still runs in the node's cgroups, then remove the whole subtree, deepest first."""
    deadline = time.monotonic() + timeout
    while (pids := cgroup_pids()) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / layout.CGROUP_ROOT.lstrip("/")
        if not root.is_dir():
            continue
        dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, root]:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


# -- mounts and processes ------------------------------------------------------------------------------------


def mounts_under(*dirs: Path) -> list[str]:
    prefixes = [str(d.resolve()) for d in dirs]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            found.append(point)
    return found


def unmount_under(*dirs: Path) -> None:
    for _ in range(5):
        points = mounts_under(*dirs)
        if not points:
            return
        for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
            if _run("umount", point, check=False).returncode != 0:
                _run("umount", "-l", point, check=False)


def processes_mentioning(needle: str) -> list[int]:
    """Pids whose command line contains needle (our containerd socket names its shims)."""
    found = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(d.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def container_log_links_cleanup(pod_logs: Path) -> None:
    """The kubelet links /var/log/containers/* to the pod logs; drop the links that point into ours."""
    links = Path("/var/log/containers")
    if not links.is_dir():
        return
    for link in links.iterdir():
        try:
            if link.is_symlink() and os.readlink(link).startswith(str(pod_logs)):
                link.unlink()
        except OSError:
            pass

"""The Debian packages `make test` needs, in one place: `make prerequisites` (run by `make test` before any
tier) installs the missing ones when it can, and otherwise stops at once with the one command that would.

Run by the system Python before the virtualenv exists (`python3 -m devenv.prerequisites`): standard library
only.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Real peers and servers of the tests: SIPp, PostgreSQL, MariaDB, Kamailio (benchmark peer, and with its TLS
# module a TLS peer), iproute2, procps, openssl; and for the e2e tier's single-node cluster: containerd,
# runc, CNI plugins, nftables and iptables, debootstrap and buildah (images built locally), skopeo, umoci and
# uidmap; clang and libclang-rt-14-dev build the fuzz harness' sanitized scanner (fuzz/sanitized.py).
PACKAGES: tuple[str, ...] = (
    "sip-tester",
    "postgresql",
    "mariadb-server",
    "kamailio",
    "kamailio-tls-modules",
    "iproute2",
    "procps",
    "openssl",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "nftables",
    "debootstrap",
    "buildah",
    "skopeo",
    "umoci",
    "uidmap",
    "clang",
    "libclang-rt-14-dev",
)

# Debian starts these services when it installs them, where it can; the tests run private instances of their
# own, so the system ones only take memory and CPU. Stopped right after they are installed, never otherwise
# (a developer's own database server is left alone).
SERVICES: dict[str, str] = {"postgresql": "postgresql", "mariadb-server": "mariadb"}

READY, INSTALL, STOP = "ready", "install", "stop"


@dataclass(frozen=True)
class Machine:
    root: bool
    apt: bool  # apt-get and dpkg-query are there
    installed: frozenset[str]  # of the packages asked about, those dpkg says are installed


@dataclass(frozen=True)
class Plan:
    action: str  # READY, INSTALL or STOP
    missing: tuple[str, ...] = ()
    message: str = ""
    commands: tuple[tuple[str, ...], ...] = ()  # INSTALL: run in order, as root
    services: tuple[str, ...] = ()  # INSTALL: stop these afterwards


def install_command(missing: Sequence[str], quiet: bool = True) -> tuple[str, ...]:
    return ("apt-get", "install", "-y", *(("-qq",) if quiet else ()), "--no-install-recommends", *missing)


def plan(required: Iterable[str], machine: Machine) -> Plan:
    """What `make prerequisites` does on this machine (pure)."""
    missing = tuple(p for p in required if p not in machine.installed)
    if not missing:
        return Plan(READY)
    listed = " ".join(missing)
    if not machine.apt:
        return Plan(
            STOP,
            missing,
            "make test runs its tiers against Debian packages, and this machine has no apt-get/dpkg.\n"
            f"Run it on Debian 12 (or a derivative), where it installs them: {listed}",
        )
    if not machine.root:
        command = "sudo apt-get update && sudo " + shlex.join(install_command(missing, quiet=False))
        return Plan(
            STOP,
            missing,
            f"make test needs Debian packages that are not installed: {listed}\n"
            f"Install them with this command (or run make test as root), then run make test again:\n\n"
            f"    {command}\n",
        )
    return Plan(
        INSTALL,
        missing,
        f"installing Debian packages: {listed}",
        (("apt-get", "update", "-qq"), install_command(missing)),
        tuple(SERVICES[p] for p in missing if p in SERVICES),
    )


def installed(packages: Sequence[str]) -> frozenset[str]:
    """The packages dpkg has installed (one dpkg-query for all; unknown names are simply not installed)."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    out = set()
    for line in result.stdout.splitlines():
        name, _, status = line.partition(" ")
        if status.strip() == "installed":
            out.add(name.split(":")[0])  # name:arch for multi-arch packages
    return frozenset(out)


def this_machine(packages: Sequence[str]) -> Machine:
    apt = shutil.which("apt-get") is not None and shutil.which("dpkg-query") is not None
    return Machine(
        root=os.geteuid() == 0,
        apt=apt,
        installed=installed(packages) if apt else frozenset(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    decided = plan(PACKAGES, this_machine(PACKAGES))
    if decided.action == READY:
        return 0
    if decided.action == STOP:
        print(decided.message, file=sys.stderr)
        return 1
    print(f"--- {decided.message}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in decided.commands:
        result = subprocess.run(command, env=env, check=False, stdout=subprocess.DEVNULL)
        if result.returncode != 0:
            print(f"{shlex.join(command)} failed (exit {result.returncode})", file=sys.stderr)
            return 1
    for service in decided.services:
        subprocess.run(["service", service, "stop"], capture_output=True, check=False)
    still = [p for p in decided.missing if p not in installed(decided.missing)]
    if still:
        print(f"still not installed after apt-get: {' '.join(still)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

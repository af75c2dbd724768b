"""Network namespaces for tests that need proxies with addresses of their own (root only): each "node" is a
namespace with an `eth0`, plugged by a veth pair into a Linux bridge that lives in a namespace of its own
(the LAN, which is also where SIP peers run). An address can then be put on one node, taken away and put on
another, as keepalived or an L2 announcer moves a floating address between the nodes of an HA pair.

Nothing is created in the host's own namespace: veth pairs are made directly inside the namespaces
(`ip -n NODE link add ... peer ... netns LAN`), and the test process talks to a namespace from a thread that
entered it (`Netns.call`), so the host's interfaces, addresses and routes are never touched. A process of the
host's namespace (the operator) reaches a TCP port inside one through a `Relay` on a host loopback address.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def available() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"`ip netns` does not work here: {exc}"
    return None


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        _run(["ip", "netns", "add", name])
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> str:
        return _run(["ip", "-n", self.name, *args])

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` in a thread that entered this namespace: sockets it opens are the namespace's."""
        result: list[T] = []
        error: list[BaseException] = []

        def run() -> None:
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {self.name}")
            finally:
                os.close(fd)
            try:
                result.append(fn())
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=run, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]

    def addresses(self) -> set[str]:
        out = self.ip("-o", "addr", "show")
        return {line.split()[3].split("/")[0] for line in out.splitlines() if " inet" in line}

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


class Lan:
    """`subnet` is the first three octets of a /24 (10.200.x is a good choice: the namespaces are private,
    so it cannot clash with anything outside). The LAN's own namespace has `.1` on its bridge."""

    def __init__(self, subnet: str = "10.200.7") -> None:
        self.subnet = subnet
        self.tag = secrets.token_hex(3)
        self.namespaces: list[Netns] = []
        self.lan = self._netns("lan")
        self.lan.ip("link", "add", "br0", "type", "bridge")
        self.lan.ip("addr", "add", f"{subnet}.1/24", "dev", "br0")
        self.lan.ip("link", "set", "br0", "up")

    def _netns(self, role: str) -> Netns:
        ns = Netns(f"sipsockets-{self.tag}-{role}")
        self.namespaces.append(ns)
        return ns

    def address(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    def node(self, name: str, host: int) -> Netns:
        """A namespace with `eth0` at `.host` on the LAN."""
        ns = self._netns(name)
        port = f"p{host}"
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.lan.name)
        ns.ip("addr", "add", f"{self.address(host)}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        self.lan.ip("link", "set", port, "master", "br0")
        self.lan.ip("link", "set", port, "up")
        return ns

    def move(self, address: str, source: Netns | None, target: Netns | None) -> None:
        """Take `address` off `source`'s eth0 and put it on `target`'s, then let the LAN forget where it was
        (what the new holder's gratuitous ARP does for keepalived or an L2 announcer)."""
        if source is not None:
            source.ip("addr", "del", f"{address}/32", "dev", "eth0")
        if target is not None:
            target.ip("addr", "add", f"{address}/32", "dev", "eth0")
        self.lan.ip("neigh", "flush", "dev", "br0")

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            ns.delete()
        self.namespaces = []


class Relay:
    """Connections to `listen` (a loopback address of the host) relayed to `target` inside `netns`: how the
    operator, which runs in the host's namespace, reaches the MI of a proxy in a namespace of its own. Each
    connection's far end is opened from a thread inside the namespace (a socket stays in the namespace it was
    made in), so no route between the namespaces is needed."""

    def __init__(self, listen: tuple[str, int], netns: Netns, target: tuple[str, int]) -> None:
        self.netns, self.target = netns, target
        self.server = socket.create_server(listen, reuse_port=False)
        self.server.settimeout(0.5)
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._accept, name=f"relay-{listen[0]}:{listen[1]}", daemon=True
        )
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self.netns.call(lambda: socket.create_connection(self.target, timeout=10))
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def close(self) -> None:
        self._stopped.set()
        self.server.close()
        self._thread.join(5)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until either side closes, then close both (the other pump ends with them)."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

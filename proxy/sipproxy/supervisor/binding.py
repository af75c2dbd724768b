"""Binding a socket from its spec, in the supervisor: the one place where bind errors happen.

A bind that fails because the address is not on this host (EADDRNOTAVAIL) is not an error of the socket: on
a node without the carrier's VLAN, or the standby of a floating address, the socket is *absent* and is bound
when the address appears (`address_present` is how the supervisor looks)."""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple

from sipproxy.shared.socketspec import UNSPECIFIED, SocketSpec

LISTEN_BACKLOG = 1024
UDP_BUFFER = 4 << 20
# Linux values; Python names the first only from 3.12 on, the second not at all. IPV6_FREEBIND is Linux 4.15+,
# older kernels take IP_FREEBIND on an IPv6 socket too.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)


def address_absent(exc: OSError) -> bool:
    """The bind failed only because the address is not on this host (now)."""
    return exc.errno == errno.EADDRNOTAVAIL


def address_present(host: str) -> bool:
    """Would the kernel let a socket bind `host` without free bind? Asked of the kernel itself (a UDP socket
    bound to an ephemeral port, closed at once): an address counts when it is assigned to an interface, but
    also when a local route covers it (all of 127.0.0.0/8, AnyIP `ip route add local ...`), which a list of
    interface addresses would miss."""
    if host in UNSPECIFIED:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as exc:
            return not address_absent(exc)
    return True


def set_freebind(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET6:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            return
        except OSError:
            pass
    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)


class BindKey(NamedTuple):
    """What the kernel binds: two specs with the same key are served by one socket. Advertised address, tag
    and ToS are not in it (they change on an open socket); `reuse_port` is, as it must be set before bind."""

    layer: str  # udp | tcp
    host: str
    port: int
    reuse_port: bool


def bind_key(spec: SocketSpec) -> BindKey:
    return BindKey(spec.layer, spec.host, spec.port, "reuse_port" in spec.flags)


def bind_socket(spec: SocketSpec) -> socket.socket:
    """A bound (and for TCP, listening) non-blocking socket; raises OSError as the kernel reports it."""
    kind = socket.SOCK_DGRAM if spec.layer == "udp" else socket.SOCK_STREAM
    sock = socket.socket(spec.family, kind)
    try:
        if spec.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            # TIME_WAIT of a removed listener's connections must not block re-adding it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
                except OSError:
                    pass
        if "reuse_port" in spec.flags:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if spec.tos:
            set_tos(sock, spec)
        if spec.freebind:
            set_freebind(sock, spec.family)
        sock.bind((spec.host, spec.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_tos(sock: socket.socket, spec: SocketSpec) -> None:
    """The socket's ToS (IPv4) or traffic class (IPv6); on an open socket it applies to every descriptor."""
    if spec.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, spec.tos)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, spec.tos)

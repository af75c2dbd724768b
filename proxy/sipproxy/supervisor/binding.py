"""Binding a socket from its spec, in the supervisor: the one place where bind errors happen."""

from __future__ import annotations

import socket

from sipproxy.shared.socketspec import SocketSpec

LISTEN_BACKLOG = 1024
UDP_BUFFER = 4 << 20


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

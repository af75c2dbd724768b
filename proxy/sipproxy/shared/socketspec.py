"""Socket descriptions: the OpenSIPS `sockets` row and the static-socket config syntax.

One `SocketSpec` is what the proxy binds and what the operator validates, so both parse it here.
"""

from __future__ import annotations

import ipaddress
import socket as _socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

PROTOCOLS: tuple[str, ...] = ("udp", "tcp", "tls", "ws", "wss")
# What the proxy can serve (every protocol it accepts).
SUPPORTED_PROTOCOLS: tuple[str, ...] = ("udp", "tcp", "tls", "ws", "wss")
DEFAULT_PORTS: dict[str, int] = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}
# Order matters: sockets_list joins flags in this order, as OpenSIPS does.
FLAGS: tuple[str, ...] = ("anycast", "frag", "reuse_port")
TOS_NAMES: dict[str, int] = {
    "IPTOS_LOWDELAY": 0x10,
    "IPTOS_THROUGHPUT": 0x08,
    "IPTOS_RELIABILITY": 0x04,
    "IPTOS_MINCOST": 0x02,
    "IPTOS_LOWCOST": 0x02,
}
# OpenSIPS knows these protocols; we name them in the error rather than calling them garbage.
_KNOWN_UNSERVED = ("sctp", "ipsec")

Resolver = Callable[[str], list[str]]


class RowError(ValueError):
    """A socket row or static socket that cannot be used; the message is the human reason."""


@dataclass(frozen=True)
class SocketSpec:
    proto: str
    host: str  # an IP literal, IPv6 without brackets
    port: int
    advertised_host: str | None = None
    advertised_port: int | None = None
    tag: str | None = None
    flags: frozenset[str] = frozenset()
    tos: int = 0
    # Bound with IP_FREEBIND (Kamailio's ip_free_bind): the address need not be on the host. Ours only, from
    # the placement side table (placement.py); OpenSIPS has no such flag and refuses unknown ones in `flags`.
    freebind: bool = False
    # Not part of identity: the DB text as written, and the static-socket worker count.
    raw: str = field(default="", compare=False)
    use_workers: int | None = field(default=None, compare=False)

    @property
    def socket_str(self) -> str:
        return format_socket(self.proto, self.host, self.port)

    @cached_property
    def key(self) -> str:
        """What OpenSIPS compares on reload (and free bind, ours): equal keys mean the running socket is kept
        untouched. Text, written once per spec: a reload with a thousand sockets looks each key up several
        times, and a string keeps its hash where a tuple computes it again at every lookup."""
        return repr(
            (
                self.proto,
                self.host,
                self.port,
                self.advertised_host,
                self.advertised_port,
                self.tag,
                self.tos,
                self.flags_tuple,
                self.freebind,
            )
        )

    @property
    def flags_tuple(self) -> tuple[str, ...]:
        return tuple(f for f in FLAGS if f in self.flags)

    @property
    def advertised_str(self) -> str | None:
        if self.advertised_host is None:
            return None
        port = self.advertised_port if self.advertised_port is not None else self.port
        return f"{_bracket(self.advertised_host)}:{port}"

    @property
    def family(self) -> int:
        return _socket.AF_INET6 if ":" in self.host else _socket.AF_INET

    @property
    def layer(self) -> str:
        return transport_layer(self.proto)

    @property
    def supported(self) -> bool:
        return self.proto in SUPPORTED_PROTOCOLS

    @property
    def display(self) -> str:
        return self.raw or self.socket_str


def transport_layer(proto: str) -> str:
    """The kernel transport a protocol binds: tcp, tls, ws and wss all share TCP ports."""
    return "udp" if proto.lower() == "udp" else "tcp"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def format_socket(proto: str, host: str, port: int) -> str:
    return f"{proto.lower()}:{_bracket(host)}:{port}"


def default_resolver(name: str) -> list[str]:
    try:
        infos = _socket.getaddrinfo(name, None, type=_socket.SOCK_DGRAM)
    except OSError as exc:
        raise RowError(f"host {name!r} does not resolve: {exc}") from exc
    seen: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in seen:
            seen.append(addr)
    return seen


def _ip_literal(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # `fe80::1%eth0`: SIP has no syntax for a zone in a Via or Record-Route, and a zone may hold any
        # text (`::%[::]` could not be written back as a socket string).
        raise RowError(f"address {text!r}: IPv6 zone ids (%...) are not supported")
    return address.compressed


def _ascii_number(text: str) -> int | None:
    """The value of a decimal number in ASCII digits, else None. `str.isdigit` alone also accepts `²`
    (U+00B2) or the Arabic-Indic digits, on which int() raises ValueError (not RowError) or reads another
    digit, and int() refuses more than 4300 digits: each would have failed a whole reload instead of
    refusing one row."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 2**63


def _parse_port(text: str, what: str) -> int:
    port = _ascii_number(text)
    if port is None:
        raise RowError(f"{what} port {text!r} is not a number")
    if not 1 <= port <= 65535:
        raise RowError(f"{what} port {text.lstrip('0')[:12] or 0} out of range 1-65535")
    return port


def split_host_port(text: str, what: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 literal."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RowError(f"{what} {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if _ip_literal(host) is None or ":" not in host:
            raise RowError(f"{what} {text!r}: brackets need an IPv6 address")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise RowError(f"{what} {text!r}: unexpected text after ']'")
        return host, _parse_port(rest[1:], what)
    if text.count(":") > 1:
        if _ip_literal(text) is None:
            raise RowError(f"{what} {text!r}: not an address (IPv6 needs brackets with a port)")
        return text, None
    host, sep, port = text.partition(":")
    if not host:
        raise RowError(f"{what} {text!r}: empty host")
    return host, (_parse_port(port, what) if sep else None)


def _parse_socket_text(text: str, resolve: Resolver) -> tuple[str, str, int]:
    text = text.strip()
    proto, sep, rest = text.partition(":")
    if not sep or not proto or not rest or not proto.isalpha():
        raise RowError(f"socket {text!r}: expected proto:host[:port] (proto is required)")
    proto = proto.lower()
    if proto in _KNOWN_UNSERVED:
        raise RowError(f"socket {text!r}: protocol {proto} is not supported")
    if proto not in PROTOCOLS:
        raise RowError(f"socket {text!r}: unknown protocol {proto!r}")
    host, port = split_host_port(rest, "socket")
    ip = _ip_literal(host)
    if ip is None:
        addrs = resolve(host)
        if len(addrs) != 1:
            raise RowError(
                f"socket {text!r}: host {host!r} resolves to {len(addrs)} addresses, it must name exactly one"
            )
        ip = _ip_literal(addrs[0]) or addrs[0]
    return proto, ip, port if port is not None else DEFAULT_PORTS[proto]


def parse_flags(text: str | None) -> frozenset[str]:
    if text is None:
        return frozenset()
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FLAGS]
    if unknown:
        raise RowError(f"unknown flag {unknown[0]!r} (known: {', '.join(FLAGS)})")
    return frozenset(names)


def parse_tos(value: str | int | None) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        number = value
    else:
        text = value.strip()
        if not text:
            return 0
        if text in TOS_NAMES:
            return TOS_NAMES[text]
        try:
            number = int(text, 0)
        except ValueError:
            raise RowError(
                f"bad tos {text!r}: expected 0-255 or one of {', '.join(sorted(TOS_NAMES))}"
            ) from None
    if not 0 <= number <= 255:
        raise RowError(f"bad tos {number}: out of range 0-255")
    return number


def _parse_advertised(text: str | None, port: int) -> tuple[str | None, int | None]:
    if text is None or not text.strip():
        return None, None
    host, adv_port = split_host_port(text.strip(), "advertised")
    return host, adv_port if adv_port is not None else port


def parse_row(
    socket: str | None,
    advertised: str | None = None,
    tag: str | None = None,
    flags: str | None = None,
    tos: str | int | None = None,
    *,
    freebind: bool = False,
    resolve: Resolver = default_resolver,
) -> SocketSpec:
    """One row of the OpenSIPS `sockets` table (with `freebind` from our side table). Raises RowError with
    the reason when unusable."""
    if socket is None or not socket.strip():
        raise RowError("empty socket column")
    proto, host, port = _parse_socket_text(socket, resolve)
    adv_host, adv_port = _parse_advertised(advertised, port)
    return SocketSpec(
        proto=proto,
        host=host,
        port=port,
        advertised_host=adv_host,
        advertised_port=adv_port,
        tag=(tag.strip() or None) if tag is not None else None,
        flags=parse_flags(flags),
        tos=parse_tos(tos),
        freebind=freebind,
        raw=socket.strip(),
    )


UNSPECIFIED = frozenset(("0.0.0.0", "::"))


def unreachable_reason(spec: SocketSpec) -> str | None:
    """Why peers could not reach back a socket that the proxy would otherwise serve, or None.

    A wildcard socket (`0.0.0.0`, `::`) receives on every address of the host, but our Via and Record-Route
    name one address, which must be one peers can reach: without `advertised` they would name 0.0.0.0, and
    in-dialog requests from the callee would never come back. So it needs an advertised address (parsing
    stays lenient, as OpenSIPS' is: the operator's conflict checks read such rows too)."""
    if spec.advertised_host in UNSPECIFIED:
        return (
            f"advertised address {spec.advertised_host} is not one a peer can send to; "
            "advertise the address peers reach this socket on"
        )
    if spec.host in UNSPECIFIED and spec.advertised_host is None:
        return (
            f"a wildcard address ({spec.host}) needs an advertised address, the one peers reach this socket "
            f"on: without it our Via and Record-Route would name {spec.host}"
        )
    return None


def parse_static_socket(text: str, resolve: Resolver = default_resolver) -> SocketSpec:
    """Config syntax: `tcp:10.0.0.1:5060 as 203.0.113.1:5060 tag core use_workers 2 reuse_port`."""
    words = text.split()
    if not words:
        raise RowError("empty socket")
    proto, host, port = _parse_socket_text(words[0], resolve)
    adv: tuple[str | None, int | None] = (None, None)
    tag: str | None = None
    use_workers: int | None = None
    flags: set[str] = set()
    i = 1
    while i < len(words):
        word = words[i]
        if word in ("as", "tag", "use_workers"):
            if i + 1 >= len(words):
                raise RowError(f"socket {text!r}: {word!r} needs a value")
            value = words[i + 1]
            if word == "as":
                adv = _parse_advertised(value, port)
            elif word == "tag":
                tag = value
            else:
                workers = _ascii_number(value)
                if workers is None or not 1 <= workers < 2**63:
                    raise RowError(f"socket {text!r}: use_workers must be an integer >= 1")
                use_workers = workers
            i += 2
        elif word in FLAGS:
            flags.add(word)
            i += 1
        else:
            raise RowError(f"socket {text!r}: unexpected {word!r}")
    return SocketSpec(
        proto=proto,
        host=host,
        port=port,
        advertised_host=adv[0],
        advertised_port=adv[1],
        tag=tag,
        flags=frozenset(flags),
        raw=words[0],
        use_workers=use_workers,
    )

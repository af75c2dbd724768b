"""The local sockets as the SIP core sees them, and the lookups it makes on them per message."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from sipproxy.sip.uri import format_host, host_family, normalize_host

STREAM_PROTOS = frozenset(("tcp", "tls", "ws", "wss"))
# The transports whose clients get a flow token in the Record-Route facing them (RFC 5626 5.2 style): a
# WebSocket client's Contact cannot be reached (`*.invalid`), a TLS client's only over its own connection.
FLOW_PROTOS = frozenset(("tls", "ws", "wss"))
_PROTO_CODES = {"udp": "u", "tcp": "t", "tls": "s", "ws": "w", "wss": "x", "sctp": "c"}
_CODE_PROTOS = {v: k for k, v in _PROTO_CODES.items()}


@dataclass(frozen=True, slots=True)
class Listener:
    """One local socket as the SIP core sees it."""

    proto: str  # "udp" | "tcp" | "tls" | "ws" | "wss" (lowercase)
    host: str  # bound IP literal, IPv6 WITHOUT brackets
    port: int
    advertised_host: str | None = None  # IP or hostname; None = use host
    advertised_port: int | None = None  # None = use port
    tag: str | None = None
    # Listeners key the runtime's per-datagram lookups: hash the six fields once, not on every lookup.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_hash",
            hash((self.proto, self.host, self.port, self.advertised_host, self.advertised_port, self.tag)),
        )

    def __hash__(self) -> int:
        return self._hash

    @property
    def public_host(self) -> str:
        return self.advertised_host or self.host

    @property
    def public_port(self) -> int:
        return self.advertised_port or self.port

    @property
    def family(self) -> int:
        return 6 if ":" in self.host else 4


class ListenerView(Protocol):
    """Implemented by the runtime: the sockets this worker currently has."""

    def all(self) -> Iterable[Listener]: ...

    def by_tag(self, tag: str) -> Listener | None: ...


def socket_key(listener: Listener) -> bytes:
    """The `sk` Via parameter value naming `listener`: proto code, packed IP in hex, port in hex.

    Example: udp 127.0.0.1:5060 -> b"u7f000001-13c4". Only token characters, so it is a valid Via
    parameter, and it names the bound socket (not the advertised address), which is what the runtime
    sends from.
    """
    code = _PROTO_CODES.get(listener.proto, "u")
    try:
        packed = ipaddress.ip_address(listener.host).packed.hex()
    except ValueError:
        packed = listener.host.encode("utf-8").hex()
    return f"{code}{packed}-{listener.port:x}".encode("ascii")


def parse_socket_key(value: bytes) -> tuple[bytes, bytes | None]:
    """Split an `sk` value into (listener key, the flow token naming the connection, or None)."""
    parts = value.split(b"-")
    if len(parts) == 3:
        return parts[0] + b"-" + parts[1], parts[2]
    return value, None


@dataclass(frozen=True, slots=True)
class Wire:
    """What the proxy writes about one listener, precomputed once per snapshot."""

    sk: bytes  # socket key (see socket_key)
    via_head: bytes  # b"Via: SIP/2.0/UDP host:port;branch="
    rr: bytes  # b"Record-Route: <sip:host:port;lr>"
    rr_double: bytes  # the same with r2=on, for a double Record-Route (RFC 5658)
    rr_tail: bytes  # what follows `sip:` in rr, for an entry with a user part (a flow token)
    rr_double_tail: bytes  # the same for rr_double

    @classmethod
    def of(cls, listener: Listener) -> Wire:
        hp = hostport(listener)
        transport = b"" if listener.proto == "udp" else b";transport=" + listener.proto.encode()
        tail = hp + transport + b";lr>"
        double_tail = hp + transport + b";r2=on;lr>"
        return cls(
            socket_key(listener),
            b"Via: SIP/2.0/" + listener.proto.upper().encode() + b" " + hp + b";branch=",
            b"Record-Route: <sip:" + tail,
            b"Record-Route: <sip:" + double_tail,
            tail,
            double_tail,
        )


class ListenerIndex:
    """The listeners with the lookups the hot path needs, all O(1) or first-fit.

    Built once from every listener, then kept current with `add` and `remove` as sockets come and go, so a
    reload that adds one socket to a thousand costs each worker one listener's work, not a thousand's."""

    __slots__ = ("_by_key", "_by_public", "_holders", "_ours", "_via_prefixes", "_wires", "listeners")

    def __init__(self, listeners: Iterable[Listener]) -> None:
        # In the order added (a dict as an ordered set: removing one is O(1)); first fit goes by this order.
        self.listeners: dict[Listener, None] = {}
        # host -> port -> how many listeners have it (bound or advertised)
        self._ours: dict[str, dict[int, int]] = {}
        self._wires: dict[Listener, Wire] = {}
        self._by_key: dict[bytes, Listener] = {}
        self._by_public: dict[tuple[str, int, str], Listener] = {}
        # Every listener under each key of the two maps above, in order: the first is the holder, and when
        # it goes the next takes over without a scan of every listener.
        self._holders: dict[object, list[Listener]] = {}
        # The values of the Vias we write, up to and including `;branch=` (with how many listeners write
        # each): a response whose top Via starts with one of them is ours without parsing that Via.
        self._via_prefixes: dict[bytes, int] = {}
        for lst in listeners:
            self.add(lst)

    def _keys(self, lst: Listener) -> list[tuple[str, int, str]]:
        return [
            (normalize_host(host), port, lst.proto)
            for host, port in ((lst.host, lst.port), (lst.public_host, lst.public_port))
        ]

    def add(self, lst: Listener) -> None:
        if lst in self.listeners:
            return
        self.listeners[lst] = None
        wire = self.wire(lst)
        prefix = wire.via_head[len(b"Via: ") :]
        self._via_prefixes[prefix] = self._via_prefixes.get(prefix, 0) + 1
        self._holders.setdefault(wire.sk, []).append(lst)
        self._by_key.setdefault(wire.sk, lst)
        for key in self._keys(lst):
            ports = self._ours.setdefault(key[0], {})
            ports[key[1]] = ports.get(key[1], 0) + 1
            holders = self._holders.setdefault(key, [])
            if lst not in holders:  # bound and advertised may be the same address
                holders.append(lst)
            self._by_public.setdefault(key, lst)

    def remove(self, lst: Listener) -> None:
        if lst not in self.listeners:
            return
        del self.listeners[lst]
        wire = self._wires.pop(lst, None) or Wire.of(lst)
        prefix = wire.via_head[len(b"Via: ") :]
        left = self._via_prefixes.get(prefix, 1) - 1
        if left > 0:
            self._via_prefixes[prefix] = left
        else:
            self._via_prefixes.pop(prefix, None)
        # First fit, as if built anew: the next listener (in order) under the same key takes over.
        holder = self._drop_holder(wire.sk, lst)
        if holder is None:
            self._by_key.pop(wire.sk, None)
        else:
            self._by_key[wire.sk] = holder
        for key in self._keys(lst):
            ports = self._ours.get(key[0])
            if ports is not None:
                count = ports.get(key[1], 1) - 1
                if count > 0:
                    ports[key[1]] = count
                else:
                    ports.pop(key[1], None)
                    if not ports:
                        del self._ours[key[0]]
            holder = self._drop_holder(key, lst)
            if holder is None:
                self._by_public.pop(key, None)
            else:
                self._by_public[key] = holder

    def _drop_holder(self, key: object, lst: Listener) -> Listener | None:
        holders = self._holders.get(key)
        if holders is None:
            return None
        if lst in holders:
            holders.remove(lst)
        if not holders:
            del self._holders[key]
            return None
        return holders[0]

    def known_wire(self, listener: Listener) -> Wire | None:
        """The precomputed bytes of a listener of this snapshot; None for one it does not know."""
        return self._wires.get(listener)

    def wire(self, listener: Listener) -> Wire:
        wire = self._wires.get(listener)
        if wire is None:
            wire = self._wires[listener] = Wire.of(listener)
        return wire

    def is_our_via_prefix(self, prefix: bytes) -> bool:
        """True when `prefix` (a Via value up to `;branch=`) is exactly how we write one of our Vias."""
        return prefix in self._via_prefixes

    def by_key(self, key: bytes) -> Listener | None:
        return self._by_key.get(key)

    def by_address(self, host: str, port: int | None, proto: str | None) -> Listener | None:
        """The listener whose bound or advertised address is host:port, preferring protocol `proto`."""
        if port is None:
            for lst in self.listeners:
                named = host in (normalize_host(lst.public_host), normalize_host(lst.host))
                if named and (proto is None or lst.proto == proto):
                    return lst
            return None
        if proto is not None:
            found = self._by_public.get((host, port, proto))
            if found is not None:
                return found
        for p in ("udp", "tcp", "tls", "ws", "wss"):
            found = self._by_public.get((host, port, p))
            if found is not None:
                return found
        return None

    def is_ours(self, host: str, port: int | None) -> bool:
        """True when host (normalized) is one of our addresses and port matches, or port is None."""
        ports = self._ours.get(host)
        if ports is None:
            return False
        return port is None or port in ports

    def pick(self, proto: str, family: int) -> Listener | None:
        """The first listener with protocol `proto` able to reach a destination of `family` (0 = any)."""
        for lst in self.listeners:
            if lst.proto == proto and family in (0, lst.family):
                return lst
        return None


def fits(listener: Listener, proto: str, family: int) -> bool:
    return listener.proto == proto and family in (0, listener.family)


def hostport(listener: Listener) -> bytes:
    """`host:port` as advertised in our Via and Record-Route."""
    return f"{format_host(listener.public_host)}:{listener.public_port}".encode()


__all__ = [
    "FLOW_PROTOS",
    "STREAM_PROTOS",
    "Listener",
    "ListenerIndex",
    "ListenerView",
    "fits",
    "host_family",
    "hostport",
    "parse_socket_key",
    "socket_key",
]

"""The control protocol between the supervisor and each worker: one frozen dataclass per message, and the one
encoder (`encode`) and decoders (`decode_command`, `decode_reply`) both sides use.

Supervisor to worker (`Command`), applied by the worker one at a time in the order sent:

- `Init(routes, tcp_idle_timeout, record_route, flow_key)`: the first message on a new channel. `flow_key`
  (hex) signs the flow tokens naming stream connections (sipproxy.sip.flowtoken): the supervisor makes one
  at start and gives every worker the same, so a token made by one worker is checked by any other.
- `TlsDomains(generation, size)`: the TLS domains every new TLS connection uses from now on (a `tls_reload`
  or the start). The domains, private keys included, are a JSON document of `size` bytes in the attached
  descriptor, an anonymous memory file (memfd): certificates and CA bundles can be far larger than a
  packet (`tls_domains_document` writes it, `read_tls_domains_document` reads it). Read with pread at
  offset 0, so that one file can go to every worker. Established connections keep the domain they have.
- `Add(sid, listener, serve)`: a socket of the proxy. Its descriptor is attached when the worker needs one
  (every UDP socket, since any worker may send out of any of them; TCP listeners for TCP workers only).
  `serve`: the worker reads from (or accepts on) it; otherwise it only sends from it. An Add for a sid the
  worker has replaces that socket.
- `Remove(sid)`: the worker closes its copies of the socket (and waits until the descriptor is really closed,
  so that the supervisor may bind the address again).
- `Sync(seq)`: answered by `Ack(seq)`.
- `Stats(seq)`: answered by zero or more `StatsPart(counters)` and then `StatsReply(seq, counters)`, at most
  `STATS_PART` sockets per packet so that any number of sockets fits the channel's packet size.
- `Stop()`: the worker closes everything and exits.

Worker to supervisor (`Reply`): `Ack`, `StatsPart`, `StatsReply`, and `Error(sid, error)` when an Add could
not be applied.

How socket changes are acknowledged: Add and Remove carry no sequence number of their own. A worker answers a
Sync only once every command sent before it on its channel is applied, so the supervisor sends a batch of
Adds and Removes to every worker, then a Sync, and waits for each worker's Ack (or its death): that Ack
confirms the whole batch. An Add that failed has been answered by an Error before that Ack.

On the wire each message is one JSON object in one packet of the channel (`sipproxy.shared.channel`): `op`
names the message, and every field of the dataclass is present, nothing else. Anything else is refused with
a `ProtocolError` that names the problem, before any handler sees it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from sipproxy.shared.counters import SocketCounters
from sipproxy.shared.tls_domains import TlsDomain
from sipproxy.sip.listeners import Listener

# Sockets per StatsPart / StatsReply packet (each well under 1 KiB as JSON, so a packet stays far below the
# channel's MAX_MESSAGE).
STATS_PART = 500


class ProtocolError(ValueError):
    """A control message that cannot be decoded; the text names the problem."""


# --- the listener, as the supervisor sends it and the workers relay it among themselves ---------------------


def listener_to_wire(listener: Listener) -> dict[str, Any]:
    return {
        "proto": listener.proto,
        "host": listener.host,
        "port": listener.port,
        "advertised_host": listener.advertised_host,
        "advertised_port": listener.advertised_port,
        "tag": listener.tag,
    }


def listener_from_wire(data: object) -> Listener:
    """The inverse of `listener_to_wire`; raises ProtocolError naming the bad field."""
    if not isinstance(data, dict):
        raise ProtocolError("listener must be an object")
    names = ("proto", "host", "port", "advertised_host", "advertised_port", "tag")
    f = _Fields("listener", data, names, envelope=False)
    return Listener(
        f.text("proto"),
        f.text("host"),
        f.number("port"),
        f.optional_text("advertised_host"),
        f.optional_number("advertised_port"),
        f.optional_text("tag"),
    )


# --- supervisor to worker -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Init:
    op: ClassVar[str] = "init"
    routes: tuple[Any, ...]  # the config's raw route rules; each worker parses them (sipproxy.sip.routing)
    tcp_idle_timeout: float
    record_route: bool = True
    flow_key: str = ""  # hex, 16 to 32 bytes; "" lets each worker make its own (tests of one worker)

    def wire(self) -> dict[str, Any]:
        return {
            "routes": list(self.routes),
            "tcp_idle_timeout": self.tcp_idle_timeout,
            "record_route": self.record_route,
            "flow_key": self.flow_key,
        }

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(
            tuple(f.array("routes")), f.seconds("tcp_idle_timeout"), f.flag("record_route"), f.key("flow_key")
        )


@dataclass(frozen=True, slots=True)
class TlsDomains:
    op: ClassVar[str] = "tls_domains"
    generation: int  # counts up with each tls_reload
    size: int  # bytes of the JSON document in the attached memfd

    def wire(self) -> dict[str, Any]:
        return {"generation": self.generation, "size": self.size}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.number("generation"), f.number("size"))


@dataclass(frozen=True, slots=True)
class Add:
    op: ClassVar[str] = "add"
    sid: int
    listener: Listener
    serve: bool

    def wire(self) -> dict[str, Any]:
        return {"sid": self.sid, "listener": listener_to_wire(self.listener), "serve": self.serve}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.number("sid"), f.listener("listener"), f.flag("serve"))


@dataclass(frozen=True, slots=True)
class Update:
    """The socket `sid` now has other advertised address, tag or ToS: the same open socket, so the worker
    keeps its descriptor and only takes the new listener (no datagram is lost, no connection closed)."""

    op: ClassVar[str] = "update"
    sid: int
    listener: Listener

    def wire(self) -> dict[str, Any]:
        return {"sid": self.sid, "listener": listener_to_wire(self.listener)}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.number("sid"), f.listener("listener"))


@dataclass(frozen=True, slots=True)
class Remove:
    op: ClassVar[str] = "remove"
    sid: int

    def wire(self) -> dict[str, Any]:
        return {"sid": self.sid}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.number("sid"))


@dataclass(frozen=True, slots=True)
class Sync:
    op: ClassVar[str] = "sync"
    seq: int

    def wire(self) -> dict[str, Any]:
        return {"seq": self.seq}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.number("seq"))


@dataclass(frozen=True, slots=True)
class Stats:
    op: ClassVar[str] = "stats"
    seq: int

    def wire(self) -> dict[str, Any]:
        return {"seq": self.seq}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.number("seq"))


@dataclass(frozen=True, slots=True)
class Stop:
    op: ClassVar[str] = "stop"

    def wire(self) -> dict[str, Any]:
        return {}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls()


# --- worker to supervisor -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    op: ClassVar[str] = "ack"
    seq: int

    def wire(self) -> dict[str, Any]:
        return {"seq": self.seq}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.number("seq"))


@dataclass(frozen=True, slots=True)
class StatsPart:
    op: ClassVar[str] = "stats_part"
    counters: Mapping[str, SocketCounters] = field(default_factory=dict)  # by socket label

    def wire(self) -> dict[str, Any]:
        return {"counters": {label: c.to_wire() for label, c in self.counters.items()}}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.counters("counters"))


@dataclass(frozen=True, slots=True)
class StatsReply:
    op: ClassVar[str] = "stats_reply"
    seq: int
    counters: Mapping[str, SocketCounters] = field(default_factory=dict)  # by socket label; the last part

    def wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "counters": {label: c.to_wire() for label, c in self.counters.items()}}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.number("seq"), f.counters("counters"))


@dataclass(frozen=True, slots=True)
class Error:
    op: ClassVar[str] = "error"
    sid: int
    error: str

    def wire(self) -> dict[str, Any]:
        return {"sid": self.sid, "error": self.error}

    @classmethod
    def read(cls, f: _Fields) -> Self:
        return cls(f.number("sid"), f.text("error"))


Command = Init | Add | Update | Remove | Sync | Stats | Stop | TlsDomains
Reply = Ack | StatsPart | StatsReply | Error
Message = Command | Reply

COMMANDS: tuple[type[Command], ...] = (Init, Add, Update, Remove, Sync, Stats, Stop, TlsDomains)
REPLIES: tuple[type[Reply], ...] = (Ack, StatsPart, StatsReply, Error)
_COMMAND_OPS: dict[str, type[Command]] = {cls.op: cls for cls in COMMANDS}
_REPLY_OPS: dict[str, type[Reply]] = {cls.op: cls for cls in REPLIES}


def encode(message: Message) -> bytes:
    return json.dumps({"op": message.op, **message.wire()}, separators=(",", ":")).encode()


def decode_command(data: bytes) -> Command:
    """A message for a worker; raises ProtocolError naming the problem."""
    op, obj = _envelope(data)
    cls = _COMMAND_OPS.get(op)
    if cls is None:
        raise ProtocolError(_unknown(op, "supervisor to worker"))
    return cls.read(_Fields(f"control message {op!r}", obj, _names(cls)))


def decode_reply(data: bytes) -> Reply:
    """A message for the supervisor; raises ProtocolError naming the problem."""
    op, obj = _envelope(data)
    cls = _REPLY_OPS.get(op)
    if cls is None:
        raise ProtocolError(_unknown(op, "worker to supervisor"))
    return cls.read(_Fields(f"control message {op!r}", obj, _names(cls)))


def _envelope(data: bytes) -> tuple[str, dict[str, Any]]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"control message is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"control message must be a JSON object, not {type(obj).__name__}")
    op = obj.get("op")
    if not isinstance(op, str):
        raise ProtocolError("control message has no op")
    return op, obj


def _unknown(op: str, direction: str) -> str:
    if op in _COMMAND_OPS or op in _REPLY_OPS:
        return f"control message {op!r} does not go {direction}"
    return f"unknown control message {op!r}"


def _names(cls: type[Message]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


class _Fields:
    """The fields of one decoded object, each read with its type checked; `what` names it in errors."""

    def __init__(self, what: str, obj: dict[str, Any], names: tuple[str, ...], envelope: bool = True) -> None:
        self.what = what
        self.obj = obj
        for name in names:
            if name not in obj:
                raise ProtocolError(f"{what}: field {name!r} is missing")
        for name in obj:
            if name not in names and not (envelope and name == "op"):
                raise ProtocolError(f"{what}: unexpected field {name!r}")

    def _bad(self, name: str, expected: str) -> ProtocolError:
        return ProtocolError(f"{self.what}: field {name!r} must be {expected}, not {self.obj[name]!r}")

    def number(self, name: str) -> int:
        value = self.obj[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._bad(name, "an integer >= 0")
        return value

    def optional_number(self, name: str) -> int | None:
        return None if self.obj[name] is None else self.number(name)

    def text(self, name: str) -> str:
        value = self.obj[name]
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def optional_text(self, name: str) -> str | None:
        return None if self.obj[name] is None else self.text(name)

    def texts(self, name: str) -> list[str]:
        value = self.obj[name]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(name, "a list of strings")
        return value

    def flag(self, name: str) -> bool:
        value = self.obj[name]
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def seconds(self, name: str) -> float:
        value = self.obj[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise self._bad(name, "a number of seconds > 0")
        return float(value)

    def key(self, name: str) -> str:
        value = self.obj[name]
        if not isinstance(value, str) or (
            value and (len(value) % 2 or not 32 <= len(value) <= 64 or value.strip("0123456789abcdef"))
        ):
            raise self._bad(name, "16 to 32 bytes in lowercase hex, or empty")
        return value

    def array(self, name: str) -> list[Any]:
        value = self.obj[name]
        if not isinstance(value, list):
            raise self._bad(name, "a list")
        return value

    def listener(self, name: str) -> Listener:
        try:
            return listener_from_wire(self.obj[name])
        except ProtocolError as exc:
            raise ProtocolError(f"{self.what}: field {name!r}: {exc}") from None

    def counters(self, name: str) -> dict[str, SocketCounters]:
        value = self.obj[name]
        if not isinstance(value, dict):
            raise self._bad(name, "an object of counters by socket label")
        out: dict[str, SocketCounters] = {}
        for label, wire in value.items():
            try:
                out[label] = SocketCounters.from_wire(wire)
            except ValueError as exc:
                raise ProtocolError(f"{self.what}: field {name!r}: socket {label!r}: {exc}") from None
        return out


# --- the TLS domains document (TlsDomains) ------------------------------------------------------------------

_PEM_FIELDS = ("certificate", "private_key", "ca_list", "dh_params")
_DOMAIN_FIELDS = (
    "name",
    "type",
    "match_addresses",
    "match_domains",
    "method",
    "verify_cert",
    "require_cert",
    *_PEM_FIELDS,
    "ca_dir",
    "crl_check_all",
    "crl_dir",
    "cipher_list",
    "ec_curve",
    "id",
)


def tls_domains_document(domains: Sequence[TlsDomain]) -> bytes:
    """The JSON document a TlsDomains message carries: every field of each domain, PEM as ASCII text."""
    out = []
    for d in domains:
        item: dict[str, Any] = {}
        for name in _DOMAIN_FIELDS:
            value = getattr(d, name)
            if name in _PEM_FIELDS and value is not None:
                value = value.decode("ascii")
            elif isinstance(value, tuple):
                value = list(value)
            item[name] = value
        out.append(item)
    return json.dumps(out, separators=(",", ":")).encode()


def read_tls_domains_document(data: bytes) -> list[TlsDomain]:
    """The domains of a TlsDomains document; raises ProtocolError naming the problem."""
    try:
        items = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"TLS domains document is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise ProtocolError("TLS domains document must be a list")
    domains: list[TlsDomain] = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProtocolError(f"TLS domain #{n} must be an object")
        f = _Fields(f"TLS domain #{n}", item, _DOMAIN_FIELDS, envelope=False)
        pem = {name: f.optional_text(name) for name in _PEM_FIELDS}
        try:
            domains.append(
                TlsDomain(
                    name=f.text("name"),
                    type=f.number("type"),
                    match_addresses=tuple(f.texts("match_addresses")),
                    match_domains=tuple(f.texts("match_domains")),
                    method=f.text("method"),
                    verify_cert=f.flag("verify_cert"),
                    require_cert=f.flag("require_cert"),
                    certificate=_ascii(pem["certificate"]),
                    private_key=_ascii(pem["private_key"]),
                    ca_list=_ascii(pem["ca_list"]),
                    ca_dir=f.optional_text("ca_dir"),
                    crl_check_all=f.flag("crl_check_all"),
                    crl_dir=f.optional_text("crl_dir"),
                    cipher_list=f.optional_text("cipher_list"),
                    dh_params=_ascii(pem["dh_params"]),
                    ec_curve=f.optional_text("ec_curve"),
                    id=f.optional_number("id"),
                )
            )
        except UnicodeEncodeError:
            raise ProtocolError(f"TLS domain #{n}: PEM must be ASCII") from None
    return domains


def _ascii(text: str | None) -> bytes | None:
    return None if text is None else text.encode("ascii")

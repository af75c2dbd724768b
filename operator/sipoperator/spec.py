"""A SipSocket spec checked, defaulted and turned into the OpenSIPS `sockets` row (pure, no I/O).

The CRD schema refuses most bad specs already; this is the same judgement made again in the webhook and in
reconcile, so an object that slipped past (schema changed, webhook off) still gets a clear `InvalidSpec`.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipproxy.shared.socketspec import (
    DEFAULT_PORTS,
    FLAGS,
    PROTOCOLS,
    TOS_NAMES,
    RowError,
    SocketSpec,
    format_socket,
    parse_row,
    transport_layer,
    unreachable_reason,
)

_HOSTNAME = re.compile(
    r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_.:@+-]{1,64}$")
# Kubernetes label keys ([prefix/]name) and values, as a nodeSelector takes them.
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")
NODE_SELECTOR_MAX = 16
# A Service name (DNS-1035 label), and the node address types `advertised.fromNode` takes.
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
NODE_ADDRESS_TYPES = ("ExternalIP", "InternalIP")
# A Secret's name: an RFC 1123 DNS subdomain.
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_COLUMN_MAX = 128  # CHAR(128) in the OpenSIPS schema
TLS_PROTOCOLS = ("tls", "wss")  # the protocols that need a certificate, and only they take spec.tls
CLIENT_AUTH = ("none", "optional", "required")

EndpointKey = tuple[str, str, int]  # (transport layer, address, port)


class SpecError(ValueError):
    """An unusable spec; `field` is the JSON path a person fixes, the message says how."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Row:
    """The five columns OpenSIPS reads, as written to the table."""

    socket: str
    advertised: str | None = None
    tag: str | None = None
    flags: str | None = None
    tos: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "socket": self.socket,
            "advertised": self.advertised,
            "tag": self.tag,
            "flags": self.flags,
            "tos": self.tos,
        }


@dataclass(frozen=True)
class AdvertisedFrom:
    """`spec.advertised` taken from the platform: a Service's load-balancer ingress (`service`), or each
    proxy pod's own node address of a type (`node_address`); `port` is the advertised port."""

    port: int
    service: str | None = None
    node_address: str | None = None

    def describe(self) -> str:
        if self.service is not None:
            return f"the load-balancer address of Service {self.service}"
        return f"each node's {self.node_address}"


@dataclass(frozen=True)
class TlsSpec:
    """`spec.tls`: the kubernetes.io/tls Secret with the socket's certificate, and client authentication."""

    secret_name: str
    client_auth: str = "none"  # none | optional | required
    ca_secret_name: str | None = None  # the Secret whose ca.crt verifies client certificates

    @property
    def secrets(self) -> tuple[str, ...]:
        """The Secrets referenced, the certificate's first."""
        names = [self.secret_name]
        if self.ca_secret_name and self.client_auth != "none" and self.ca_secret_name != self.secret_name:
            names.append(self.ca_secret_name)
        return tuple(names)


@dataclass(frozen=True)
class DesiredSocket:
    protocol: str
    address: str  # compressed form, IPv6 without brackets
    port: int
    row: Row
    parsed: SocketSpec
    # Where it is served (not OpenSIPS columns: the placement side table, shared/placement.py).
    freebind: bool = False
    node_selector: tuple[tuple[str, str], ...] | None = None  # sorted (label, value) pairs; None: every node
    # spec.advertised from a Service or the nodes: resolved by reconcile, the row's `advertised` left empty
    advertised_from: AdvertisedFrom | None = None
    tls: TlsSpec | None = None  # set exactly for the protocols of TLS_PROTOCOLS

    @property
    def key(self) -> EndpointKey:
        return endpoint_key(self.protocol, self.address, self.port)

    def with_advertised(self, advertised: str | None) -> DesiredSocket:
        """The same socket with the `advertised` column resolved from `advertised_from`."""
        return dataclasses.replace(self, row=dataclasses.replace(self.row, advertised=advertised))

    @property
    def socket(self) -> str:
        return self.row.socket


def endpoint_key(protocol: str, address: str, port: int) -> EndpointKey:
    """Two sockets with equal keys cannot both bind: same kernel transport, address and port."""
    return (transport_layer(protocol), ipaddress.ip_address(address).compressed, port)


def describe_key(key: EndpointKey) -> str:
    layer, address, port = key
    host = f"[{address}]" if ":" in address else address
    return f"{layer.upper()} {host}:{port}"


def _port(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"must be an integer 1-65535, got {value!r}")
    if not 1 <= value <= 65535:
        raise SpecError(field, f"must be 1-65535, got {value}")
    return value


def _ip(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise SpecError(field, f"must be an IP address literal, got {value!r}")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise SpecError(
            field, f"{value!r} is not one IPv4 or IPv6 address literal (host names are not allowed)"
        ) from None
    return ip.compressed


def _tos(value: Any) -> tuple[int, str | None]:
    """The number, and the column text: the IPTOS_ name as given (what OpenSIPS understands), else digits."""
    if value is None:
        return 0, None
    if isinstance(value, bool):
        raise SpecError("tos", f"must be 0-255 or an IPTOS_ name, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= 255:
            raise SpecError("tos", f"must be 0-255, got {value}")
        return value, (str(value) if value else None)
    if isinstance(value, str):
        if value in TOS_NAMES:
            return TOS_NAMES[value], value
        if value.isdigit() and int(value) <= 255:
            return int(value), (value if int(value) else None)
    raise SpecError("tos", f"must be 0-255 or one of {', '.join(TOS_NAMES)}, got {value!r}")


def _label_key(key: Any) -> bool:
    if not isinstance(key, str) or len(key) > 317:
        return False
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not _LABEL_PREFIX.match(prefix)):
        return False
    return bool(name) and bool(_LABEL_NAME.match(name))


def _node_selector(value: Any) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError("nodeSelector", "must be a map of node label names to values")
    if len(value) > NODE_SELECTOR_MAX:
        raise SpecError("nodeSelector", f"may have at most {NODE_SELECTOR_MAX} labels, got {len(value)}")
    for key, label in value.items():
        if not _label_key(key):
            raise SpecError(f"nodeSelector[{key!r}]", "is not a label name ([prefix/]name)")
        if not isinstance(label, str) or not _LABEL_NAME.match(label):
            raise SpecError(f"nodeSelector[{key!r}]", f"{label!r} is not a label value")
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


def _secret_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(field, "is required: the name of a Secret in the SipSocket's namespace")
    if len(value) > 253 or not _SECRET_NAME.match(value):
        raise SpecError(field, f"{value!r} is not a Secret name (lowercase RFC 1123 subdomain)")
    return value


def _tls(protocol: str, value: Any) -> TlsSpec | None:
    if protocol not in TLS_PROTOCOLS:
        if value is not None:
            raise SpecError("tls", f"is only for protocol tls or wss, not {protocol}")
        return None
    if value is None:
        raise SpecError(
            "tls",
            f"protocol {protocol} needs spec.tls.secretName, a kubernetes.io/tls Secret with the certificate",
        )
    if not isinstance(value, Mapping):
        raise SpecError("tls", "must be an object with secretName, clientAuth and caSecretName")
    secret = _secret_name(value.get("secretName"), "tls.secretName")
    client_auth = value.get("clientAuth") or "none"
    if client_auth not in CLIENT_AUTH:
        raise SpecError("tls.clientAuth", f"must be one of {', '.join(CLIENT_AUTH)}, got {client_auth!r}")
    raw_ca = value.get("caSecretName")
    ca = _secret_name(raw_ca, "tls.caSecretName") if raw_ca is not None else None
    if client_auth != "none" and ca is None:
        raise SpecError(
            "tls.caSecretName",
            f"is required with clientAuth {client_auth}: a Secret whose ca.crt verifies client certificates",
        )
    return TlsSpec(secret, client_auth, ca)


def validate(spec: Mapping[str, Any] | None) -> DesiredSocket:
    """The socket a spec asks for, defaults applied. Raises SpecError naming the field."""
    if not isinstance(spec, Mapping):
        raise SpecError("protocol", "the spec is missing")
    protocol = spec.get("protocol")
    if protocol not in PROTOCOLS:
        raise SpecError("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    assert isinstance(protocol, str)
    address = _ip(spec.get("address"), "address")
    port = _port(spec["port"], "port") if spec.get("port") is not None else DEFAULT_PORTS[protocol]

    advertised_text: str | None = None
    advertised_from: AdvertisedFrom | None = None
    advertised = spec.get("advertised")
    if advertised is not None:
        if not isinstance(advertised, Mapping):
            raise SpecError("advertised", "must be an object with address and optional port")
        sources = [k for k in ("address", "fromService", "fromNode") if advertised.get(k) is not None]
        if len(sources) > 1:
            raise SpecError("advertised", f"takes one of address, fromService and fromNode, got {sources}")
        adv_port = (
            _port(advertised["port"], "advertised.port") if advertised.get("port") is not None else port
        )
        if sources and sources[0] != "address":
            advertised_from = _advertised_from(advertised, adv_port)
        else:
            advertised_text = _advertised_literal(advertised.get("address"), adv_port)

    tag = spec.get("tag")
    if tag is not None and (not isinstance(tag, str) or not _TAG.match(tag)):
        raise SpecError("tag", f"must be 1-64 characters of letters, digits and _.:@+-, got {tag!r}")

    flags = spec.get("flags") or []
    if not isinstance(flags, list) or any(f not in FLAGS for f in flags):
        raise SpecError("flags", f"must be a list of {', '.join(FLAGS)}, got {flags!r}")
    if len(set(flags)) != len(flags):
        raise SpecError("flags", f"lists a flag twice: {flags!r}")
    flags_text = ",".join(f for f in FLAGS if f in flags) or None

    _, tos_text = _tos(spec.get("tos"))
    tls = _tls(protocol, spec.get("tls"))

    freebind = spec.get("freebind", False)
    if freebind is None:
        freebind = False
    if not isinstance(freebind, bool):
        raise SpecError("freebind", f"must be true or false, got {freebind!r}")
    node_selector = _node_selector(spec.get("nodeSelector"))

    row = Row(
        socket=format_socket(protocol, address, port),
        advertised=advertised_text,
        tag=tag,
        flags=flags_text,
        tos=tos_text,
    )
    for column, text in row.as_dict().items():
        if text is not None and len(text) > _COLUMN_MAX:
            raise SpecError(column, f"is longer than the table's {_COLUMN_MAX} characters")
    try:
        parsed = parse_row(
            row.socket, row.advertised, row.tag, row.flags, row.tos, freebind=freebind, resolve=_no_resolve
        )
    except RowError as exc:  # the proxy would refuse the row: say so now, not after the reload
        raise SpecError("address", f"the proxy would refuse this socket: {exc}") from exc
    unreachable = unreachable_reason(parsed)
    if unreachable is not None and advertised_from is None:
        raise SpecError("advertised" if parsed.advertised_host else "address", unreachable)
    return DesiredSocket(
        protocol=protocol,
        address=address,
        port=port,
        row=row,
        parsed=parsed,
        freebind=freebind,
        node_selector=node_selector,
        advertised_from=advertised_from,
        tls=tls,
    )


def _advertised_literal(address: Any, port: int) -> str:
    if not isinstance(address, str) or not address:
        raise SpecError(
            "advertised.address",
            "is required (or fromService or fromNode): an IP address literal or a host name",
        )
    try:
        host = ipaddress.ip_address(address).compressed
    except ValueError:
        if not _HOSTNAME.match(address) or len(address) > 100:
            raise SpecError(
                "advertised.address", f"{address!r} is neither an IP address literal nor a host name"
            ) from None
        host = address.lower()
    return host_port(host, port)


def host_port(host: str, port: int) -> str:
    """The `advertised` column's text: `host:port`, `[v6]:port`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _advertised_from(advertised: Mapping[str, Any], port: int) -> AdvertisedFrom:
    service, node = advertised.get("fromService"), advertised.get("fromNode")
    if service is not None:
        if not isinstance(service, str) or not _SERVICE_NAME.match(service):
            raise SpecError("advertised.fromService", f"{service!r} is not a Service name")
        return AdvertisedFrom(port, service=service)
    if node not in NODE_ADDRESS_TYPES:
        raise SpecError(
            "advertised.fromNode", f"must be one of {', '.join(NODE_ADDRESS_TYPES)}, got {node!r}"
        )
    return AdvertisedFrom(port, node_address=str(node))


def _no_resolve(name: str) -> list[str]:
    raise RowError(f"host {name!r} is not an address literal")


@functools.lru_cache(maxsize=65536)
def row_key(socket_text: str | None) -> EndpointKey | None:
    """The endpoint a table row (or a listed static socket) occupies; None when it does not parse."""
    if not socket_text:
        return None
    try:
        parsed = parse_row(socket_text, resolve=_no_resolve)
    except RowError:
        return None
    return endpoint_key(parsed.proto, parsed.host, parsed.port)


def same_row(current: Mapping[str, Any], wanted: Row) -> bool:
    """A row edited by hand differs here (blank and NULL are the same to OpenSIPS)."""

    def norm(value: Any) -> str | None:
        if value is None:
            return None
        text = str(value).strip()
        return text or None

    return all(norm(current.get(k)) == norm(v) for k, v in wanted.as_dict().items())

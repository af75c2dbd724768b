"""SIP URI parsing, limited to what routing needs: scheme, host, port and URI parameters."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from sipproxy.sip.headers import find_param

_SCHEME_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."
_HOSTNAME_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"
_IPV6_CHARS = b"0123456789abcdefABCDEF:."
_DIGITS = b"0123456789"
# Octets a URI may hold literally: printable ASCII except <, > and " (anything else must be %-escaped).
_URI_CHARS = bytes(c for c in range(0x21, 0x7F) if c not in b'<>"')


@dataclass(slots=True)  # not frozen: one is built per message and frozen init costs ~1 us
class SipUri:
    scheme: str  # "sip" | "sips"
    user: bytes | None
    host: str  # lowercase; IPv6 without brackets
    port: int | None
    params: bytes  # raw `;name=value...` part, b"" when none
    headers: bytes | None  # raw part after `?`, None when absent

    def param(self, name: bytes) -> bytes | None:
        return find_param(self.params, name) if self.params else None

    @property
    def transport(self) -> str | None:
        return transport_param(self.params) if self.params else None


def port_or_default(uri: SipUri) -> int:
    """The URI's port, or the default of its transport when it names none (RFC 3261 19.1.2; RFC 7118 for
    WebSocket): a Route entry `<sip:10.0.0.1;lr>` names port 5060, not any port of that address."""
    if uri.port is not None:
        return uri.port
    transport = uri.transport
    if transport == "ws":
        return 443 if uri.scheme == "sips" else 80
    if transport == "wss":
        return 443
    if uri.scheme == "sips" or transport == "tls":
        return 5061
    return 5060


def transport_param(params: bytes) -> str | None:
    """The lowercased `transport` of a URI's raw `;params`, None when absent or empty."""
    value = find_param(params, b"transport")
    return value.decode("latin-1").lower() if value else None


def uri_scheme(raw: bytes) -> str | None:
    """The lowercased scheme of an absolute URI, or None when `raw` does not start with a valid one."""
    colon = raw.find(b":")
    if colon <= 0:
        return None
    scheme = raw[:colon]
    if not scheme[:1].isalpha() or scheme.translate(None, _SCHEME_CHARS):
        return None
    return scheme.decode("ascii").lower()


def parse_hostport(hostport: bytes) -> tuple[str, int | None] | None:
    """`host[:port]` (IPv6 in brackets) -> (host, port); None when malformed."""
    if hostport[:1] == b"[":
        close = hostport.find(b"]")
        if close < 0:
            return None
        host = hostport[1:close]
        if not host or host.translate(None, _IPV6_CHARS) or b":" not in host:
            return None
        rest = hostport[close + 1 :]
        if not rest:
            return normalize_host(host.decode("ascii")), None
        if rest[:1] != b":":
            return None
        port_raw = rest[1:]
    else:
        host, colon, port_raw = hostport.partition(b":")
        if not host or host.translate(None, _HOSTNAME_CHARS):
            return None
        if not colon:
            return host.decode("ascii").lower(), None
        if not port_raw.isdigit() or len(port_raw) > 5:
            return None
        port = int(port_raw)
        return (host.decode("ascii").lower(), port) if 0 < port <= 65535 else None
    if not port_raw.isdigit() or len(port_raw) > 5:
        return None
    port = int(port_raw)
    if not 0 < port <= 65535:
        return None
    return normalize_host(host.decode("ascii")), port


def parse_sip_uri(raw: bytes) -> SipUri | None:
    """Parse a sip: or sips: URI; None when it is not one or is malformed (LWS, brackets, bad host)."""
    colon = raw.find(b":")
    if colon not in (3, 4):
        return None
    scheme = raw[:colon].lower()
    if scheme not in (b"sip", b"sips"):
        return None
    if raw.translate(None, _URI_CHARS):
        return None  # LWS, controls, brackets, quotes or raw non-ASCII
    rest = raw[colon + 1 :]
    # '@' may not appear unescaped after the userinfo (params and headers exclude it), so the last one
    # ends the userinfo even when the user part holds ';' or '?' (RFC 4475 3.1.1.2 and 3.1.1.9).
    at = rest.rfind(b"@")
    user: bytes | None = None
    if at >= 0:
        user = rest[:at]
        rest = rest[at + 1 :]
    end = len(rest)
    semi = rest.find(b";")
    qmark = rest.find(b"?")
    if 0 <= semi < end:
        end = semi
    if 0 <= qmark < end:
        end = qmark
    hp = parse_hostport(rest[:end])
    if hp is None:
        return None
    headers: bytes | None = None
    params = rest[end:]
    q = params.find(b"?")
    if q >= 0:
        headers = params[q + 1 :]
        params = params[:q]
    return SipUri(scheme.decode("ascii"), user, hp[0], hp[1], params, headers)


@lru_cache(maxsize=4096)
def normalize_host(host: str) -> str:
    """Canonical form used to compare hosts: lowercase, IPv6 compressed and without brackets."""
    host = host.strip("[]").lower()
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return host
    return host


@lru_cache(maxsize=4096)
def ip_literal(text: str) -> str | None:
    """The normalized IP address written in `text` (brackets allowed), or None when it is not one."""
    try:
        return ipaddress.ip_address(text.strip("[]")).compressed
    except ValueError:
        return None


def host_family(host: str) -> int:
    """6 for an IPv6 literal, 4 for an IPv4 literal, 0 for a hostname (either family may do)."""
    if ":" in host:
        return 6
    if host and host[-1:].isdigit() and host.replace(".", "").isdigit() and host.count(".") == 3:
        return 4
    return 0


def format_host(host: str) -> str:
    """Host as written in a URI or Via: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host

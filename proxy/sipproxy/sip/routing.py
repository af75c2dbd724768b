"""The `routes` configuration: ordered rules matching the inbound socket tag and/or the Request-URI."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sipproxy.sip.uri import SipUri, parse_sip_uri

KNOWN_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
_RULE_KEYS = {"match", "forward", "socket", "reply"}
_MATCH_KEYS = {"tag", "ruri"}


class RouteConfigError(ValueError):
    """A bad `routes` value; the message names the offending key, e.g. `routes[1].forward: ...`."""


@dataclass(frozen=True, slots=True)
class NextHop:
    uri: str  # as configured
    host: str  # normalized, IPv6 without brackets
    port: int
    transport: str | None  # explicit transport (param, or "tls" for sips); None = default udp

    @classmethod
    def from_uri(cls, uri: SipUri, text: str) -> NextHop:
        transport = uri.transport
        if transport is None and uri.scheme == "sips":
            transport = "tls"
        default_port = 5061 if transport in ("tls", "wss") else 5060
        return cls(text, uri.host, uri.port or default_port, transport)


@dataclass(frozen=True)
class Route:
    tag: str | None = None
    ruri: re.Pattern[str] | None = None
    forward: NextHop | None = None
    socket: str | None = None
    reply: int | None = None

    def matches(self, tag: str | None, ruri: str) -> bool:
        if self.tag is not None and self.tag != tag:
            return False
        return self.ruri is None or self.ruri.search(ruri) is not None


def select_route(routes: Sequence[Route], tag: str | None, ruri: str) -> Route | None:
    """The first rule that matches (first match wins), or None."""
    for route in routes:
        if route.matches(tag, ruri):
            return route
    return None


def parse_routes(raw: object) -> list[Route]:
    """Validate and compile the YAML value of `routes` (a list of rule mappings; None means no rules)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RouteConfigError(f"routes: expected a list of rules, got {type(raw).__name__}")
    return [_parse_rule(f"routes[{i}]", item) for i, item in enumerate(raw)]


def _parse_rule(where: str, item: object) -> Route:
    if not isinstance(item, dict):
        raise RouteConfigError(f"{where}: expected a mapping, got {type(item).__name__}")
    for key in item:
        if key not in _RULE_KEYS:
            raise RouteConfigError(f"{where}.{key}: unknown key (expected match, forward, socket or reply)")
    tag, ruri = _parse_match(f"{where}.match", item.get("match", {}))
    has_forward = "forward" in item
    has_reply = "reply" in item
    if has_forward == has_reply:
        raise RouteConfigError(f"{where}: exactly one action is required: forward or reply")
    if has_reply:
        if "socket" in item:
            raise RouteConfigError(f"{where}.socket: only valid with forward")
        code = item["reply"]
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 699:
            raise RouteConfigError(f"{where}.reply: expected a status code 100-699, got {code!r}")
        return Route(tag=tag, ruri=ruri, reply=code)
    forward = item["forward"]
    if not isinstance(forward, str):
        raise RouteConfigError(f"{where}.forward: expected a sip: or sips: URI string, got {forward!r}")
    uri = parse_sip_uri(forward.strip().encode("utf-8", "replace"))
    if uri is None:
        raise RouteConfigError(f"{where}.forward: not a valid sip: or sips: URI: {forward!r}")
    if uri.transport is not None and uri.transport not in KNOWN_TRANSPORTS:
        raise RouteConfigError(
            f"{where}.forward: transport {uri.transport!r} not one of {', '.join(KNOWN_TRANSPORTS)}"
        )
    if uri.headers is not None:
        raise RouteConfigError(f"{where}.forward: URI headers (?...) are not allowed in a next hop")
    socket = item.get("socket")
    if socket is not None and (not isinstance(socket, str) or not socket):
        raise RouteConfigError(f"{where}.socket: expected a socket tag (non-empty string), got {socket!r}")
    return Route(tag=tag, ruri=ruri, forward=NextHop.from_uri(uri, forward.strip()), socket=socket)


def _parse_match(where: str, match: object) -> tuple[str | None, re.Pattern[str] | None]:
    if match is None:
        return None, None
    if not isinstance(match, dict):
        raise RouteConfigError(f"{where}: expected a mapping (tag and/or ruri), got {type(match).__name__}")
    for key in match:
        if key not in _MATCH_KEYS:
            raise RouteConfigError(f"{where}.{key}: unknown key (expected tag or ruri)")
    tag = match.get("tag")
    if tag is not None and (not isinstance(tag, str) or not tag):
        raise RouteConfigError(f"{where}.tag: expected a non-empty string, got {tag!r}")
    pattern = match.get("ruri")
    compiled: re.Pattern[str] | None = None
    if pattern is not None:
        if not isinstance(pattern, str):
            raise RouteConfigError(f"{where}.ruri: expected a regular expression string, got {pattern!r}")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise RouteConfigError(f"{where}.ruri: bad regular expression {pattern!r}: {exc}") from None
    return tag, compiled

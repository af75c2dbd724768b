"""Request validation (RFC 3261 16.3, 8.2.2, 20.14) reading only the headers a stateless proxy needs.

`inspect_request` returns the parsed facts the engine works with and, when the request must be refused,
the status to answer with. Checks are ordered so that the most fundamental problem is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sipproxy.sip.headers import ValueSyntaxError, header_tag, is_cseq_number, is_token, split_values
from sipproxy.sip.message import SipMessage
from sipproxy.sip.uri import SipUri, parse_sip_uri, uri_scheme
from sipproxy.sip.via import Via, parse_via

KNOWN_METHODS = frozenset(
    (
        b"INVITE",
        b"ACK",
        b"CANCEL",
        b"BYE",
        b"OPTIONS",
        b"REGISTER",
        b"PRACK",
        b"SUBSCRIBE",
        b"NOTIFY",
        b"PUBLISH",
        b"INFO",
        b"REFER",
        b"MESSAGE",
        b"UPDATE",
    )
)
ROUTABLE_SCHEMES = ("sip", "sips")
# (header, required); all but Via may appear only once
_CHECKED = (
    (b"via", True),
    (b"from", True),
    (b"to", True),
    (b"call-id", True),
    (b"cseq", True),
    (b"max-forwards", False),
)
_DISPLAY = {
    b"via": "Via",
    b"from": "From",
    b"to": "To",
    b"call-id": "Call-ID",
    b"cseq": "CSeq",
    b"max-forwards": "Max-Forwards",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    phrase: str
    reason: str  # drop_reason for metrics
    extra_headers: tuple[bytes, ...] = ()


@dataclass(slots=True)
class RequestFacts:
    via_positions: list[int] = field(default_factory=list)  # header indexes of the Via lines
    top_via_values: list[bytes] = field(default_factory=list)  # the values of the first Via line
    top_via: Via | None = None
    call_id: bytes = b""
    from_tag: bytes | None = None
    to_tag: bytes | None = None
    cseq_number: bytes = b""
    cseq_method: bytes = b""
    max_forwards: int | None = None
    content_length: int | None = None
    body: bytes = b""
    ruri: SipUri | None = None
    ruri_scheme: str | None = None
    rejection: Rejection | None = None


def _reject(facts: RequestFacts, status: int, phrase: str, reason: str, *extra: bytes) -> RequestFacts:
    facts.rejection = Rejection(status, phrase, reason, extra)
    return facts


def inspect_request(msg: SipMessage) -> RequestFacts:
    facts = RequestFacts()
    index = msg.index
    headers = msg.headers
    # The top Via is needed by every reply, so it is read before anything can fail.
    via_positions = index.get(b"via", [])
    facts.via_positions = via_positions
    via_ok = True
    if via_positions:
        try:
            facts.top_via_values = split_values(headers[via_positions[0]][1])
        except ValueSyntaxError:
            facts.top_via_values = [headers[via_positions[0]][1]]
            via_ok = False
        facts.top_via = parse_via(facts.top_via_values[0])
    get = index.get
    from_pos = get(b"from")
    to_pos = get(b"to")
    call_id_pos = get(b"call-id")
    cseq_pos = get(b"cseq")
    mf_pos = get(b"max-forwards")
    call_id = headers[call_id_pos[0]][1] if call_id_pos else None
    facts.call_id = call_id or b""
    from_value = headers[from_pos[0]][1] if from_pos else None
    to_value = headers[to_pos[0]][1] if to_pos else None
    facts.from_tag = header_tag(from_value) if from_value is not None else None
    facts.to_tag = header_tag(to_value) if to_value is not None else None
    cseq = headers[cseq_pos[0]][1] if cseq_pos else None
    if cseq is not None:
        cseq_parts = cseq.split()
        if len(cseq_parts) == 2:
            facts.cseq_number, facts.cseq_method = cseq_parts

    if not msg.start_line_ok:
        return _reject(facts, 400, "Bad Request (malformed request line)", "parse_error")
    if msg.version.upper() != b"SIP/2.0":
        if msg.version[:4].upper() == b"SIP/":
            return _reject(facts, 505, "Version Not Supported", "version_not_supported")
        return _reject(facts, 400, "Bad Request (malformed request line)", "parse_error")
    if not msg.terminated:
        return _reject(facts, 400, "Bad Request (header block not terminated)", "parse_error")
    # Every well-formed request passes this one test; the loop below finds which check failed first.
    if not (
        via_positions
        and from_pos is not None
        and len(from_pos) == 1
        and to_pos is not None
        and len(to_pos) == 1
        and call_id_pos is not None
        and len(call_id_pos) == 1
        and cseq_pos is not None
        and len(cseq_pos) == 1
        and (mf_pos is None or len(mf_pos) == 1)
    ):
        for name, required in _CHECKED:
            positions = index.get(name)
            if positions is None:
                if required:
                    return _reject(facts, 400, f"Bad Request (missing {_DISPLAY[name]})", "parse_error")
            elif len(positions) > 1 and name != b"via":
                return _reject(facts, 400, f"Bad Request (multiple {_DISPLAY[name]})", "parse_error")

    # Via: every value must parse, not only ours to read (RFC 4475 3.1.2.1).
    if not via_ok or facts.top_via is None:
        return _reject(facts, 400, "Bad Request (malformed Via)", "parse_error")
    for value in facts.top_via_values[1:]:
        if parse_via(value) is None:
            return _reject(facts, 400, "Bad Request (malformed Via)", "parse_error")
    for pos in via_positions[1:]:
        try:
            values = split_values(headers[pos][1])
        except ValueSyntaxError:
            return _reject(facts, 400, "Bad Request (malformed Via)", "parse_error")
        for value in values:
            if parse_via(value) is None:
                return _reject(facts, 400, "Bad Request (malformed Via)", "parse_error")

    number, method = facts.cseq_number, facts.cseq_method
    if not is_cseq_number(number):
        return _reject(facts, 400, "Bad Request (malformed CSeq)", "parse_error")
    if not is_token(method):
        return _reject(facts, 400, "Bad Request (malformed CSeq)", "parse_error")
    if method != msg.method:
        if msg.method not in KNOWN_METHODS:
            return _reject(facts, 501, "Not Implemented", "method_mismatch")
        return _reject(facts, 400, "Bad Request (CSeq method does not match)", "parse_error")

    mf = headers[mf_pos[0]][1] if mf_pos else None
    if mf is not None:
        if not mf.isdigit() or len(mf) > 10:
            return _reject(facts, 400, "Bad Request (malformed Max-Forwards)", "parse_error")
        facts.max_forwards = int(mf)

    if not call_id:
        return _reject(facts, 400, "Bad Request (empty Call-ID)", "parse_error")
    for addr, label in ((from_value, "From"), (to_value, "To")):
        try:
            parts = split_values(addr or b"")
        except ValueSyntaxError:
            return _reject(facts, 400, f"Bad Request (malformed {label})", "parse_error")
        # An unquoted display name with a comma splits into two values (RFC 4475 3.1.2.15).
        if len(parts) != 1 or not parts[0]:
            return _reject(facts, 400, f"Bad Request (malformed {label})", "parse_error")

    cl_values = msg.values_of(b"content-length")
    body = msg.body
    if cl_values:
        first = cl_values[0]
        if any(v != first for v in cl_values[1:]) or not first.isdigit() or len(first) > 10:
            return _reject(facts, 400, "Bad Request (bad Content-Length)", "bad_content_length")
        length = int(first)
        if length > len(body):
            return _reject(facts, 400, "Bad Request (body shorter than Content-Length)", "bad_content_length")
        facts.content_length = length
        facts.body = body[:length]
    else:
        facts.body = body

    scheme = uri_scheme(msg.ruri)
    facts.ruri_scheme = scheme
    if scheme is None:
        return _reject(facts, 400, "Bad Request (malformed Request-URI)", "parse_error")
    if scheme in ROUTABLE_SCHEMES:
        uri = parse_sip_uri(msg.ruri)
        if uri is None:
            return _reject(facts, 400, "Bad Request (malformed Request-URI)", "parse_error")
        if uri.headers is not None:
            # Headers in a Request-URI are never sent (RFC 3261 19.1.5; RFC 4475 3.1.2.11).
            return _reject(facts, 400, "Bad Request (headers in Request-URI)", "parse_error")
        facts.ruri = uri
    elif scheme != "tel":
        return _reject(facts, 416, "Unsupported URI Scheme", "unsupported_uri_scheme")

    proxy_require = msg.values_of(b"proxy-require")
    if proxy_require:
        options = b", ".join(o.strip() for value in proxy_require for o in value.split(b",") if o.strip())
        if options:
            return _reject(facts, 420, "Bad Extension", "bad_extension", b"Unsupported: " + options)
    return facts

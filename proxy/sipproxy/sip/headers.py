"""Header-level helpers: compact names, splitting comma-separated values, parameters and tags."""

from __future__ import annotations

import re

# RFC 3261 7.3.3 compact forms plus the ones other RFCs registered; names are compared lowercased.
COMPACT_NAMES: dict[bytes, bytes] = {
    b"v": b"via",
    b"f": b"from",
    b"t": b"to",
    b"i": b"call-id",
    b"l": b"content-length",
    b"m": b"contact",
    b"c": b"content-type",
    b"e": b"content-encoding",
    b"k": b"supported",
    b"s": b"subject",
    b"o": b"event",
    b"r": b"refer-to",
    b"b": b"referred-by",
    b"u": b"allow-events",
    b"x": b"session-expires",
    b"a": b"accept-contact",
    b"j": b"reject-contact",
    b"d": b"request-disposition",
    b"y": b"identity",
}

TOKEN_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"


def is_token(value: bytes) -> bool:
    """True when `value` is a non-empty RFC 3261 token (C-speed check through bytes.translate)."""
    return bool(value) and not value.translate(None, TOKEN_CHARS)


def is_cseq_number(value: bytes) -> bool:
    """A CSeq sequence number: digits, below 2**31 by RFC 3261 8.1.1.5, accepted up to 2**32 - 1."""
    return value.isdigit() and len(value) <= 10 and int(value) <= 2**32 - 1


class ValueSyntaxError(ValueError):
    """A header value whose quotes or angle brackets do not balance."""


_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _blank(match: re.Match[bytes]) -> bytes:
    return b"_" * (match.end() - match.start())


def split_values(value: bytes) -> list[bytes]:
    """Split a header value on the commas that separate values (not those inside quotes or <...>).

    Empty values are kept (as b"") so that callers can reject `Via: a,,b`. Raises ValueSyntaxError on an
    unterminated quoted string or angle bracket.
    """
    masked = value
    if b'"' in value:
        # Same-length copy with quoted strings blanked out, so positions still index `value`.
        masked = _QUOTED.sub(_blank, value)
        if b'"' in masked:
            raise ValueSyntaxError("unterminated quoted string")
    if b"," not in masked:
        if masked.count(b"<") != masked.count(b">"):
            raise ValueSyntaxError("unbalanced angle bracket")
        return [value.strip()]
    if b"<" not in masked:
        if masked is value:
            return [part.strip() for part in value.split(b",")]
        if b">" in masked:
            raise ValueSyntaxError("unbalanced angle bracket")
    out: list[bytes] = []
    start = 0
    pos = masked.find(b",")
    while pos >= 0:
        segment = masked[start:pos]
        opened = segment.count(b"<")
        closed = segment.count(b">")
        if opened == closed:
            out.append(value[start:pos].strip())
            start = pos + 1
        elif opened < closed:
            raise ValueSyntaxError("unbalanced angle bracket")
        pos = masked.find(b",", pos + 1)
    tail = masked[start:]
    if tail.count(b"<") != tail.count(b">"):
        raise ValueSyntaxError("unbalanced angle bracket")
    out.append(value[start:].strip())
    return out


def header_params(value: bytes) -> bytes:
    """The header-parameter part of a name-addr / addr-spec value (From, To, Route, Contact).

    With `<...>` the parameters follow the closing bracket; without, everything after the first `;` is a
    header parameter (RFC 3261 20.10).
    """
    if b"<" in value:
        close = value.rfind(b">")
        return value[close + 1 :] if close >= 0 else b""
    semi = value.find(b";")
    return value[semi:] if semi >= 0 else b""


def find_param(params: bytes, name: bytes) -> bytes | None:
    """Value of parameter `name` (lowercase) in `;a=b;c` form; b"" for a flag; None when absent."""
    if name not in params.lower():
        return None
    for piece in params.split(b";"):
        eq = piece.find(b"=")
        pname = (piece if eq < 0 else piece[:eq]).strip().lower()
        if pname == name:
            return b"" if eq < 0 else unquote(piece[eq + 1 :].strip())
    return None


def unquote(value: bytes) -> bytes:
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        return value[1:-1]
    return value


def header_tag(value: bytes) -> bytes | None:
    """The `tag` parameter of a From or To value, or None."""
    params = header_params(value)
    low = params.lower()
    at = low.find(b";tag=")
    if at >= 0 and low.count(b"tag=") == 1:
        # Common form: `;tag=value` with no LWS and no other parameter named like it.
        end = params.find(b";", at + 5)
        return params[at + 5 : end if end >= 0 else len(params)].strip()
    if b"tag" not in low:
        return None
    return find_param(params, b"tag")


def addr_uri(value: bytes) -> bytes:
    """The URI inside a name-addr (`"x" <sip:a@b;lr>;p=1` -> `sip:a@b;lr`) or a bare addr-spec."""
    lt = value.find(b"<")
    if lt >= 0:
        gt = value.find(b">", lt)
        return value[lt + 1 : gt if gt >= 0 else len(value)].strip()
    semi = value.find(b";")
    return (value if semi < 0 else value[:semi]).strip()

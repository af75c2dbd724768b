"""Header-level helpers: compact names, splitting comma-separated values, parameters and tags."""

from __future__ import annotations

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


class ValueSyntaxError(ValueError):
    """A header value whose quotes or angle brackets do not balance."""


def split_values(value: bytes) -> list[bytes]:
    """Split a header value on the commas that separate values (not those inside quotes or <...>).

    Empty values are kept (as b"") so that callers can reject `Via: a,,b`. Raises ValueSyntaxError on an
    unterminated quoted string or angle bracket.
    """
    if b'"' not in value and b"<" not in value:
        if b"," not in value:
            return [value.strip()]
        return [part.strip() for part in value.split(b",")]
    out: list[bytes] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == 0x5C:  # backslash: quoted-pair, skip the next octet
                i += 1
            elif c == 0x22:
                in_quote = False
        elif c == 0x22:
            in_quote = True
        elif c == 0x3C:
            in_angle = True
        elif c == 0x3E:
            in_angle = False
        elif c == 0x2C and not in_angle:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    if in_quote or in_angle:
        raise ValueSyntaxError("unbalanced quote or angle bracket")
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
    return find_param(header_params(value), b"tag")


def addr_uri(value: bytes) -> bytes:
    """The URI inside a name-addr (`"x" <sip:a@b;lr>;p=1` -> `sip:a@b;lr`) or a bare addr-spec."""
    lt = value.find(b"<")
    if lt >= 0:
        gt = value.find(b">", lt)
        return value[lt + 1 : gt if gt >= 0 else len(value)].strip()
    semi = value.find(b";")
    return (value if semi < 0 else value[:semi]).strip()

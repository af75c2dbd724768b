"""One SIP message split into start line, header lines and body, without parsing header values.

The split is a single pass over the header block: each header keeps its raw bytes (for splicing the
outgoing message unchanged) beside its lowercased long-form name and its unfolded value. Values are
parsed later, only for the few headers a stateless proxy reads.
"""

from __future__ import annotations

from sipproxy.sip.headers import COMPACT_NAMES, is_token

# One header: (lowercase long-form name, unfolded stripped value, raw bytes without the final CRLF)
Header = tuple[bytes, bytes, bytes]


# Header names as written -> lowercase long form. Senders use a small set of spellings, so this saves the
# per-line normalisation; the bound keeps random names from growing it without limit.
_NAMES: dict[bytes, bytes] = {}
_NAME_CACHE_SIZE = 4096


class ParseError(ValueError):
    """The message cannot be split into start line and headers."""


class SipMessage:
    __slots__ = (
        "body",
        "data",
        "headers",
        "index",
        "is_request",
        "method",
        "reason",
        "ruri",
        "start_line",
        "start_line_ok",
        "status",
        "terminated",
        "version",
    )

    def __init__(self) -> None:
        self.data = b""
        self.start_line = b""
        self.is_request = False
        self.start_line_ok = False
        self.method = b""
        self.ruri = b""
        self.version = b""
        self.status = 0
        self.reason = b""
        self.headers: list[Header] = []
        self.index: dict[bytes, list[int]] = {}
        self.body = b""
        self.terminated = False  # the header block ended with an empty line

    def values_of(self, name: bytes) -> list[bytes]:
        """The unfolded values of every header line called `name` (one entry per line)."""
        headers = self.headers
        return [headers[i][1] for i in self.index.get(name, ())]

    def first(self, name: bytes) -> bytes | None:
        positions = self.index.get(name)
        return self.headers[positions[0]][1] if positions else None

    def raw_of(self, name: bytes) -> list[bytes]:
        headers = self.headers
        return [headers[i][2] for i in self.index.get(name, ())]


def parse_message(data: bytes) -> SipMessage:
    """Split `data` into a SipMessage. Raises ParseError when the header block is not SIP at all."""
    msg = SipMessage()
    msg.data = data
    end = data.find(b"\r\n\r\n")
    if end < 0:
        head = data[:-2] if data.endswith(b"\r\n") else data
        msg.body = b""
    else:
        head = data[:end]
        msg.body = data[end + 4 :]
        msg.terminated = True
    lines = head.split(b"\r\n")
    start = lines[0]
    msg.start_line = start
    _parse_start_line(msg, start)
    headers = msg.headers
    index = msg.index
    compact = COMPACT_NAMES
    names = _NAMES
    folded = b"\n " in head or b"\n\t" in head
    for line in lines[1:]:
        if folded and line[:1] in (b" ", b"\t"):
            if not headers:
                raise ParseError("continuation line before any header")
            name, value, raw = headers[-1]
            more = line.strip()
            headers[-1] = (name, (value + b" " + more) if value else more, raw + b"\r\n" + line)
            continue
        written, colon, rest = line.partition(b":")
        if not colon or not written:
            raise ParseError("header line without a colon")
        known = names.get(written)
        if known is None:
            name = written.rstrip().lower()
            name = compact.get(name, name)
            if len(names) < _NAME_CACHE_SIZE:
                names[written] = name
        else:
            name = known
        positions = index.get(name)
        if positions is None:
            index[name] = [len(headers)]
        else:
            positions.append(len(headers))
        headers.append((name, rest.strip(), line))
    return msg


def _parse_start_line(msg: SipMessage, start: bytes) -> None:
    if start[:4].upper() == b"SIP/":
        msg.is_request = False
        parts = start.split(b" ", 2)
        if len(parts) < 2:
            raise ParseError("bad status line")
        msg.version = parts[0]
        code = parts[1]
        if len(code) != 3 or not code.isdigit():
            raise ParseError("bad status code")
        msg.status = int(code)
        msg.reason = parts[2] if len(parts) == 3 else b""
        msg.start_line_ok = 100 <= msg.status <= 699
        return
    sp = start.find(b" ")
    method = start[:sp] if sp > 0 else start
    if not is_token(method):
        raise ParseError("not a SIP start line")
    msg.is_request = True
    msg.method = method
    parts = start.split(b" ")
    # Exactly one SP between the three elements: extra or trailing spaces are malformed (RFC 4475 3.1.2.9,
    # 3.1.2.10) and LWS inside the Request-URI too (3.1.2.8).
    if len(parts) == 3 and parts[1] and parts[2]:
        msg.ruri = parts[1]
        msg.version = parts[2]
        msg.start_line_ok = True

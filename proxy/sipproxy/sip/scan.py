"""The C scanner of usual messages (`_scan.c`), when this install has it (not with SIPSOCKETS_PURE_PYTHON).

A scan reads a received message once and hands the engine the few values it forwards by, or None when
the message is not of the usual plain shape; the engine then takes its general path, which answers every
message. The tuples, field by field:

ScannedRequest (`scan_request(data, source_ip, source_port)`, the address normalized as uri.normalize_host
does): method, Request-URI, its host (lowercase) and port, its `;params` (raw), whether To has a tag, the
branch our Via gets (branch.make_branch of the request's keys), the header lines as they go on (the top
Via's received/rport filled as via.fix_received does, Max-Forwards decremented or added, Route lines left
out when there are routes), Content-Length (-1: none), the end of the start line, the start of the blank
line ending the header block, and the Route set (inside a dialog, at most two values) as ScannedRoute:
host (lowercase), port, whether it has `r2`, its `transport` (lowercase) or None, and its user part (a flow
token, when it is one of ours) or None.

ScannedResponse: our Via value up to `;branch=`, the socket key and flow token of its `sk`
(listeners.parse_socket_key; the token is lowercase hex of at most flowtoken.MAX_TOKEN_LENGTH characters),
the message without our Via line, then the next Via's transport (uppercase), host (lowercase), port,
received (as written) and rport (a port number, else None).
"""

from __future__ import annotations

from collections.abc import Callable

ScannedRoute = tuple[str, int | None, bool, str | None, bytes | None]
ScannedRequest = tuple[
    bytes,
    bytes,
    str,
    int | None,
    bytes,
    bool,
    bytes,
    bytes,
    int,
    int,
    int,
    tuple[ScannedRoute, ...],
]
ScannedResponse = tuple[bytes, bytes, bytes | None, bytes, str, str, int | None, str | None, int | None]

try:
    from sipproxy.sip._scan import scan_request as _scan_request
    from sipproxy.sip._scan import scan_response as _scan_response

    SCAN_REQUEST: Callable[[bytes, str, int], ScannedRequest | None] | None = _scan_request
    SCAN_RESPONSE: Callable[[bytes], ScannedResponse | None] | None = _scan_response
except ImportError:  # installed without a C compiler: the general path does everything
    SCAN_REQUEST = None
    SCAN_RESPONSE = None

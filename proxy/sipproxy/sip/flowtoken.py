"""Flow tokens: names of stream connections that only this proxy can make (RFC 5626 5.2 style).

A token names one connection, by its id (see the runtime's connection ids: the id also tells which worker
owns the connection) and the peer's address, authenticated with a keyed hash under a secret every process
of one proxy shares. It goes where the proxy needs a connection back without keeping state:

- the user part of our Record-Route towards a WebSocket or TLS client
  (`sip:TOKEN@host:port;transport=ws;lr;ob`): an in-dialog request arriving with that Route goes to the
  connection, as a browser's Contact (`*.invalid`) cannot be reached any other way;
- the connection part of the `sk` parameter of our Via, so that a response naming a connection (one that
  arrived over UDP, say) cannot be written onto another client's connection by forging the id.

`make(key, conn_id, peer)` returns the token: lowercase hex, legal unescaped in a SIP URI user part and in
a Via parameter value (and the `sk` grammar the scanner reads), at most MAX_TOKEN_LENGTH characters.
`check(key, token)` returns the `Flow` it names when the token is authentic, None for anything else
(another key, any changed character, a wrong length, uppercase or non-hex characters); the comparison of
the hash takes the same time whatever the token. The caller must still compare `Flow` with the connection
the id maps to today (`Flow.is_peer`): ids are reused (a worker restarts, its counter wraps), and a token
for a closed connection must not reach a newer one with the same id.

Layout before hex: connection id (6 bytes, big-endian), peer port (2), peer IP (4 or 16), then the first
10 bytes (80 bits, as RFC 5626 suggests for HMAC-SHA1-80) of keyed BLAKE2s over all of it. The key is 16 to
32 bytes (`new_key`); it lives as long as the proxy, so tokens die with it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Final

CONN_ID_BYTES: Final = 6
MAC_BYTES: Final = 10
MIN_KEY_BYTES: Final = 16
MAX_KEY_BYTES: Final = 32  # BLAKE2s keys are at most 32 bytes
MAX_TOKEN_LENGTH: Final = 2 * (CONN_ID_BYTES + 2 + 16 + MAC_BYTES)
_V4_LENGTH: Final = 2 * (CONN_ID_BYTES + 2 + 4 + MAC_BYTES)
_PERSON: Final = b"sipsflow"  # BLAKE2 personalization: these hashes mean nothing elsewhere
_HEX: Final = frozenset(b"0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Flow:
    """The connection a token names: its id and the peer it was made for."""

    conn_id: int
    host: str  # the peer's IP, in canonical form (ipaddress)
    port: int

    def is_peer(self, host: str, port: int) -> bool:
        """Whether (host, port), in any textual form of the IP, is the peer the token was made for."""
        if port != self.port:
            return False
        try:
            return ipaddress.ip_address(host.strip("[]")) == ipaddress.ip_address(self.host)
        except ValueError:
            return False


def new_key() -> bytes:
    """A fresh random key for one proxy (shared by its supervisor and workers)."""
    return secrets.token_bytes(MAX_KEY_BYTES)


def make(key: bytes, conn_id: int, peer: tuple[str, int]) -> bytes:
    """The token naming connection `conn_id` to `peer` (IP literal, port). Raises ValueError for a key
    of the wrong size, an id outside 0..2**48-1, a host that is not an IP literal or a bad port."""
    _check_key(key)
    if not 0 <= conn_id < 1 << (8 * CONN_ID_BYTES):
        raise ValueError(f"connection id out of range: {conn_id}")
    host, port = peer
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    packed = ipaddress.ip_address(host.strip("[]")).packed
    body = conn_id.to_bytes(CONN_ID_BYTES, "big") + port.to_bytes(2, "big") + packed
    return (body + _mac(key, body)).hex().encode()


def check(key: bytes, token: bytes | str) -> Flow | None:
    """The flow an authentic token names, else None."""
    _check_key(key)
    raw = token.encode("latin-1", "replace") if isinstance(token, str) else token
    if len(raw) not in (_V4_LENGTH, MAX_TOKEN_LENGTH):
        return None
    # bytes.fromhex would also take uppercase and spaces: only our exact spelling is a token.
    for c in raw:
        if c not in _HEX:
            return None
    data = bytes.fromhex(raw.decode("ascii"))
    body = data[:-MAC_BYTES]
    if not hmac.compare_digest(data[-MAC_BYTES:], _mac(key, body)):
        return None
    conn_id = int.from_bytes(body[:CONN_ID_BYTES], "big")
    port = int.from_bytes(body[CONN_ID_BYTES : CONN_ID_BYTES + 2], "big")
    host = str(ipaddress.ip_address(body[CONN_ID_BYTES + 2 :]))
    return Flow(conn_id, host, port)


def conn_id_of(token: bytes) -> int | None:
    """The connection id a token of the right shape names, read without checking it (None: not of the
    shape). Only for finding the connection whose expected token the caller then compares."""
    if len(token) not in (_V4_LENGTH, MAX_TOKEN_LENGTH):
        return None
    for c in token:
        if c not in _HEX:
            return None
    return int(token[: 2 * CONN_ID_BYTES], 16)


def _mac(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2s(body, digest_size=MAC_BYTES, key=key, person=_PERSON).digest()


def _check_key(key: bytes) -> None:
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"a flow token key is {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {len(key)}")

"""Deterministic branch parameters for the Via this proxy pushes (RFC 3261 16.6 step 8, 16.11).

Our branch is `z9hG4bKsps<transaction hash>.<loop hash>`:

- the transaction part is a hash of the received top Via branch when that has the magic cookie (so every
  retransmission, the CANCEL and the ACK of a non-2xx answer, which all repeat the client's branch, get
  the same branch from us), else a hash of the top Via, From tag, Call-ID, CSeq number and Request-URI
  (RFC 2543 peers). The To tag is left out on purpose: the ACK of a non-2xx response carries the To tag
  of that response while the INVITE had none, and both must map to one branch;
- the loop part hashes what a loop leaves unchanged, as received (Request-URI, From tag, Call-ID, CSeq
  number, Route header values): a request that comes back to us with one of our own Vias carrying the
  same loop part has looped rather than spiralled.

No secret or per-process state enters the hash: every worker and every proxy instance computes the same
branch for the same request, so a retransmission may land anywhere.
"""

from __future__ import annotations

from hashlib import blake2s

from sipproxy.sip.via import BRANCH_COOKIE

OUR_BRANCH_PREFIX = BRANCH_COOKIE + b"sps"


def _digest(data: bytes, size: int) -> bytes:
    return blake2s(data, digest_size=size).hexdigest().encode("ascii")


def transaction_key(
    top_branch: bytes | None,
    top_via: bytes,
    from_tag: bytes | None,
    call_id: bytes,
    cseq_number: bytes,
    ruri: bytes,
) -> bytes:
    # A bare cookie carries no uniqueness (RFC 4475 3.2.1): treat it like an RFC 2543 request.
    if top_branch is not None and top_branch.startswith(BRANCH_COOKIE) and len(top_branch) > 7:
        return b"b\x00" + top_branch
    return b"\x00".join((b"v", top_via, from_tag or b"", call_id, cseq_number, ruri))


def loop_key(ruri: bytes, from_tag: bytes | None, call_id: bytes, cseq_number: bytes, routes: bytes) -> bytes:
    return b"\x00".join((ruri, from_tag or b"", call_id, cseq_number, routes))


def make_branch(txn_key: bytes, lp_key: bytes) -> bytes:
    return OUR_BRANCH_PREFIX + _digest(txn_key, 10) + b"." + _digest(lp_key, 4)


def loop_part(branch: bytes) -> bytes | None:
    """The loop hash of one of our branches, None when `branch` is not ours."""
    if not branch.startswith(OUR_BRANCH_PREFIX):
        return None
    dot = branch.rfind(b".")
    return branch[dot + 1 :] if dot > 0 else None


def reply_to_tag(txn_key: bytes) -> bytes:
    """To tag for our stateless replies: the same for every retransmission of the request."""
    return b"sps" + _digest(txn_key, 6)

"""How `sockets_list` and `sockets_reload` show a socket, and the JSON text of each shown socket kept until
something it shows changes.

A reload's answer lists every kept socket: built anew each time, that cost a few microseconds per socket
present, as much as the rest of the reload. So each socket's text is remembered with what it was made from
(the entry's fields, its traffic as last collected, whether that traffic is recent, the TLS domains
generation for the warning) and made again only when one of those differs; an answer then costs one
comparison per socket listed and the joining of the texts."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from typing import Any

from sipproxy.supervisor.entries import Entry, ReloadResult
from sipproxy.supervisor.traffic import Seen, Traffic, receiving

# A bound socket on which no message has been counted yet.
UNSEEN = Seen(0, None)


def entry_dict(
    entry: Entry,
    with_kind: bool = False,
    warning: str | None = None,
    traffic: Seen | None = None,
    now: float = 0.0,
) -> dict[str, Any]:
    """OpenSIPS' sockets_list fields first (empty ones left out), then ours: `freebind`, the state
    (listening, partial, absent, unselected, failed) and its error, whether the address is on this host
    (`address_local`, once looked at), and from `traffic` the messages received on it here (`received`) and
    whether they arrived lately (`receiving`, traffic.py)."""
    spec, row = entry.spec, entry.row
    out: dict[str, Any] = {}
    if row is not None and row.socket:
        out["socket"] = row.socket.strip()
    elif spec is not None:
        out["socket"] = spec.raw or spec.socket_str
    if spec is not None:
        if spec.advertised_str:
            out["advertised"] = spec.advertised_str
        if spec.tag:
            out["tag"] = spec.tag
        if spec.flags:
            out["flags"] = ",".join(spec.flags_tuple)
        if spec.tos:
            out["tos"] = spec.tos
    elif row is not None:  # a row that did not parse: show what it says
        for name in ("advertised", "tag", "flags", "tos"):
            value = getattr(row, name)
            if value is not None and value.strip():
                out[name] = value.strip()
    if spec is not None:
        out["proto"] = spec.proto
        out["address"] = spec.host
        out["port"] = spec.port
    if spec is not None and spec.freebind:
        out["freebind"] = True
    if entry.slot is not None:
        out["slot"] = entry.slot
    out["state"] = entry.reported_state
    if out["state"] == "absent" and entry.state == "listening" and spec is not None:
        out["error"] = (
            f"address {spec.host} has left this host; the socket stays bound and serves again when it returns"
        )
    elif entry.state == "listening" and entry.lagging:
        # Bound and served, but not by every worker that should: say which, until each is replaced.
        out["state"] = "partial"
        out["error"] = "; ".join(entry.lagging[name] for name in sorted(entry.lagging))
    elif entry.error:
        out["error"] = entry.error
    if entry.address_local is not None:
        out["address_local"] = entry.address_local
    if traffic is not None:
        out["received"] = traffic.received
        out["receiving"] = receiving(traffic, now)
    notes = [w for w in (warning, entry.note) if w]
    if notes:
        out["warning"] = "; ".join(notes)
    if with_kind:
        out["kind"] = entry.kind
    return out


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class Listing:
    """The listed form of each socket, as JSON text, made again only when what it shows changed.

    `traffic` gives the counts collected from the workers; `warning(entry)` says what is wrong with a socket
    (a TLS socket no domain serves) and `generation()` names the state that warning depends on (the TLS
    domains generation): a text is made again when it changes. `live()` gives the sids still known, so that
    texts of sockets gone are dropped."""

    def __init__(
        self,
        traffic: Traffic,
        warning: Callable[[Entry], str | None],
        generation: Callable[[], object],
        live: Callable[[], Collection[int]],
    ) -> None:
        self.traffic = traffic
        self.warning = warning
        self.generation = generation
        self.live = live
        # sid -> (spec, label, what the text was made from, the text); without `kind` and with it.
        self._texts: list[dict[int, tuple[Any, ...]]] = [{}, {}]

    def array(self, entries: Iterable[Entry], now: float, with_kind: bool = False) -> str:
        """The entries as a JSON array."""
        texts = self._texts[with_kind]
        generation = self.generation()
        seen_of = self.traffic.of
        parts: list[str] = []
        for entry in entries:
            spec = entry.spec
            known = texts.get(entry.sid)
            if known is not None and known[0] is spec:
                label = known[1]
            else:
                known = None
                label = spec.socket_str if spec is not None else None
            seen = seen_of(label) if label is not None else None
            if seen is None and entry.sock is not None:
                seen = UNSEEN
            made_of = (
                entry.row,
                entry.slot,
                entry.state,
                entry.error,
                entry.address_local,
                entry.note,
                tuple(entry.lagging.items()) if entry.lagging else None,
                seen,
                seen is not None and receiving(seen, now),
                generation,
            )
            if known is not None and known[2] == made_of:
                parts.append(known[3])
                continue
            text = dumps(entry_dict(entry, with_kind, self.warning(entry), seen, now))
            texts[entry.sid] = (spec, label, made_of, text)
            parts.append(text)
        self._prune()
        return "[" + ",".join(parts) + "]"

    def remembered(self) -> int:
        """How many texts are kept."""
        return sum(len(t) for t in self._texts)

    def _prune(self) -> None:
        """Forget the texts of sockets gone, once they are as many as the rest (so it costs nothing per
        answer, counted over many)."""
        if max(len(t) for t in self._texts) > 2 * len(self.live()) + 64:
            live = set(self.live())
            self._texts = [{sid: v for sid, v in t.items() if sid in live} for t in self._texts]

    def reload_answer(self, result: ReloadResult, now: float) -> str:
        """`sockets_reload`'s answer as JSON text: added, kept and updated sockets shown as `sockets_list`
        shows them, the others with their reason."""
        parts = {
            "added": self.array(result.added, now),
            "removed": dumps([entry_dict(e) for e in result.removed]),
            "kept": self.array(result.kept, now),
            "updated": self.array(result.updated, now),
            "failed": dumps([_unbound(e) for e in result.failed]),
            # Not failures: the address is not on this host (bound when it appears), or the row is placed on
            # other nodes.
            "absent": dumps([_unbound(e) for e in result.absent]),
            "unselected": dumps([_unbound(e) for e in result.unselected]),
        }
        return "{" + ",".join(f"{dumps(name)}:{text}" for name, text in parts.items()) + "}"


def _unbound(entry: Entry) -> dict[str, str]:
    return {"socket": entry_dict(entry).get("socket", ""), "error": entry.error or ""}

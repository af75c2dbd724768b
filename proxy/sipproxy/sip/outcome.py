"""What the engine decides for one message: the messages to send, or why it sent nothing."""

from __future__ import annotations

from dataclasses import dataclass

from sipproxy.sip.listeners import Listener


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes  # the full message to send
    listener: Listener  # local socket to send from
    host: str  # destination: IP literal or a hostname the runtime resolves
    port: int
    proto: str  # "udp" | "tcp" ...
    # stream only: the exact connection to write on (the one a request arrived on, for its responses);
    # None = the runtime picks or opens one to (host, port) from `listener`
    connection: object | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    sends: list[Send]
    drop_reason: str | None = None  # snake_case reason when something was dropped or answered with an error


def drop(reason: str) -> Outcome:
    return Outcome([], reason)

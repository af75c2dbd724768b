"""Every socket of the proxy as this worker knows it, with its sid: the engine's ListenerView."""

from __future__ import annotations

from collections.abc import Iterable

from sipproxy.sip.listeners import Listener


class Listeners:
    """The engine's ListenerView: every socket of the proxy, as this worker knows them."""

    def __init__(self) -> None:
        # The sid of each listener. Never replaced, only changed: the sender binds its `get` once.
        self.sids: dict[Listener, int] = {}
        self._by_tag: dict[str, Listener] = {}

    def all(self) -> Iterable[Listener]:
        return self.sids.keys()

    def by_tag(self, tag: str) -> Listener | None:
        return self._by_tag.get(tag)

    def add(self, listener: Listener, sid: int) -> None:
        self.sids[listener] = sid
        if listener.tag and listener.tag not in self._by_tag:
            self._by_tag[listener.tag] = listener

    def remove(self, listener: Listener) -> None:
        self.sids.pop(listener, None)
        if listener.tag and self._by_tag.get(listener.tag) == listener:
            del self._by_tag[listener.tag]
            for other in self.sids:
                if other.tag == listener.tag:
                    self._by_tag[other.tag] = other
                    break

    def sid_of(self, listener: Listener) -> int | None:
        return self.sids.get(listener)

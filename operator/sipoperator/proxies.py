"""The proxy fleet: which pods are ready proxies, and their Management Interface (JSON-RPC over HTTP, or
HTTPS with the operator's client certificate when `--mi-tls-ca-file` is set: see `mi_tls.py`).

Works against our `sipproxy` and against OpenSIPS 3.6: only `sockets_reload` and `sockets_list` are required;
`list_sockets` (static sockets) and `sockets_capacity` are used when the proxy has them (-32601 otherwise);
`tls_reload` (OpenSIPS's tls_mgm in database mode, and ours) is called for SipSockets with TLS domains.
OpenSIPS after 3.6 names the two required commands `sockets_mgm:reload` and `sockets_mgm:list` (the 3.6 names
stay as aliases); each pod is asked by the 3.6 name first and, on -32601, by the newer one, which it keeps.
Reloads and listings are coalesced per pod: callers that ask while one is running share the next one, so a
thousand SipSockets reconciling at once cost a handful of reloads, never a thousand.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp

from sipoperator.conditions import ABSENT, FAILED, LISTENING, NOT_SELECTED, PARTIAL, PENDING
from sipoperator.lease import UNFENCED, Fence
from sipoperator.metrics import Metrics
from sipoperator.mi_tls import reloading_client_context
from sipoperator.settings import Settings
from sipoperator.spec import EndpointKey, row_key

log = logging.getLogger(__name__)
METHOD_NOT_FOUND = -32601
# A pod's own MI port, overriding --mi-port for that pod. Needed wherever pods of one fleet answer on
# different ports: a `helm upgrade` changing the MI port rolls the pods one by one, and several hostNetwork
# pods on one node share the node's address.
MI_PORT_ANNOTATION = "sipsockets.io/mi-port"
T = TypeVar("T")
_ids = itertools.count(1)
# The MI commands the operator needs, each by its names, oldest OpenSIPS first. The 3.6 name comes first:
# OpenSIPS 3.6 knows nothing else, and the newer releases (and sipproxy) still answer it as an alias, so every
# proxy known today answers the first call. The newer name is the fallback for a proxy that dropped the
# aliases.
MI_NAMES: dict[str, tuple[str, ...]] = {
    "reload": ("sockets_reload", "sockets_mgm:reload"),
    "list": ("sockets_list", "sockets_mgm:list"),
}


class Unreachable(Exception):
    """The pod's MI could not be asked (connection, timeout, HTTP error, bad JSON)."""


class MIError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"MI error {code}: {message}")
        self.code = code


class MIClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fence: Fence = UNFENCED  # asked before each reload: only the Lease's holder reloads proxies
        self._session: aiohttp.ClientSession | None = None
        # Plain HTTP without a CA: OpenSIPS' own MI, and the local environment without the chart.
        self._tls = (
            reloading_client_context(
                settings.mi_tls_ca_file, settings.mi_tls_cert_file, settings.mi_tls_key_file
            )
            if settings.mi_tls_ca_file
            else None
        )

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # A fresh connection per call: proxies restart and keep-alive connections go stale.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, ip: str, port: int | None = None) -> str:
        host = f"[{ip}]" if ":" in ip else ip
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{port or self.settings.mi_port}/{self.settings.mi_root}"

    async def call(self, ip: str, method: str, wait: float | None = None, *, port: int | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        try:
            token = self.settings.mi_token()
        except OSError as exc:
            raise Unreachable(f"cannot read the MI token file: {exc}") from exc
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = {"jsonrpc": "2.0", "method": method, "params": {}, "id": next(_ids)}
        tls: dict[str, Any] = {}
        if self._tls is not None:
            # The pod IP is dialled; the certificate is checked for the fixed name (see mi_tls.py).
            tls = {"ssl": self._tls.current(), "server_hostname": self.settings.mi_tls_server_name}
        try:
            async with self._sess().post(
                self.url(ip, port),
                json=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=wait or self.settings.mi_timeout),
                **tls,
            ) as resp:
                if resp.status == 401:
                    raise Unreachable("the MI refused the token (HTTP 401); check the MI token file")
                if resp.status != 200:
                    raise Unreachable(f"{method}: HTTP {resp.status}")
                body = await resp.json(content_type=None)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Unreachable(
                f"{method}: the proxy's MI certificate is not trusted (CA, or name "
                f"{self.settings.mi_tls_server_name}): {exc.certificate_error}"
            ) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise Unreachable(f"{method}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        except TimeoutError as exc:
            raise Unreachable(f"{method}: no answer within {wait or self.settings.mi_timeout:g}s") from exc
        if not isinstance(body, Mapping):
            raise Unreachable(f"{method}: not a JSON-RPC answer")
        error = body.get("error")
        if isinstance(error, Mapping):
            raise MIError(int(error.get("code", 0)), str(error.get("message", "")))
        return body.get("result")


class Coalesced(Generic[T]):
    """Run `fn` on request; requests made while a run is in flight share the next run, not the current one
    (the current one may have read the database before the caller's write)."""

    def __init__(self, fn: Callable[[], Awaitable[T]]) -> None:
        self._fn = fn
        self._lock = asyncio.Lock()
        self._requested = 0
        self._covered = 0
        self._last: tuple[T | None, BaseException | None] = (None, None)

    async def __call__(self) -> T:
        self._requested += 1
        mine = self._requested
        async with self._lock:
            if self._covered < mine:
                covers = self._requested
                try:
                    self._last = (await self._fn(), None)
                except Exception as exc:
                    self._last = (None, exc)
                self._covered = covers
            value, error = self._last
        if error is not None:
            raise error
        return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Seen:
    """What our proxy says of a socket besides its state: is the address on the pod's node, and did messages
    arrive on it within the last minute (where a floating address served with free bind is). None: the proxy
    does not say (OpenSIPS, an older sipproxy, a socket not bound there)."""

    address_local: bool | None = None
    receiving: bool | None = None
    advertised: str | None = None  # what the socket advertises there (the pod's node's own, with fromNode)


@dataclass(frozen=True)
class Listed:
    """A pod's dynamic sockets: socket text -> (state, error); what else the proxy says of them; and its
    warnings about some of them (ours: a tls/wss socket no loaded TLS server domain serves, whose handshakes
    all fail)."""

    entries: dict[str, tuple[str, str]]
    opensips: bool  # no per-socket state: a listed socket counts as listening
    seen: dict[str, Seen] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def sockets(self) -> frozenset[str]:
        """The listed socket texts that parse (as `drift.table_sockets` takes the table's): computed once
        for every pass that shares this listing."""
        return frozenset(s for s in self.entries if row_key(s) is not None)

    def _text_of(self, socket: str, key: EndpointKey) -> str | None:
        if socket in self.entries:
            return socket
        for text in self.entries:
            if row_key(text) == key and text.split(":", 1)[0].lower() == socket.split(":", 1)[0]:
                return text
        return None

    def state_of(self, socket: str, key: EndpointKey) -> tuple[str, str]:
        text = self._text_of(socket, key)
        if text is None:
            return PENDING, ""
        return self.entries[text]

    def seen_of(self, socket: str, key: EndpointKey) -> Seen:
        text = self._text_of(socket, key)
        return self.seen.get(text, Seen()) if text is not None else Seen()

    def warning_of(self, socket: str, key: EndpointKey) -> str:
        text = self._text_of(socket, key)
        return self.warnings.get(text, "") if text is not None else ""


def mi_port_of(annotations: Mapping[str, str] | None) -> tuple[int | None, str]:
    """The MI port a pod's annotation names: (port, "") when set and valid, (None, "") when absent, and
    (None, why) when it cannot be a port, so the caller can say so and fall back to --mi-port."""
    raw = (annotations or {}).get(MI_PORT_ANNOTATION)
    if raw is None:
        return None, ""
    text = str(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        return None, f"annotation {MI_PORT_ANNOTATION}={raw!r} is not a port (1-65535)"
    return int(text), ""


def parse_listing(result: Any, opensips: bool | None = None) -> Listed:
    """A `sockets_list` answer. Ours has `state` and `error` per socket; OpenSIPS 3.6 has neither (and lists
    sockets that failed to bind as if they were fine), so there a listed socket counts as listening."""
    entries: dict[str, tuple[str, str]] = {}
    seen: dict[str, Seen] = {}
    warnings: dict[str, str] = {}
    saw_state = False
    for item in result if isinstance(result, list) else []:
        if not isinstance(item, Mapping) or not isinstance(item.get("socket"), str):
            continue
        if item.get("warning"):
            warnings[item["socket"]] = str(item["warning"])
        state = item.get("state")
        if state is None:
            entries[item["socket"]] = (LISTENING, "")
            continue
        saw_state = True
        name = str(state).lower()
        error = str(item.get("error") or state)
        if name == "listening":
            entries[item["socket"]] = (LISTENING, "")
        elif name in _STATES:
            entries[item["socket"]] = (_STATES[name], error)
        else:
            entries[item["socket"]] = (FAILED, error)
        local, receiving, advertised = (
            item.get("address_local"),
            item.get("receiving"),
            item.get("advertised"),
        )
        seen[item["socket"]] = Seen(
            address_local=local if isinstance(local, bool) else None,
            receiving=receiving if isinstance(receiving, bool) else None,
            advertised=advertised if isinstance(advertised, str) else None,
        )
    return Listed(entries, opensips if opensips is not None else not saw_state, seen, warnings)


# Our proxy's states besides listening and failed (anything unknown counts as failed).
_STATES = {"partial": PARTIAL, "absent": ABSENT, "unselected": NOT_SELECTED}


@dataclass
class ProxyPod:
    name: str
    uid: str
    ip: str
    client: MIClient
    metrics: Metrics
    mi_port: int | None = None  # None: the operator's --mi-port
    node: str | None = None  # spec.nodeName
    static: list[str] | None = None
    capacity: int | None = None
    opensips: bool | None = None
    # command -> the name this pod answered to (MI_NAMES); learnt once per process, like `static`
    mi_names: dict[str, str] = field(default_factory=dict)
    _reload: Coalesced[Any] = field(init=False)
    _tls_reload: Coalesced[Any] = field(init=False)
    _listing: Coalesced[Listed] = field(init=False)
    _last_listing: tuple[float, Listed] | None = field(default=None, init=False)  # (asked at, answer)

    def __post_init__(self) -> None:
        self._reload = Coalesced(self._do_reload)
        self._tls_reload = Coalesced(self._do_tls_reload)
        self._listing = Coalesced(self._do_list)

    @property
    def key(self) -> str:
        """Names this pod's process: a pod that restarts or moves is another key."""
        return f"{self.name}/{self.uid}"

    async def _call(self, method: str) -> Any:
        return await self.client.call(self.ip, method, port=self.mi_port)

    async def _call_command(self, command: str) -> Any:
        """`command` (a key of MI_NAMES) by the name this pod answers to: the known one, else each name in
        turn while the proxy says -32601 (method not found)."""
        known = self.mi_names.get(command)
        if known is not None:
            return await self._call(known)
        names = MI_NAMES[command]
        for name in names[:-1]:
            try:
                result = await self._call(name)
            except MIError as exc:
                if exc.code != METHOD_NOT_FOUND:
                    raise
                continue
            self.mi_names[command] = name
            return result
        result = await self._call(names[-1])
        self.mi_names[command] = names[-1]
        return result

    async def _do_reload(self) -> Any:
        self.client.fence.budget()  # raises NotLeader
        started = time.monotonic()
        try:
            result = await self._call_command("reload")
        except (Unreachable, MIError):
            self.metrics.reloads.inc(result="error")
            raise
        self.metrics.reloads.inc(result="ok")
        self.metrics.reload_seconds.observe(time.monotonic() - started)
        return result

    async def _do_tls_reload(self) -> Any:
        self.client.fence.budget()  # raises NotLeader
        try:
            result = await self._call("tls_reload")
        except MIError as exc:
            self.metrics.tls_reloads.inc(result="error")
            if exc.code == METHOD_NOT_FOUND:
                raise MIError(
                    exc.code, "the proxy has no MI tls_reload, so it cannot serve TLS domains"
                ) from exc
            raise
        except Unreachable:
            self.metrics.tls_reloads.inc(result="error")
            raise
        self.metrics.tls_reloads.inc(result="ok")
        return result

    async def _do_list(self) -> Listed:
        asked = time.monotonic()
        listed = parse_listing(await self._call_command("list"), self.opensips)
        self._last_listing = (asked, listed)
        return listed

    async def reload(self) -> Any:
        return await self._reload()

    async def tls_reload(self) -> Any:
        """Re-read the TLS domains: new connections get them, established ones keep theirs."""
        return await self._tls_reload()

    async def listing(self, since: float | None = None) -> Listed:
        """The pod's sockets. `since` (monotonic time): a listing asked for at or after it will do, so that
        passes that change nothing share one (a thousand resyncs a minute need not each ask for a
        thousand sockets); None: one asked for from now on (coalesced with others asking)."""
        last = self._last_listing
        if since is not None and last is not None and last[0] >= since:
            return last[1]
        return await self._listing()

    async def discover(self) -> None:
        """Static sockets and capacity, asked once per process (they only change with a restart)."""
        if self.static is not None:
            return
        static: list[str] = []
        try:
            sockets = await self._call("list_sockets")
            self.opensips = False
            for item in sockets if isinstance(sockets, list) else []:
                if isinstance(item, Mapping) and item.get("kind") == "static" and item.get("socket"):
                    static.append(str(item["socket"]))
        except MIError as exc:
            if exc.code != METHOD_NOT_FOUND:
                raise Unreachable(str(exc)) from exc
            self.opensips = True
        try:
            cap = await self._call("sockets_capacity")
            if isinstance(cap, Mapping) and isinstance(cap.get("max_sockets"), int):
                self.capacity = int(cap["max_sockets"])
        except MIError as exc:
            if exc.code != METHOD_NOT_FOUND:
                raise Unreachable(str(exc)) from exc
        self.static = static


class Fleet:
    """Ready proxy pods, kept current from the pod watch. `epoch` moves whenever the set changes."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.client = MIClient(settings)
        self.pods: dict[str, ProxyPod] = {}
        self.epoch = 0
        self._listeners: list[Callable[[], None]] = []
        self._discovery: Coalesced[None] = Coalesced(self.discover_all)
        self._background: set[asyncio.Task[None]] = set()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener` is called whenever the set of ready pods changes."""
        self._listeners.append(listener)

    def observe(
        self,
        name: str,
        uid: str,
        ip: str | None,
        ready: bool,
        mi_port: int | None = None,
        node: str | None = None,
    ) -> None:
        current = self.pods.get(name)
        if not ready or not ip:
            if current is not None:
                del self.pods[name]
                self._bump(f"proxy pod {name} is no longer ready")
            return
        if current is not None and (current.uid, current.ip, current.mi_port) == (uid, ip, mi_port):
            current.node = node or current.node  # spec.nodeName only ever goes from unset to set
            return
        # New pod, the same pod restarted, or its MI moved: forget what the old process said.
        self.pods[name] = ProxyPod(
            name=name, uid=uid, ip=ip, client=self.client, metrics=self.metrics, mi_port=mi_port, node=node
        )
        port = mi_port or self.settings.mi_port
        self._bump(f"proxy pod {name} is ready at {ip}, MI port {port}")

    def forget(self, name: str) -> None:
        if self.pods.pop(name, None) is not None:
            self._bump(f"proxy pod {name} is gone")

    def _bump(self, why: str) -> None:
        log.info("proxy fleet changed: %s", why)
        self.epoch += 1
        for listener in self._listeners:
            listener()

    def ready(self) -> list[ProxyPod]:
        return sorted(self.pods.values(), key=lambda p: p.name)

    async def discover_all(self) -> None:
        async def one(pod: ProxyPod) -> None:
            try:
                await pod.discover()
            except Unreachable as exc:
                log.debug("cannot discover %s: %s", pod.name, exc)

        await asyncio.gather(*(one(p) for p in self.ready()))

    def discover_soon(self) -> None:
        """Discover new pods in the background (coalesced: a pod seen during a run gets the next run): the
        webhook answers on every replica, leader or not, and judges static sockets and capacity from what
        discovery learnt."""
        task = asyncio.get_running_loop().create_task(self._discovery())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def capacity(self) -> int | None:
        """The smallest max_sockets of the fleet; None when no pod says (OpenSIPS: not enforced)."""
        caps = [p.capacity for p in self.pods.values() if p.capacity is not None]
        return min(caps) if caps else None

    def static_sockets(self) -> list[tuple[str, str]]:
        return [(p.name, s) for p in self.ready() for s in p.static or ()]

    async def reload_all(self, tls: bool = False) -> dict[str, str]:
        """Reload every ready pod concurrently, and with `tls` then its TLS domains (after rows were removed:
        the socket goes before its certificate); pod -> error for those that failed."""
        errors: dict[str, str] = {}

        async def one(pod: ProxyPod) -> None:
            try:
                await pod.reload()
                if tls:
                    await pod.tls_reload()
            except (Unreachable, MIError) as exc:
                errors[pod.name] = str(exc)

        await asyncio.gather(*(one(p) for p in self.ready()))
        return errors

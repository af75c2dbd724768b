"""What the MI listens with, from the config: the token, the TLS files, and the one or two HTTP listeners.

Who gets in, by `mi.tls` (certificate and key), `mi.tls.client_ca` and `mi.token_file`:

| tls | client_ca | token | the MI is |
|---|---|---|---|
| - | - | - | plain HTTP, open to whoever reaches it (local use) |
| - | - | yes | plain HTTP, every call with `Authorization: Bearer` (OpenSIPS-style clients) |
| yes | - | yes | HTTPS, every call with the token (the client checks the proxy's certificate) |
| yes | - | - | HTTPS, open (encrypted, but anyone who reaches it may call it) |
| yes | yes | - | mutual TLS: only a client with a certificate signed by client_ca completes the handshake |
| yes | yes | yes | mutual TLS and the token, both required |

With `metrics.listen`, /metrics, /healthz and /readyz are served there over plain HTTP and the MI listener
serves only JSON-RPC; without it the MI listener serves them too (and with mutual TLS, a probe would then need
a client certificate)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from sipproxy.supervisor.config import Config, ConfigError
from sipproxy.supervisor.mi.rpc import Method
from sipproxy.supervisor.mi.server import make_app, serve
from sipproxy.supervisor.mi.tls import ServerTLS
from sipproxy.supervisor.mi.token import load_token

MI, METRICS = "mi", "metrics"  # the roles handover.py names them by
LISTEN_BACKLOG = 128


@dataclass
class MiAccess:
    token: str | None
    tls: ServerTLS | None


def load_access(config: Config) -> MiAccess:
    """The token and the TLS context, read at start-up; a file that cannot be used is a config error
    naming its key."""
    mi = config.mi
    try:
        token = load_token(mi.token_file)
    except (OSError, ValueError) as exc:
        raise ConfigError("mi.token_file", str(exc)) from None
    tls = None
    if mi.tls is not None:
        for key, path in (
            ("certificate", mi.tls.certificate),
            ("private_key", mi.tls.private_key),
            ("client_ca", mi.tls.client_ca),
        ):
            if path is not None:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise ConfigError(f"mi.tls.{key}", f"cannot read {path}: {exc.strerror}") from None
        # Each file loaded on its own first, so that the error names the key to fix.
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.load_cert_chain(mi.tls.certificate, mi.tls.private_key)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                "mi.tls.certificate", f"{mi.tls.certificate} with mi.tls.private_key does not load: {exc}"
            ) from None
        if mi.tls.client_ca is not None:
            try:
                probe.load_verify_locations(cafile=mi.tls.client_ca)
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError("mi.tls.client_ca", f"{mi.tls.client_ca} does not load: {exc}") from None
        try:
            tls = ServerTLS(mi.tls)
        except (OSError, ssl.SSLError, ValueError) as exc:  # the files changed meanwhile
            raise ConfigError("mi.tls", f"does not load: {exc}") from None
    return MiAccess(token, tls)


def bind_listening(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets on every address `host` resolves to, as asyncio's create_server binds them; the
    proxy holds them itself so that it can hand them to its successor (handover.py)."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        for family, kind, proto, _name, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class MiListeners:
    """The MI listener, and the metrics listener when configured: started, stopped when a successor takes
    their ports over (handover.py), and started again if it dies."""

    def __init__(
        self,
        config: Config,
        access: MiAccess,
        methods: Mapping[str, Method],
        ready: Callable[[], bool],
        metrics: Callable[[], Awaitable[str]],
    ) -> None:
        self.config = config
        self.access = access
        separate = config.metrics is not None
        self.apps: dict[str, tuple[web.Application, tuple[str, int], ssl.SSLContext | None]] = {
            MI: (
                make_app(config.mi.root, methods, access.token, ready, metrics, probes=not separate),
                (config.mi.listen_host, config.mi.listen_port),
                access.tls.context if access.tls else None,
            )
        }
        if config.metrics is not None:
            self.apps[METRICS] = (
                make_app(config.mi.root, methods, access.token, ready, metrics, rpc=False),
                (config.metrics.listen_host, config.metrics.listen_port),
                None,
            )
        self.runners: list[web.AppRunner] = []
        # While running: each listener's configured address and its listening sockets.
        self.sockets: dict[str, tuple[tuple[str, int], list[socket.socket]]] = {}

    async def start(
        self, inherited: Callable[[str, tuple[str, int]], list[socket.socket]] = lambda role, listen: []
    ) -> None:
        """Listen (on the sockets `inherited` gives for a role and address, else bound here). OSError (a bind)
        names the key in its message; whatever was started is stopped first."""
        try:
            for role, (app, listen, ssl_context) in self.apps.items():
                key = "mi.listen" if role == MI else "metrics.listen"
                try:
                    socks = inherited(role, listen) or bind_listening(*listen)
                except OSError as exc:
                    raise OSError(f"{key} {listen[0]}:{listen[1]}: {exc}") from exc
                self.sockets[role] = (listen, socks)
                self.runners.append(await serve(app, listen[0], listen[1], ssl_context, socks))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        runners, self.runners = self.runners, []
        for runner in runners:
            await runner.cleanup()
        for _listen, socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets.clear()

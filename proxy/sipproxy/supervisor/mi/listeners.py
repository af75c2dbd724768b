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

import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from sipproxy.supervisor.config import Config, ConfigError
from sipproxy.supervisor.mi.rpc import Method
from sipproxy.supervisor.mi.server import make_app, serve
from sipproxy.supervisor.mi.tls import ServerTLS
from sipproxy.supervisor.mi.token import load_token


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


async def start_listeners(
    config: Config,
    access: MiAccess,
    methods: Mapping[str, Method],
    ready: Callable[[], bool],
    metrics: Callable[[], Awaitable[str]],
) -> list[web.AppRunner]:
    """The MI listener, and the metrics listener when configured. OSError (a bind) names the key in its
    message; whatever was started is stopped first."""
    separate = config.metrics is not None
    mi_app = make_app(config.mi.root, methods, access.token, ready, metrics, probes=not separate)
    runners: list[web.AppRunner] = []
    try:
        try:
            runners.append(
                await serve(
                    mi_app,
                    config.mi.listen_host,
                    config.mi.listen_port,
                    access.tls.context if access.tls else None,
                )
            )
        except OSError as exc:
            raise OSError(f"mi.listen {config.mi.listen_host}:{config.mi.listen_port}: {exc}") from exc
        if config.metrics is not None:
            m = config.metrics
            probes_app = make_app(config.mi.root, methods, access.token, ready, metrics, rpc=False)
            try:
                runners.append(await serve(probes_app, m.listen_host, m.listen_port, None))
            except OSError as exc:
                raise OSError(f"metrics.listen {m.listen_host}:{m.listen_port}: {exc}") from exc
    except OSError:
        for runner in runners:
            await runner.cleanup()
        raise
    return runners

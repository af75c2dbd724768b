"""Operator settings: every one a command-line flag and an environment variable (flag wins)."""

from __future__ import annotations

import argparse
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sipoperator.lease import Timing, timing_problem
from sipoperator.mi_tls import client_context

SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_PROXY_SELECTOR = "app.kubernetes.io/name=sipsockets,app.kubernetes.io/component=proxy"
DEFAULT_MI_TLS_SERVER_NAME = "sipsockets-proxy"
DEFAULT_LEASE_NAME = "sipsockets-operator"  # the chart's name for release "sipsockets"


_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the flag and the environment variable."""


@dataclass(frozen=True)
class Settings:
    namespace: str
    db_url: str
    table_name: str = "sockets"
    tls_table_name: str = "tls_mgm"
    proxy_selector: str = DEFAULT_PROXY_SELECTOR
    mi_port: int = 8888
    mi_root: str = "mi"
    mi_token_file: str | None = None
    # With a CA the MI is called over HTTPS, the proxies' certificate checked against it and the server name;
    # with a certificate and key too, the operator presents them (mutual TLS).
    mi_tls_ca_file: str | None = None
    mi_tls_cert_file: str | None = None
    mi_tls_key_file: str | None = None
    mi_tls_server_name: str = DEFAULT_MI_TLS_SERVER_NAME
    resync_period: float = 60.0
    mi_timeout: float = 5.0
    webhook_listen: str = ""
    webhook_cert_file: str | None = None
    webhook_key_file: str | None = None
    health_listen: str = "0.0.0.0:8080"
    log_format: str = "text"
    lease_name: str = DEFAULT_LEASE_NAME
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @property
    def timing(self) -> Timing:
        return Timing(self.lease_duration, self.renew_deadline, self.retry_period)

    @property
    def selector_labels(self) -> dict[str, str]:
        return parse_selector(self.proxy_selector)

    def mi_token(self) -> str | None:
        """Read at each use so a rotated Secret is picked up without a restart."""
        if not self.mi_token_file:
            return None
        return Path(self.mi_token_file).read_text().strip() or None


# (flag, env var, help)
_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--namespace", "SIPSOCKETS_NAMESPACE", "namespace to serve (default: the pod's own, else 'default')"),
    ("--db-url", "SIPSOCKETS_DB_URL", "OpenSIPS-style database URL, e.g. postgres://u:p@host/db"),
    ("--db-url-file", "SIPSOCKETS_DB_URL_FILE", "file holding the database URL (e.g. a mounted Secret)"),
    ("--table-name", "SIPSOCKETS_TABLE_NAME", "sockets table name (default: sockets)"),
    ("--tls-table-name", "SIPSOCKETS_TLS_TABLE_NAME", "TLS domains table name (default: tls_mgm)"),
    ("--proxy-selector", "SIPSOCKETS_PROXY_SELECTOR", "label selector of the proxy pods (k=v,k2=v2)"),
    ("--mi-port", "SIPSOCKETS_MI_PORT", "proxy MI port (8888); annotation sipsockets.io/mi-port wins"),
    ("--mi-root", "SIPSOCKETS_MI_ROOT", "proxy MI path (default: mi)"),
    ("--mi-token-file", "SIPSOCKETS_MI_TOKEN_FILE", "file holding the MI bearer token"),
    (
        "--mi-tls-ca-file",
        "SIPSOCKETS_MI_TLS_CA_FILE",
        "CA of the proxies' MI certificate: call the MI over HTTPS",
    ),
    ("--mi-tls-cert-file", "SIPSOCKETS_MI_TLS_CERT_FILE", "the operator's MI client certificate (PEM)"),
    ("--mi-tls-key-file", "SIPSOCKETS_MI_TLS_KEY_FILE", "the key of that certificate (PEM)"),
    (
        "--mi-tls-server-name",
        "SIPSOCKETS_MI_TLS_SERVER_NAME",
        f"name the proxies' MI certificate must carry ({DEFAULT_MI_TLS_SERVER_NAME})",
    ),
    ("--resync-period", "SIPSOCKETS_RESYNC_PERIOD", "seconds between drift checks of each SipSocket (60)"),
    ("--mi-timeout", "SIPSOCKETS_MI_TIMEOUT", "seconds to wait for one MI call (5)"),
    ("--webhook-listen", "SIPSOCKETS_WEBHOOK_LISTEN", "host:port of the admission webhook (empty: off)"),
    ("--webhook-cert-file", "SIPSOCKETS_WEBHOOK_CERT_FILE", "webhook TLS certificate (PEM)"),
    ("--webhook-key-file", "SIPSOCKETS_WEBHOOK_KEY_FILE", "webhook TLS private key (PEM)"),
    ("--health-listen", "SIPSOCKETS_HEALTH_LISTEN", "host:port for /healthz and /metrics (0.0.0.0:8080)"),
    ("--log-format", "SIPSOCKETS_LOG_FORMAT", "text or json"),
    (
        "--lease-name",
        "SIPSOCKETS_LEASE_NAME",
        f"leader-election Lease in the namespace; only its holder writes ({DEFAULT_LEASE_NAME})",
    ),
    ("--lease-duration", "SIPSOCKETS_LEASE_DURATION", "seconds before a silent leader's Lease is taken (15)"),
    ("--renew-deadline", "SIPSOCKETS_RENEW_DEADLINE", "seconds a leader writes without a renew (10)"),
    ("--retry-period", "SIPSOCKETS_RETRY_PERIOD", "seconds between looks at the Lease (2)"),
)


def parse_selector(text: str) -> dict[str, str]:
    """Equality-based selector `k=v,k2=v2` (also `k==v`)."""
    labels: dict[str, str] = {}
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        key, sep, value = part.replace("==", "=").partition("=")
        if not sep or not key.strip() or "!" in key:
            raise SettingsError(
                f"--proxy-selector/SIPSOCKETS_PROXY_SELECTOR: {part!r} is not key=value "
                "(only equality selectors are supported)"
            )
        labels[key.strip()] = value.strip()
    if not labels:
        raise SettingsError("--proxy-selector/SIPSOCKETS_PROXY_SELECTOR: empty selector")
    return labels


def split_listen(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{what} {text!r}: expected host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _default_namespace() -> str:
    try:
        return SERVICEACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def _number(raw: str, flag: str, env: str, kind: type[int] | type[float], minimum: float) -> float:
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{flag}/{env}: {raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{flag}/{env}: {raw!r} must be at least {minimum:g}")
    return value


def mi_tls_settings(
    ca: str | None, cert: str | None, key: str | None
) -> tuple[str | None, str | None, str | None]:
    """The MI client's TLS files, checked once at start so that a wrong mount stops the operator with a
    message naming the setting (they are read again on every change afterwards)."""
    if bool(cert) != bool(key):
        raise SettingsError(
            "--mi-tls-cert-file/SIPSOCKETS_MI_TLS_CERT_FILE and --mi-tls-key-file/SIPSOCKETS_MI_TLS_KEY_FILE "
            "go together"
        )
    if cert and not ca:
        raise SettingsError(
            "--mi-tls-cert-file needs --mi-tls-ca-file/SIPSOCKETS_MI_TLS_CA_FILE (the CA of the proxies' "
            "certificate)"
        )
    if not ca:
        return None, None, None
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise SettingsError(f"--mi-tls-ca-file/SIPSOCKETS_MI_TLS_CA_FILE: {ca}: {exc}") from None
    try:
        client_context(ca, cert, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise SettingsError(
            f"--mi-tls-cert-file/SIPSOCKETS_MI_TLS_CERT_FILE with --mi-tls-key-file: {cert}, {key}: {exc}"
        ) from None
    return ca, cert, key


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="sipsockets-operator",
        description="Programs SipSocket resources into the proxy database and every proxy pod.",
    )
    for flag, var, text in _OPTIONS:
        parser.add_argument(flag, dest=flag[2:].replace("-", "_"), default=None, help=f"{text} [env {var}]")
    args = vars(parser.parse_args(argv))

    def get(flag: str) -> str | None:
        value: str | None = args[flag[2:].replace("-", "_")]
        if value is None:
            var = next(v for f, v, _ in _OPTIONS if f == flag)
            value = env.get(var) or None
        return value

    db_url = get("--db-url")
    db_url_file = get("--db-url-file")
    if db_url_file and not db_url:
        try:
            db_url = Path(db_url_file).read_text().strip()
        except OSError as exc:
            raise SettingsError(
                f"--db-url-file/SIPSOCKETS_DB_URL_FILE: cannot read {db_url_file}: {exc}"
            ) from exc
    if not db_url:
        raise SettingsError("a database URL is required: --db-url/SIPSOCKETS_DB_URL or --db-url-file")

    log_format = get("--log-format") or "text"
    if log_format not in ("text", "json"):
        raise SettingsError(f"--log-format/SIPSOCKETS_LOG_FORMAT: {log_format!r} is not text or json")
    webhook_listen = get("--webhook-listen") or ""
    if webhook_listen:
        split_listen(webhook_listen, "--webhook-listen/SIPSOCKETS_WEBHOOK_LISTEN")
        if not get("--webhook-cert-file") or not get("--webhook-key-file"):
            raise SettingsError("--webhook-listen needs --webhook-cert-file and --webhook-key-file")
    health_listen = get("--health-listen") or "0.0.0.0:8080"
    split_listen(health_listen, "--health-listen/SIPSOCKETS_HEALTH_LISTEN")
    selector = get("--proxy-selector") or DEFAULT_PROXY_SELECTOR
    parse_selector(selector)
    mi_root = (get("--mi-root") or "mi").strip("/")
    mi_tls = mi_tls_settings(get("--mi-tls-ca-file"), get("--mi-tls-cert-file"), get("--mi-tls-key-file"))
    lease_name = get("--lease-name") or DEFAULT_LEASE_NAME
    if not _DNS_SUBDOMAIN.fullmatch(lease_name):
        raise SettingsError(
            f"--lease-name/SIPSOCKETS_LEASE_NAME: {lease_name!r} is not a Kubernetes object name "
            "(lower case letters, digits, '-' and '.', at most 253)"
        )

    settings = Settings(
        namespace=get("--namespace") or _default_namespace(),
        db_url=db_url,
        table_name=get("--table-name") or "sockets",
        tls_table_name=get("--tls-table-name") or "tls_mgm",
        proxy_selector=selector,
        mi_port=int(_number(get("--mi-port") or "8888", "--mi-port", "SIPSOCKETS_MI_PORT", int, 1)),
        mi_root=mi_root,
        mi_token_file=get("--mi-token-file"),
        mi_tls_ca_file=mi_tls[0],
        mi_tls_cert_file=mi_tls[1],
        mi_tls_key_file=mi_tls[2],
        mi_tls_server_name=get("--mi-tls-server-name") or DEFAULT_MI_TLS_SERVER_NAME,
        resync_period=_number(
            get("--resync-period") or "60", "--resync-period", "SIPSOCKETS_RESYNC_PERIOD", float, 1
        ),
        mi_timeout=_number(get("--mi-timeout") or "5", "--mi-timeout", "SIPSOCKETS_MI_TIMEOUT", float, 0.1),
        webhook_listen=webhook_listen,
        webhook_cert_file=get("--webhook-cert-file"),
        webhook_key_file=get("--webhook-key-file"),
        health_listen=health_listen,
        log_format=log_format,
        lease_name=lease_name,
        lease_duration=_number(
            get("--lease-duration") or "15", "--lease-duration", "SIPSOCKETS_LEASE_DURATION", float, 1
        ),
        renew_deadline=_number(
            get("--renew-deadline") or "10", "--renew-deadline", "SIPSOCKETS_RENEW_DEADLINE", float, 0.1
        ),
        retry_period=_number(
            get("--retry-period") or "2", "--retry-period", "SIPSOCKETS_RETRY_PERIOD", float, 0.05
        ),
    )
    if settings.mi_port > 65535:
        raise SettingsError("--mi-port/SIPSOCKETS_MI_PORT: must be at most 65535")
    problem = timing_problem(settings.timing)
    if problem:
        raise SettingsError(
            "--lease-duration, --renew-deadline, --retry-period (SIPSOCKETS_LEASE_DURATION, "
            f"SIPSOCKETS_RENEW_DEADLINE, SIPSOCKETS_RETRY_PERIOD): {problem}"
        )
    return settings

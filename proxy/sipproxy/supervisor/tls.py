"""TLS domains in the supervisor: read from the config's static domains and the `tls_mgm` table, checked by
building their contexts, handed to the workers as one generation (control.TlsDomains), listed by tls_list.

A generation is what new TLS connections use from the moment every worker applied it; a connection keeps the
domain it started with. Static domains come first (their files are read again at every reload, so a renewed
certificate file is picked up), then the table's rows in id order; a table row with the name and type of a
static domain is refused, as OpenSIPS refuses a second domain of one name. The checks are the workers' own
(server_context, client_context): a domain listed as loaded is one every worker can build."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from sipproxy.shared.socketspec import SocketSpec
from sipproxy.shared.tls_domains import (
    ANY,
    SERVER_DOMAIN,
    TlsDomain,
    TlsDomainError,
    address_key,
    candidates,
    client_context,
    parse_domains,
    server_context,
)
from sipproxy.shared.tls_table import read_domains
from sipproxy.supervisor.certinfo import count_certificates, describe_pem
from sipproxy.supervisor.config import StaticTlsDomain, TlsMgm

TLS_SOCKETS = ("tls", "wss")


class TlsReloadError(Exception):
    """The table could not be read: nothing was changed."""


@dataclass(frozen=True)
class DomainEntry:
    """One domain of a generation: loaded (`error` None) or failed with the reason."""

    name: str
    kind: str  # "server" | "client"
    source: str  # "config" | "table"
    domain: TlsDomain | None  # None when the row did not even parse
    error: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class TlsGeneration:
    number: int
    entries: tuple[DomainEntry, ...] = ()

    @property
    def domains(self) -> list[TlsDomain]:
        """The loaded domains, in selection order: what the workers get."""
        return [e.domain for e in self.entries if e.error is None and e.domain is not None]


def static_rows(domains: Sequence[StaticTlsDomain]) -> tuple[list[dict[str, Any]], list[TlsDomainError]]:
    """The config's domains as tls_mgm rows, their PEM files read now; a domain whose file cannot be read
    is an error naming it."""
    rows: list[dict[str, Any]] = []
    errors: list[TlsDomainError] = []
    for d in domains:
        row: dict[str, Any] = {
            "domain": d.domain,
            "type": d.type,
            "match_ip_address": d.match_ip_address,
            "match_sip_domain": d.match_sip_domain,
            "method": d.method,
            "verify_cert": int(d.verify_cert),
            "require_cert": int(d.require_cert),
            "ca_dir": d.ca_dir,
            "cipher_list": d.cipher_list,
            "ec_curve": d.ec_curve,
        }
        try:
            for column in ("certificate", "private_key", "ca_list", "dh_params"):
                path = getattr(d, column)
                if path is not None:
                    try:
                        with open(path, "rb") as f:
                            row[column] = f.read()
                    except OSError as exc:
                        raise TlsDomainError(
                            d.domain, f"{column}: cannot read {path}: {exc.strerror}"
                        ) from None
        except TlsDomainError as exc:
            errors.append(exc)
            continue
        rows.append(row)
    return rows, errors


def check_domain(domain: TlsDomain) -> str | None:
    """None when every worker can build the domain's context, else why not."""
    try:
        if domain.type == SERVER_DOMAIN:
            server_context(domain)
        else:
            client_context(domain, check_hostname=True)
    except TlsDomainError as exc:
        return exc.problem
    return None


def build_generation(
    number: int,
    static: tuple[list[TlsDomain], list[TlsDomainError]],
    table: tuple[list[TlsDomain], list[TlsDomainError]],
) -> TlsGeneration:
    """The generation made of the static domains and the table's, each checked (CPU: run in a thread)."""
    entries: list[DomainEntry] = []
    seen: set[tuple[str, int]] = set()
    for source, (domains, errors) in (("config", static), ("table", table)):
        for error in errors:
            entries.append(DomainEntry(error.domain, "unknown", source, None, error.problem))
        for domain in domains:
            problem: str | None
            if (domain.name, domain.type) in seen:
                problem = f"a {domain.kind} domain of this name is already defined"
                entries.append(DomainEntry(domain.name, domain.kind, source, domain, problem, domain.id))
                continue
            seen.add((domain.name, domain.type))
            problem = check_domain(domain)
            entries.append(DomainEntry(domain.name, domain.kind, source, domain, problem, domain.id))
    return TlsGeneration(number, tuple(entries))


async def read_sources(
    config: TlsMgm, engine: AsyncEngine | None
) -> tuple[tuple[list[TlsDomain], list[TlsDomainError]], tuple[list[TlsDomain], list[TlsDomainError]]]:
    """(static domains, table domains), each parsed with its errors; raises TlsReloadError when the table
    cannot be read."""
    rows, file_errors = static_rows(config.domains)
    static_domains, static_errors = parse_domains(rows)
    table: tuple[list[TlsDomain], list[TlsDomainError]] = ([], [])
    if engine is not None:
        try:
            table = await read_domains(engine, config.table_name)
        except Exception as exc:
            raise TlsReloadError(f"cannot read table {config.table_name}: {exc}") from exc
    return (static_domains, file_errors + static_errors), table


# --- what the MI shows ---------------------------------------------------------------------------------


def _filters(values: Iterable[str]) -> list[str]:
    return list(values)


def tls_list_entry(entry: DomainEntry) -> dict[str, Any]:
    """One domain as `tls_list` shows it: OpenSIPS's fields first, then ours; never a private key."""
    d = entry.domain
    out: dict[str, Any] = {"name": entry.name}
    if d is not None:
        out["type"] = "TLS_DOMAIN_SRV" if d.type == SERVER_DOMAIN else "TLS_DOMAIN_CLI"
        out["IP ADDRESS FILTERS"] = _filters(d.match_addresses)
        out["SIP DOMAIN FILTERS"] = _filters(d.match_domains)
        out["METHOD"] = d.method
        out["VERIFY_CERT"] = d.verify_cert
        out["REQ_CLI_CERT"] = d.require_cert
        out["CRL_CHECKALL"] = d.crl_check_all
        out["CRL_DIR"] = d.crl_dir or ""
        out["CA_DIR"] = d.ca_dir or ""
        out["CIPHER_LIST"] = d.cipher_list or ""
        out["EC_CURVE"] = d.ec_curve or ""
    # ours
    if entry.id is not None:
        out["id"] = entry.id
    out["domain"] = entry.name
    out["kind"] = entry.kind
    if d is not None:
        out["match_ip_address"] = ",".join(d.match_addresses)
        out["match_sip_domain"] = ",".join(d.match_domains)
    out["source"] = entry.source
    out["state"] = "loaded" if entry.error is None else "failed"
    if entry.error is not None:
        out["error"] = entry.error
    if d is not None:
        out.update(describe_pem(d.certificate))
        out["ca_certificates"] = count_certificates(d.ca_list)
    return out


def tls_list(generation: TlsGeneration) -> dict[str, Any]:
    """OpenSIPS's shape, `{"Domains": [...]}`: client domains, then server domains, each in load order."""
    clients = [e for e in generation.entries if e.kind != "server"]
    servers = [e for e in generation.entries if e.kind == "server"]
    return {"generation": generation.number, "Domains": [tls_list_entry(e) for e in clients + servers]}


def reload_result(generation: TlsGeneration) -> dict[str, Any]:
    loaded = [e for e in generation.entries if e.error is None]
    failed = [e for e in generation.entries if e.error is not None]
    return {
        "generation": generation.number,
        "loaded": [{"domain": e.name, "kind": e.kind, "source": e.source} for e in loaded],
        "failed": [{"domain": e.name, "kind": e.kind, "source": e.source, "error": e.error} for e in failed],
    }


def socket_warning(spec: SocketSpec, domains: Sequence[TlsDomain]) -> str | None:
    """Why every TLS handshake on this socket will fail, when it will: no loaded server domain lists its
    address (or `*`)."""
    if spec.proto not in TLS_SOCKETS:
        return None
    if spec.host in ("0.0.0.0", "::"):
        if any(d.type == SERVER_DOMAIN for d in domains):
            return None  # the local address of each connection decides
    elif candidates(domains, SERVER_DOMAIN, spec.host, spec.port):
        return None
    return (
        f"no TLS server domain matches {address_key(spec.host, spec.port)} (match_ip_address, or {ANY}): "
        "connections to this socket fail their handshake"
    )

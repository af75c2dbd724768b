"""TLS domains as OpenSIPS 3.6's `tls_mgm` keeps them in database mode, and the SSL contexts made of them.

The table itself (its definition, `init_tls_mgm`, `read_domains`) is in `tls_table.py`: this module does not
import the database layer, so that the workers, which build the contexts, do not load it.

A row. `TlsDomain.from_row(row)` parses one row (a mapping of column name to value; PEM columns may be
bytes, memoryview or text) into a `TlsDomain`, or raises `TlsDomainError` naming the domain and what is
wrong: no name, a type other than 1 (client) or 2 (server), a `match_ip_address` entry that is not
`IP:port` or `*`, an unknown `method`. `parse_domains(rows)` parses them all: the domains, and an error for
each row left out (also a second row with the same name and type, as OpenSIPS refuses it). Defaults follow
OpenSIPS: a NULL or empty match list means `*`; an address list starting with `*` is `*`; NULL
`verify_cert`/`require_cert` mean 1; NULL `method` means SSLv23 (any version). The private key never
appears in the record's repr.

Selection, as OpenSIPS does it (tls_mgm's matching map).
- `select_server_domain(domains, local_ip, local_port, sni)`: the server domains listing `local_ip:port`;
  only when none does, those listing `*`. Among those, the first whose `match_sip_domain` pattern matches
  the SNI (`none` stands for a client that sent no SNI), trying names without `*` first, then patterns
  with a `*`, then `*` alone; ties go to the order of `domains` (read_domains orders by id).
- `select_client_domain(domains, next_hop_host, (ip, port))`: the same over client domains, with the
  destination address and the next hop's host (a name, or the IP as written) in place of SNI.
Both return a `DomainMatch`: the domain, or None and a sentence saying why. Differences, **ours**: names
match case-insensitively (OpenSIPS's fnmatch is case-sensitive, DNS names are not); ties are broken
by id, where OpenSIPS's order depends on how it loaded the rows.

Contexts. `server_context(domain)` and `client_context(domain, check_hostname)` build `ssl.SSLContext`s,
raising `TlsDomainError` for a certificate or key that is not PEM, an encrypted key, a key that does not
match its certificate, a bad CA list, cipher list, curve or DH parameters, or a domain asking to verify
client certificates with nothing to verify them against. Server: certificate chain and key; verify_cert 0
-> CERT_NONE, verify_cert 1 -> CERT_OPTIONAL, with require_cert 1 -> CERT_REQUIRED; the CA list for
client certificates. Client: verify_cert 1 -> the CA list (the system's when the row has none) and
`check_hostname` as asked (pass True when the next hop is a name and give it as server_hostname);
the certificate and key when the row has them (client authentication). `crl_dir` and `crl_check_all` are
refused for now (silently not checking revocation would be worse).

Per connection. `ServerContexts(domains)` builds every server domain once (one generation: a tls_reload
builds a new one; established connections keep theirs) and gives, with `for_address(ip, port)`, the
context to accept a connection on that local address with: its `sni_callback` switches each handshake to
the domain SNI selects and fails the handshake (unrecognized_name) when none. After the handshake,
`check_peer(ssl_object)` must be called: OpenSSL keeps the verify mode of the context a connection started
with when SNI switches it to another, so when the domains of one address differ in client authentication,
the connection starts with CERT_OPTIONAL and a domain that requires a client certificate is enforced here.
`ClientContexts(domains).for_next_hop(host, ip, port)` gives the context to connect with, or raises
`NoTlsDomain` (no client domain matches: OpenSIPS fails such a connection too).
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CLIENT_DOMAIN = 1
SERVER_DOMAIN = 2
ANY = "*"
NO_SNI = "none"  # what OpenSIPS matches match_sip_domain against when a client sent no SNI

# ------------------------------------------------------------------------------------------ the rows


class TlsDomainError(ValueError):
    """A TLS domain that cannot be used; the message names the domain and the problem."""

    def __init__(self, domain: str, problem: str) -> None:
        super().__init__(f"TLS domain {domain!r}: {problem}")
        self.domain = domain
        self.problem = problem


class NoTlsDomain(LookupError):
    """No domain matches; the message says what was looked for and among which domains."""


@dataclass(frozen=True)
class TlsDomain:
    name: str
    type: int  # CLIENT_DOMAIN (1) or SERVER_DOMAIN (2)
    match_addresses: tuple[str, ...] = (ANY,)  # "IP:port" ("[v6]:port"), canonical; or ("*",)
    match_domains: tuple[str, ...] = (ANY,)  # lowercase patterns (fnmatch), or ("*",)
    method: str = "SSLv23"
    verify_cert: bool = True
    require_cert: bool = True
    certificate: bytes | None = None  # PEM: the certificate, then any intermediates
    private_key: bytes | None = field(default=None, repr=False)  # PEM
    ca_list: bytes | None = None  # PEM bundle
    ca_dir: str | None = None
    crl_check_all: bool = False
    crl_dir: str | None = None
    cipher_list: str | None = None
    dh_params: bytes | None = field(default=None, repr=False)
    ec_curve: str | None = None
    id: int | None = None

    @property
    def kind(self) -> str:
        return "server" if self.type == SERVER_DOMAIN else "client"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TlsDomain:
        name = _str(row.get("domain")) or ""
        if not name:
            raise TlsDomainError(f"id {row.get('id')}", "the domain column is empty")
        kind = row.get("type")
        if kind is None:
            kind = CLIENT_DOMAIN
        if kind not in (CLIENT_DOMAIN, SERVER_DOMAIN):
            raise TlsDomainError(name, f"type must be 1 (client) or 2 (server), not {kind!r}")
        method = _str(row.get("method")) or "SSLv23"
        tls_versions(name, method)  # refuses an unknown method now rather than at the first connection
        raw_id = row.get("id")
        return cls(
            name=name,
            type=int(kind),
            match_addresses=_match_addresses(name, _str(row.get("match_ip_address"))),
            match_domains=_match_domains(_str(row.get("match_sip_domain"))),
            method=method,
            verify_cert=_flag(row.get("verify_cert"), True),
            require_cert=_flag(row.get("require_cert"), True),
            certificate=_bytes(row.get("certificate")),
            private_key=_bytes(row.get("private_key")),
            ca_list=_bytes(row.get("ca_list")),
            ca_dir=_str(row.get("ca_dir")) or None,
            crl_check_all=_flag(row.get("crl_check_all"), False),
            crl_dir=_str(row.get("crl_dir")) or None,
            cipher_list=_str(row.get("cipher_list")) or None,
            dh_params=_bytes(row.get("dh_params")),
            ec_curve=_str(row.get("ec_curve")) or None,
            id=int(raw_id) if raw_id is not None else None,
        )


def parse_domains(rows: Iterable[Mapping[str, Any]]) -> tuple[list[TlsDomain], list[TlsDomainError]]:
    """The domains of these rows, in order, and an error for each row left out."""
    domains: list[TlsDomain] = []
    errors: list[TlsDomainError] = []
    seen: set[tuple[str, int]] = set()
    for row in rows:
        try:
            domain = TlsDomain.from_row(row)
        except TlsDomainError as exc:
            errors.append(exc)
            continue
        if (domain.name, domain.type) in seen:
            errors.append(
                TlsDomainError(domain.name, f"a {domain.kind} domain of this name is already defined")
            )
            continue
        seen.add((domain.name, domain.type))
        domains.append(domain)
    return domains, errors


def _str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace").strip()
    return str(value).strip()


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("utf-8")
    data = bytes(value)
    return data if data.strip() else None


def _flag(value: Any, default: bool) -> bool:
    if value is None:
        return default
    return bool(int(value))


def address_key(ip: str, port: int) -> str:
    """The canonical `IP:port` spelling used in match_addresses ("[v6]:port" for IPv6)."""
    addr = ipaddress.ip_address(ip.strip("[]"))
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _match_addresses(name: str, value: str | None) -> tuple[str, ...]:
    if not value or value.startswith(ANY):
        return (ANY,)
    out: list[str] = []
    for item in value.split(","):
        entry = item.strip()
        host, sep, port = entry.rpartition(":")
        try:
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(entry)
            key = address_key(host, int(port))
        except ValueError:
            raise TlsDomainError(name, f"match_ip_address entry {entry!r} is not IP:port or *") from None
        if key not in out:
            out.append(key)
    return tuple(out)


def _match_domains(value: str | None) -> tuple[str, ...]:
    if not value:
        return (ANY,)
    patterns = [p.strip().lower() for p in value.split(",")]
    return tuple(dict.fromkeys(p for p in patterns if p)) or (ANY,)


_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}


def tls_versions(name: str, method: str) -> tuple[ssl.TLSVersion | None, ssl.TLSVersion | None]:
    """(minimum, maximum) TLS version of an OpenSIPS `method`: SSLv23 (any), one version, or a range
    `TLSv1_2-TLSv1_3` with either end open (`TLSv1_2-`). None means the library's default."""
    if method in ("SSLv23", ""):
        return None, None
    low, dash, high = method.partition("-")
    try:
        if not dash:
            return _VERSIONS[method], _VERSIONS[method]
        return (_VERSIONS[low] if low else None), (_VERSIONS[high] if high else None)
    except KeyError:
        raise TlsDomainError(
            name, f"method {method!r} is not SSLv23, TLSv1, TLSv1_1, TLSv1_2, TLSv1_3 or a range of them"
        ) from None


# ------------------------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class DomainMatch:
    domain: TlsDomain | None
    reason: str = ""  # why there is no domain ("" when there is one)


def select_server_domain(
    domains: Sequence[TlsDomain], local_ip: str, local_port: int, sni: str | None
) -> DomainMatch:
    """The server domain for a connection accepted on local_ip:local_port whose client sent `sni`."""
    where = address_key(local_ip, local_port)
    wanted = sni.lower() if sni else NO_SNI
    match = _select(domains, SERVER_DOMAIN, where, wanted)
    if match is not None:
        return match
    what = f"SNI {sni!r}" if sni else "a client sending no SNI"
    return DomainMatch(
        None, f"no TLS server domain for {what} on {where}{_pool_note(domains, SERVER_DOMAIN, where)}"
    )


def select_client_domain(
    domains: Sequence[TlsDomain], next_hop_host: str, next_hop_ip_port: tuple[str, int]
) -> DomainMatch:
    """The client domain for connecting to next_hop_ip_port, the next hop being named next_hop_host."""
    where = address_key(*next_hop_ip_port)
    match = _select(domains, CLIENT_DOMAIN, where, next_hop_host.lower().strip("[]"))
    if match is not None:
        return match
    return DomainMatch(
        None,
        f"no TLS client domain for {next_hop_host} at {where}{_pool_note(domains, CLIENT_DOMAIN, where)}",
    )


def candidates(domains: Sequence[TlsDomain], kind: int, ip: str, port: int) -> list[TlsDomain]:
    """The domains of `kind` that serve ip:port before SNI is looked at: those listing it, else those
    listing `*` (empty: every connection there fails)."""
    return _pool(domains, kind, address_key(ip, port))


def _pool(domains: Sequence[TlsDomain], kind: int, where: str) -> list[TlsDomain]:
    of_kind = [d for d in domains if d.type == kind]
    exact = [d for d in of_kind if where in d.match_addresses]
    return exact or [d for d in of_kind if ANY in d.match_addresses]


def _select(domains: Sequence[TlsDomain], kind: int, where: str, wanted: str) -> DomainMatch | None:
    entries: list[tuple[int, int, str, TlsDomain]] = []
    for order, domain in enumerate(_pool(domains, kind, where)):
        for pattern in domain.match_domains:
            rank = 2 if pattern == ANY else 1 if ANY in pattern else 0
            entries.append((rank, order, pattern, domain))
    entries.sort(key=lambda e: (e[0], e[1]))
    for _, _, pattern, domain in entries:
        if fnmatch.fnmatchcase(wanted, pattern):
            return DomainMatch(domain)
    return None


def _pool_note(domains: Sequence[TlsDomain], kind: int, where: str) -> str:
    pool = _pool(domains, kind, where)
    if not pool:
        return " (no domain of that type lists this address or *)"
    listed = ", ".join(f"{d.name} [{','.join(d.match_domains)}]" for d in pool)
    return f" (candidates: {listed})"


# ------------------------------------------------------------------------------------------ contexts


def server_context(domain: TlsDomain) -> ssl.SSLContext:
    """The context serving connections for a server domain (see the module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, domain)
    if domain.certificate is None or domain.private_key is None:
        raise TlsDomainError(domain.name, "a server domain needs a certificate and a private_key")
    _load_chain(ctx, domain)
    if domain.verify_cert:
        if domain.ca_list is None and domain.ca_dir is None:
            raise TlsDomainError(
                domain.name,
                "verify_cert is 1 but there is no ca_list (or ca_dir) to verify client certificates "
                "against; set verify_cert and require_cert to 0 for no client authentication",
            )
        _load_cas(ctx, domain)
        ctx.verify_mode = ssl.CERT_REQUIRED if domain.require_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if domain.dh_params is not None:
        dh_params = domain.dh_params
        try:
            _with_private_file(dh_params, ctx.load_dh_params)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TlsDomainError(domain.name, f"dh_params are not usable PEM DH parameters ({exc})") from None
    return ctx


def client_context(domain: TlsDomain, check_hostname: bool) -> ssl.SSLContext:
    """The context connecting to a next hop for a client domain (see the module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _common(ctx, domain)
    if domain.verify_cert:
        if domain.ca_list is None and domain.ca_dir is None:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            _load_cas(ctx, domain)
        ctx.check_hostname = check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if domain.certificate is not None or domain.private_key is not None:
        if domain.certificate is None or domain.private_key is None:
            raise TlsDomainError(domain.name, "a client certificate needs both certificate and private_key")
        _load_chain(ctx, domain)
    return ctx


def _common(ctx: ssl.SSLContext, domain: TlsDomain) -> None:
    if domain.crl_dir is not None or domain.crl_check_all:
        raise TlsDomainError(domain.name, "crl_dir and crl_check_all are not supported")
    low, high = tls_versions(domain.name, domain.method)
    try:
        if low is not None:
            ctx.minimum_version = low
        if high is not None:
            ctx.maximum_version = high
    except (ValueError, ssl.SSLError) as exc:
        raise TlsDomainError(domain.name, f"method {domain.method!r} is not available here ({exc})") from None
    if domain.cipher_list is not None:
        try:
            ctx.set_ciphers(domain.cipher_list)
        except ssl.SSLError:
            raise TlsDomainError(
                domain.name, f"cipher_list {domain.cipher_list!r} selects no cipher"
            ) from None
    if domain.ec_curve is not None:
        try:
            ctx.set_ecdh_curve(domain.ec_curve)
        except (ValueError, ssl.SSLError):
            raise TlsDomainError(domain.name, f"ec_curve {domain.ec_curve!r} is not a known curve") from None


def _load_cas(ctx: ssl.SSLContext, domain: TlsDomain) -> None:
    if domain.ca_list is not None:
        if b"-----BEGIN CERTIFICATE-----" not in domain.ca_list:
            raise TlsDomainError(domain.name, "ca_list holds no PEM certificate")
        try:
            # cadata: CAs load from memory; only certificate chains and keys need a file (below).
            ctx.load_verify_locations(cadata=domain.ca_list.decode("ascii"))
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
            raise TlsDomainError(domain.name, f"ca_list is not a valid PEM bundle ({exc})") from None
    if domain.ca_dir is not None:
        try:
            ctx.load_verify_locations(capath=domain.ca_dir)
        except (ssl.SSLError, OSError) as exc:
            raise TlsDomainError(domain.name, f"ca_dir {domain.ca_dir!r} cannot be used ({exc})") from None


def _refuse_password() -> bytes:
    raise TlsDomainError("?", "private_key is encrypted")


def _load_chain(ctx: ssl.SSLContext, domain: TlsDomain) -> None:
    cert = domain.certificate or b""
    key = domain.private_key or b""
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise TlsDomainError(domain.name, "certificate holds no PEM certificate")
    try:
        # The certificates alone, read as a CA bundle: tells a broken certificate from a broken key.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise TlsDomainError(domain.name, f"certificate is not a valid PEM certificate ({exc})") from None
    if b"PRIVATE KEY-----" not in key:
        raise TlsDomainError(domain.name, "private_key holds no PEM private key")
    if b"ENCRYPTED" in key:
        raise TlsDomainError(domain.name, "private_key is encrypted; it must be stored unencrypted")
    try:
        _with_private_file(
            cert.rstrip(b"\n") + b"\n" + key,
            lambda path: ctx.load_cert_chain(path, password=_refuse_password),
        )
    except ssl.SSLError as exc:
        # NO_CERTIFICATE_ASSIGNED: a key of another type (RSA for an EC certificate) went to another slot.
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise TlsDomainError(domain.name, "private_key does not match the certificate") from None
        raise TlsDomainError(domain.name, f"private_key is not a valid PEM private key ({exc})") from None
    except TlsDomainError:
        raise TlsDomainError(domain.name, "private_key is encrypted; it must be stored unencrypted") from None


def _with_private_file(data: bytes, use: Callable[[str], None]) -> None:
    """Call use(path) with `data` readable at `path`, visible to this process only, gone afterwards.

    Python's ssl loads certificate chains, keys and DH parameters only from files (CAs have `cadata`).
    An anonymous memory file (memfd) never touches a disk and works on a read-only root filesystem; where
    there is none, a private temporary file is written and removed as soon as it was read."""
    memfd_create: Callable[..., int] | None = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("sipsockets-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            _write_all(fd, data)
            use(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="sipsockets-tls-")  # mode 0600
    try:
        _write_all(fd, data)
        os.close(fd)
        fd = -1
        use(path)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ------------------------------------------------------------------------------------------ per connection


class ServerContexts:
    """The server domains of one generation, ready to accept connections (see the module docstring).

    Domains whose context cannot be built are left out of selection and reported in `errors`.
    `on_refusal(reason)` is called when a handshake fails for want of a domain (to log it)."""

    def __init__(self, domains: Sequence[TlsDomain], on_refusal: Callable[[str], None] | None = None) -> None:
        self.errors: list[TlsDomainError] = []
        self.domains: list[TlsDomain] = []
        self._contexts: dict[str, ssl.SSLContext] = {}
        for domain in domains:
            if domain.type != SERVER_DOMAIN:
                continue
            try:
                self._contexts[domain.name] = server_context(domain)
            except TlsDomainError as exc:
                self.errors.append(exc)
                continue
            self.domains.append(domain)
        self._by_context: dict[int, TlsDomain] = {id(self._contexts[d.name]): d for d in self.domains}
        self._front: dict[str, ssl.SSLContext | None] = {}
        self._on_refusal = on_refusal

    def for_address(self, local_ip: str, local_port: int) -> ssl.SSLContext | None:
        """The context to start TLS with on a connection accepted at local_ip:local_port (the local
        address of that connection, not of a wildcard listener); None when no domain serves it."""
        where = address_key(local_ip, local_port)
        if where in self._front:
            return self._front[where]
        pool = _pool(self.domains, SERVER_DOMAIN, where)
        front: ssl.SSLContext | None = None
        if pool:
            # A context of its own for this address, so its callback knows the address; it starts as
            # the domain OpenSIPS would pick before SNI (the first of the pool).
            front = server_context(pool[0])
            modes = {_mode(d) for d in pool}
            front.verify_mode = modes.pop() if len(modes) == 1 else ssl.CERT_OPTIONAL
            self._by_context[id(front)] = pool[0]
            front.sni_callback = self._sni_callback(local_ip, local_port, pool[0])
        self._front[where] = front
        return front

    def _sni_callback(
        self, local_ip: str, local_port: int, first: TlsDomain
    ) -> Callable[[ssl.SSLObject | ssl.SSLSocket, str | None, ssl.SSLContext], int | None]:
        def choose(
            conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
        ) -> int | None:
            match = select_server_domain(self.domains, local_ip, local_port, server_name)
            if match.domain is None:
                if self._on_refusal is not None:
                    self._on_refusal(match.reason)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if match.domain is not first:
                conn.context = self._contexts[match.domain.name]
            return None

        return choose

    def domain_of(self, conn: ssl.SSLObject | ssl.SSLSocket) -> TlsDomain | None:
        """The domain that served a connection (after its handshake)."""
        return self._by_context.get(id(conn.context))

    def check_peer(self, conn: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """None when the connection may go on after its handshake, else why it must be closed."""
        domain = self.domain_of(conn)
        if domain is None:
            return "the TLS connection was served by no known domain"
        if domain.verify_cert and domain.require_cert and not conn.getpeercert():
            return f"TLS domain {domain.name!r} requires a client certificate and none was presented"
        return None


def _mode(domain: TlsDomain) -> ssl.VerifyMode:
    if not domain.verify_cert:
        return ssl.CERT_NONE
    return ssl.CERT_REQUIRED if domain.require_cert else ssl.CERT_OPTIONAL


class ClientContexts:
    """The client domains of one generation; contexts are built on first use and kept."""

    def __init__(self, domains: Sequence[TlsDomain]) -> None:
        self.domains = [d for d in domains if d.type == CLIENT_DOMAIN]
        self._contexts: dict[tuple[str, bool], ssl.SSLContext] = {}

    def for_next_hop(self, host: str, ip: str, port: int) -> ssl.SSLContext:
        """The context to connect to ip:port for the next hop `host` (a name or an IP literal). When host
        is a name, connect with server_hostname=host (SNI, and the name is checked if the domain
        verifies); else with server_hostname=None. Raises NoTlsDomain when no client domain matches,
        TlsDomainError when the one that matches cannot be built."""
        match = select_client_domain(self.domains, host, (ip, port))
        if match.domain is None:
            raise NoTlsDomain(match.reason)
        by_name = not _is_ip(host)
        key = (match.domain.name, by_name)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = client_context(match.domain, check_hostname=by_name)
            self._contexts[key] = ctx
        return ctx


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True

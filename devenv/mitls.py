"""Certificates for the MI's mutual TLS where the chart does not make them (e2e fleets, `make demo`, tests):
one CA per run, a server certificate for the proxies and a client certificate for the operator.

The proxies are addressed by pod IP, which a certificate shared by a whole fleet cannot list; the operator
checks the proxies' certificate against the CA and a fixed name instead (`SERVER_NAME`, the operator's
default `--mi-tls-server-name`), exactly as with the chart's certificates.

`install()` lays the files out as the kubelet mounts a Secret (`<dir>/..data` -> a timestamped directory,
`<dir>/tls.crt` -> `..data/tls.crt`) and swaps the symlink on a later call, so a rotation in a test is what
cert-manager's renewal looks like to the proxy and the operator."""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "sipsockets-proxy"
OPERATOR_NAME = "sipsockets-operator"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


class Authority:
    """A CA that issues the proxies' and the operator's certificates."""

    def __init__(self, common_name: str = "sipsockets-mi-ca", days: int = 30) -> None:
        self.key = _key()
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip

    @property
    def cert_pem(self) -> bytes:
        return _pem_cert(self.cert)

    def issue(
        self, common_name: str, server: bool, dns_names: list[str] | None = None, days: int = 30
    ) -> Issued:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        names = dns_names if dns_names is not None else [common_name]
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(_pem_cert(cert), _pem_key(key))

    def server(self, name: str = SERVER_NAME) -> Issued:
        return self.issue(name, server=True)

    def client(self, name: str = OPERATOR_NAME) -> Issued:
        return self.issue(name, server=False)


def install(directory: Path, files: dict[str, bytes]) -> None:
    """Write `files` into `directory` the way the kubelet updates a Secret volume: a new hidden directory,
    then an atomic swap of the `..data` symlink; the visible names are symlinks through `..data`."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.time_ns()}"
    version.mkdir()
    for name, content in files.items():
        path = version / name
        path.write_bytes(content)
        path.chmod(0o644)
    tmp = directory / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(version.name)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.replace(tmp, directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    if old is not None:
        for leftover in (directory / old).iterdir():
            leftover.unlink()
        (directory / old).rmdir()


@dataclass(frozen=True)
class MiPki:
    """One run's CA and the two sides' files: `proxy_dir` (tls.crt, tls.key, ca.crt) and `operator_dir`
    (the same names), each laid out as a mounted Secret."""

    authority: Authority
    proxy_dir: Path
    operator_dir: Path

    @classmethod
    def create(cls, root: Path) -> MiPki:
        pki = cls(Authority(), root / "mi-tls-proxy", root / "mi-tls-operator")
        pki.renew_proxy()
        pki.renew_operator()
        return pki

    def renew_proxy(self, name: str = SERVER_NAME) -> Issued:
        issued = self.authority.server(name)
        install(
            self.proxy_dir,
            {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem, "ca.crt": self.authority.cert_pem},
        )
        return issued

    def renew_operator(self) -> Issued:
        issued = self.authority.client()
        install(
            self.operator_dir,
            {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem, "ca.crt": self.authority.cert_pem},
        )
        return issued

    def proxy_config(self) -> dict[str, str]:
        """The proxy's `mi.tls`: its certificate, and the CA its clients' certificates must come from."""
        return {
            "certificate": str(self.proxy_dir / "tls.crt"),
            "private_key": str(self.proxy_dir / "tls.key"),
            "client_ca": str(self.proxy_dir / "ca.crt"),
        }

    def operator_env(self) -> dict[str, str]:
        """The operator's MI client settings (environment variables)."""
        return {
            "SIPSOCKETS_MI_TLS_CA_FILE": str(self.operator_dir / "ca.crt"),
            "SIPSOCKETS_MI_TLS_CERT_FILE": str(self.operator_dir / "tls.crt"),
            "SIPSOCKETS_MI_TLS_KEY_FILE": str(self.operator_dir / "tls.key"),
        }

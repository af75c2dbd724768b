"""What `tls_list` shows of a certificate: subject, issuer, validity and DNS names, read from its DER.

Python's ssl module decodes only the peer's certificate of a live connection, and the `cryptography` package
is the operator's, not the proxy's; a certificate's outer structure is plain DER (RFC 5280 4.1), so the few
fields a person needs are read here. Anything unexpected gives what could be read, never an exception."""

from __future__ import annotations

import base64
import binascii
import datetime
import re

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
# Attribute types of distinguished names (RFC 4519), by their DER-encoded object identifier.
_NAMES = {
    bytes.fromhex("550403"): "CN",
    bytes.fromhex("55040a"): "O",
    bytes.fromhex("55040b"): "OU",
    bytes.fromhex("550406"): "C",
    bytes.fromhex("550407"): "L",
    bytes.fromhex("550408"): "ST",
    bytes.fromhex("2a864886f70d010901"): "emailAddress",
}
_SAN = bytes.fromhex("551d11")  # subjectAltName


class _Bad(ValueError):
    pass


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at `at`."""
    if at + 2 > len(data):
        raise _Bad("truncated")
    tag = data[at]
    first = data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or at + n > len(data):
            raise _Bad("bad length")
        length = int.from_bytes(data[at : at + n], "big")
        at += n
    if at + length > len(data):
        raise _Bad("truncated")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    at = start
    while at < end:
        tag, s, e = _tlv(data, at)
        out.append((tag, s, e))
        at = e
    return out


def _name(data: bytes, start: int, end: int) -> str:
    """A distinguished name as `CN=a, O=b` in the certificate's order."""
    parts = []
    for _, s, e in _children(data, start, end):  # each RDN is a SET
        for _, as_, ae in _children(data, s, e):  # each AttributeTypeAndValue a SEQUENCE
            fields = _children(data, as_, ae)
            if len(fields) != 2:
                continue
            oid = data[fields[0][1] : fields[0][2]]
            value = data[fields[1][1] : fields[1][2]].decode("utf-8", "replace")
            parts.append(f"{_NAMES.get(oid, oid.hex())}={value}")
    return ", ".join(parts)


def _time(data: bytes, tag: int, start: int, end: int) -> str:
    text = data[start:end].decode("ascii", "replace")
    try:
        if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ
            when = datetime.datetime.strptime(text, "%y%m%d%H%M%SZ")
        else:  # GeneralizedTime: YYYYMMDDHHMMSSZ
            when = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    except ValueError:
        return text
    return when.replace(tzinfo=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dns_names(data: bytes, start: int, end: int) -> list[str]:
    """The DNS names of the subjectAltName extension in the [3] extensions of a TBSCertificate."""
    names: list[str] = []
    for _, s, e in _children(data, start, end):  # the SEQUENCE of extensions
        for _, xs, xe in _children(data, s, e):
            fields = _children(data, xs, xe)
            if not fields or data[fields[0][1] : fields[0][2]] != _SAN:
                continue
            octets = fields[-1][1]  # the OCTET STRING holding the GeneralNames
            _, gs, ge = _tlv(data, octets)
            for tag, ns, ne in _children(data, gs, ge):
                if tag == 0x82:  # dNSName [2]
                    names.append(data[ns:ne].decode("ascii", "replace"))
    return names


def describe(der: bytes) -> dict[str, object]:
    """subject, issuer, notBefore, notAfter (ISO 8601, UTC) and dns_names of one DER certificate; the
    fields that could be read."""
    out: dict[str, object] = {}
    try:
        cs = _tlv(der, 0)[1]  # Certificate
        _, ts, te = _tlv(der, cs)  # TBSCertificate
        fields = _children(der, ts, te)
        i = 1 if fields and fields[0][0] == 0xA0 else 0  # [0] version
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ... [3] extensions
        _, is_, ie = fields[i + 2]
        _, vs, ve = fields[i + 3]
        _, ss, se = fields[i + 4]
        out["subject"] = _name(der, ss, se)
        out["issuer"] = _name(der, is_, ie)
        (nbt, nbs, nbe), (nat, nas, nae) = _children(der, vs, ve)[:2]
        out["notBefore"] = _time(der, nbt, nbs, nbe)
        out["notAfter"] = _time(der, nat, nas, nae)
        for tag, s, e in fields[i + 6 :]:
            if tag == 0xA3:
                out["dns_names"] = _dns_names(der, s, e)
    except (_Bad, IndexError, ValueError):
        pass
    return out


def describe_pem(pem: bytes | None) -> dict[str, object]:
    """`describe` of the first certificate of a PEM chain (the leaf); {} when there is none."""
    if not pem:
        return {}
    found = _PEM.search(pem)
    if found is None:
        return {}
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        return {}
    return describe(der)


def count_certificates(pem: bytes | None) -> int:
    return len(_PEM.findall(pem)) if pem else 0

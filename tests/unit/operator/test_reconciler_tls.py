"""Whole passes of TLS SipSockets against a real SQLite database (sockets and tls_mgm), proxy MIs and a
Kubernetes API that serves the Secrets, on loopback.

What must hold: the domain row is the Secret's certificate and is loaded (tls_reload) before the socket is
(sockets_reload); a renewal wakes exactly the SipSockets naming the Secret and reaches the proxies without a
sockets_reload; a Secret that goes bad never replaces or removes the certificate being served; a SipSocket
with no certificate at all is not programmed; deletion takes the domain row too."""

from __future__ import annotations

import sqlite3
from typing import Any

from sipoperator.certificates import rfc3339
from tests.tlscerts import Issued, issue, make_ca
from tests.unit.operator.test_reconciler import World, conditions, world

__all__ = ["world"]  # fixture

CA = make_ca()
LEAF = issue(CA, "sip.example.com", dns=["sip.example.com"])
RENEWED = issue(CA, "sip.example.com", dns=["sip.example.com", "edge.example.com"])
STRANGER = issue(CA, "stranger.example.com")
TLS_TYPE = "kubernetes.io/tls"


def tls(address: str = "10.0.0.1", port: int = 5061, **tls_spec: str) -> dict[str, Any]:
    return {
        "protocol": "tls",
        "address": address,
        "port": port,
        "tls": {"secretName": "edge-tls", **tls_spec},
    }


def put(world: World, leaf: Issued, key: Issued | None = None, name: str = "edge-tls") -> str:
    """Create or replace the Secret; returns its new resourceVersion (what the watch would report)."""
    world.api.put_secret("voip", name, TLS_TYPE, {"tls.crt": leaf.cert_pem, "tls.key": (key or leaf).key_pem})
    return str(world.api.secrets[("voip", name)]["metadata"]["resourceVersion"])


def certificate(leaf: Issued, dns: list[str]) -> dict[str, Any]:
    return {
        "subject": "CN=sip.example.com",
        "dnsNames": dns,
        "notAfter": rfc3339(leaf.cert.not_valid_after_utc),
    }


async def ready_edge(world: World) -> dict[str, Any]:
    put(world, LEAF)
    result = await world.rec.reconcile(world.body("edge", tls()))
    assert conditions(result.status)["Ready"][:2] == ("True", "Listening")
    world.calls.clear()
    return result.status


async def test_a_tls_socket_serves_its_secret_and_the_domain_is_loaded_before_the_socket(
    world: World,
) -> None:
    put(world, LEAF)
    result = await world.rec.reconcile(world.body("edge", tls()))
    got = conditions(result.status)
    assert list(got) == ["Accepted", "ResolvedRefs", "Programmed", "Ready"]
    assert got["ResolvedRefs"][:2] == ("True", "ResolvedRefs")
    assert got["ResolvedRefs"][2].startswith("Secret voip/edge-tls: CN=sip.example.com (sip.example.com)")
    assert got["Ready"][:2] == ("True", "Listening")
    assert "TLS server domain 'voip/edge' for 10.0.0.1:5061" in got["Programmed"][2]
    assert result.status["certificate"] == certificate(LEAF, ["sip.example.com"])
    assert world.table() == [("tls:10.0.0.1:5061", "edge")]
    assert world.domains() == [("voip/edge", "10.0.0.1:5061", LEAF.cert_pem)]
    assert world.methods() == ["tls_reload", "sockets_reload", "sockets_list"]
    assert world.mi.loaded == [("voip/edge", LEAF.cert_pem)]

    # A resync that finds nothing new asks for the listing only.
    world.calls.clear()
    await world.rec.reconcile(world.body("edge", tls()))
    assert world.methods() == ["sockets_list"]


async def test_a_renewal_wakes_the_socket_and_reaches_the_proxies_without_a_socket_reload(
    world: World,
) -> None:
    await ready_edge(world)
    await world.rec.reconcile(world.body("udp-a", {"protocol": "udp", "address": "10.0.0.1", "port": 5070}))
    edge, other = world.rec.waker("uid-edge"), world.rec.waker("uid-udp-a")
    world.calls.clear()

    world.rec.secret_changed("unrelated", "1")
    assert not edge.is_set() and not world.rec.due("uid-edge")

    version = put(world, RENEWED)
    world.rec.secret_changed("edge-tls", version)
    assert edge.is_set() and world.rec.due("uid-edge")
    assert not other.is_set() and not world.rec.due("uid-udp-a")

    result = await world.rec.reconcile(world.body("edge", tls()))  # what the keeper runs when woken
    assert world.domains() == [("voip/edge", "10.0.0.1:5061", RENEWED.cert_pem)]
    assert world.methods() == ["tls_reload", "sockets_list"]  # no socket is closed or re-bound
    assert world.mi.loaded == [("voip/edge", RENEWED.cert_pem)]
    assert result.status["certificate"] == certificate(RENEWED, ["sip.example.com", "edge.example.com"])
    assert conditions(result.status)["Ready"][:2] == ("True", "Listening")
    assert not world.rec.due("uid-edge")
    # The watch repeating the version this pass read wakes nobody.
    edge.clear()
    world.rec.secret_changed("edge-tls", version)
    assert not edge.is_set()


async def test_a_secret_gone_bad_keeps_the_last_good_certificate_and_says_which(world: World) -> None:
    await ready_edge(world)
    serial = format(LEAF.cert.serial_number, "X")
    problems = []
    for broken in ("mismatched key", "deleted"):
        if broken == "deleted":
            del world.api.secrets[("voip", "edge-tls")]
        else:
            put(world, LEAF, key=STRANGER)
        result = await world.rec.reconcile(world.body("edge", tls()))
        got = conditions(result.status)
        assert got["ResolvedRefs"][:2] == ("False", "InvalidCertificateRef"), broken
        assert (
            f"the proxies keep serving the certificate of {LEAF.cert.not_valid_before_utc:%Y-%m-%d}/{serial}"
            in (got["ResolvedRefs"][2])
        )
        assert got["Programmed"][0] == got["Ready"][0] == "True"
        assert "with the last good certificate" in got["Ready"][2]
        assert world.domains() == [("voip/edge", "10.0.0.1:5061", LEAF.cert_pem)]  # never overwritten
        assert world.table() == [("tls:10.0.0.1:5061", "edge")]  # never dropped
        assert result.status["certificate"] == certificate(LEAF, ["sip.example.com"])
        problems.append(got["ResolvedRefs"][2])
    assert problems[0].startswith("Secret voip/edge-tls: tls.key does not match the certificate in tls.crt;")
    assert problems[1].startswith("Secret voip/edge-tls not found;")
    assert "tls_reload" not in world.methods() and "sockets_reload" not in world.methods()

    put(world, RENEWED)
    result = await world.rec.reconcile(world.body("edge", tls()))
    assert conditions(result.status)["ResolvedRefs"][:2] == ("True", "ResolvedRefs")
    assert world.domains() == [("voip/edge", "10.0.0.1:5061", RENEWED.cert_pem)]
    assert [c.type for c in result.changed] == ["ResolvedRefs"]


async def test_without_any_certificate_nothing_is_programmed_until_the_secret_exists(world: World) -> None:
    result = await world.rec.reconcile(world.body("edge", tls()))
    got = conditions(result.status)
    assert got["Accepted"][0] == "True"
    for ctype in ("ResolvedRefs", "Programmed", "Ready"):
        assert got[ctype][:2] == ("False", "InvalidCertificateRef"), ctype
    assert got["ResolvedRefs"][2].startswith("Secret voip/edge-tls not found; create it")
    assert got["Ready"][2].startswith("not served: Secret voip/edge-tls not found")
    assert (result.status["socket"], result.status["certificate"]) == ("tls:10.0.0.1:5061", None)
    assert world.table() == [] and world.domains() == []
    assert "sockets_reload" not in world.methods() and "tls_reload" not in world.methods()

    # cert-manager writes the Secret: the watch wakes the SipSocket, whose pass serves it.
    world.rec.waker("uid-edge")
    world.rec.secret_changed("edge-tls", put(world, LEAF))
    assert world.rec.due("uid-edge")
    result = await world.rec.reconcile(world.body("edge", tls()))
    assert conditions(result.status)["Ready"][:2] == ("True", "Listening")
    assert world.domains() == [("voip/edge", "10.0.0.1:5061", LEAF.cert_pem)]


async def test_client_authentication_reads_the_ca_secret_and_waits_for_it(world: World) -> None:
    put(world, LEAF)
    spec = tls(clientAuth="required", caSecretName="clients-ca")
    result = await world.rec.reconcile(world.body("edge", spec))
    assert conditions(result.status)["Programmed"][:2] == ("False", "InvalidCertificateRef")
    assert "Secret voip/clients-ca not found" in conditions(result.status)["ResolvedRefs"][2]

    world.api.put_secret("voip", "clients-ca", "Opaque", {"ca.crt": CA.cert_pem})
    result = await world.rec.reconcile(world.body("edge", spec))
    assert conditions(result.status)["Ready"][:2] == ("True", "Listening")
    row = await world.rec.store.domain_of("uid-edge")
    assert row is not None and (row.verify_cert, row.require_cert, row.ca_list) == (1, 1, CA.cert_pem)


async def test_deletion_removes_the_domain_row_after_the_socket(world: World) -> None:
    await ready_edge(world)
    assert await world.rec.finalize("uid-edge") == {}
    assert world.table() == [] and world.domains() == []
    assert world.methods() == ["sockets_reload", "tls_reload"]
    assert world.mi.loaded == [] and world.mi.listed == []


async def test_leaving_tls_drops_the_domain_row_and_the_condition(world: World) -> None:
    await ready_edge(world)
    result = await world.rec.reconcile(
        world.body("edge", {"protocol": "tcp", "address": "10.0.0.1", "port": 5061}, generation=2)
    )
    assert "ResolvedRefs" not in conditions(result.status)
    assert result.status["certificate"] is None
    assert world.domains() == [] and world.mi.loaded == []
    assert world.table() == [("tcp:10.0.0.1:5061", "edge")]


async def test_a_secret_the_operator_may_not_read_says_so_and_keeps_what_is_served(world: World) -> None:
    await ready_edge(world)
    world.api.secrets_fail_with = 403
    result = await world.rec.reconcile(world.body("edge", tls()))
    refs = conditions(result.status)["ResolvedRefs"]
    assert refs[:2] == ("False", "InvalidCertificateRef")
    assert refs[2].startswith(
        'cannot read Secret voip/edge-tls: 403 Forbidden: secrets "edge-tls" is forbidden'
    )
    assert world.domains() == [("voip/edge", "10.0.0.1:5061", LEAF.cert_pem)]


async def test_a_refused_socket_still_reports_its_references(world: World) -> None:
    put(world, LEAF)
    await world.rec.reconcile(world.body("first", {"protocol": "tcp", "address": "10.0.0.1", "port": 5061}))
    result = await world.rec.reconcile(world.body("edge", tls()))
    got = conditions(result.status)
    assert got["Accepted"][:2] == ("False", "EndpointConflict")
    assert got["ResolvedRefs"][:2] == ("True", "ResolvedRefs")
    assert world.domains() == [] and result.status["certificate"] is None


async def test_a_domain_name_taken_by_hand_is_reported_and_nothing_is_written(world: World) -> None:
    put(world, LEAF)
    await world.rec.store.ensure_schema()
    with sqlite3.connect(world.db) as conn:
        conn.execute("INSERT INTO tls_mgm (domain, type, match_ip_address) VALUES ('voip/edge', 2, '*')")
    result = await world.rec.reconcile(world.body("edge", tls()))
    programmed = conditions(result.status)["Programmed"]
    assert programmed[:2] == ("False", "DomainConflict")
    assert "rename or delete that row" in programmed[2]
    assert world.table() == []


async def test_a_proxy_without_tls_reload_is_named(world: World) -> None:
    world.mi.domains = None  # a proxy that cannot serve TLS domains (no tls_reload: -32601)
    put(world, LEAF)
    result = await world.rec.reconcile(world.body("edge", tls()))
    ready = conditions(result.status)["Ready"]
    assert ready[:2] == ("False", "ProxyUnreachable")
    assert "the proxy has no MI tls_reload" in ready[2]


async def test_a_pod_that_could_not_load_the_domain_is_failed_and_asked_again(world: World) -> None:
    world.mi.tls_failed = [
        {"domain": "voip/edge", "kind": "server", "source": "table", "error": "cannot load the key"}
    ]
    put(world, LEAF)
    result = await world.rec.reconcile(world.body("edge", tls()))
    assert result.status["listeners"] == [
        {
            "pod": "proxy-0",
            "state": "Failed",
            "message": "TLS domain 'voip/edge' not loaded: cannot load the key",
        }
    ]
    assert conditions(result.status)["Ready"][:2] == ("False", "BindFailed")
    world.mi.tls_failed = []
    world.calls.clear()
    result = await world.rec.reconcile(world.body("edge", tls()))
    assert world.methods()[0] == "tls_reload"  # not recorded as applied: asked again
    assert conditions(result.status)["Ready"][:2] == ("True", "Listening")


async def test_a_pod_listening_without_the_certificate_is_not_serving_and_reloads_its_domains(
    world: World,
) -> None:
    """The proxy warns in sockets_list when no loaded domain serves a TLS socket (every handshake fails):
    e.g. it missed a tls_reload. That pod is Failed with the proxy's words, and the next pass reloads it."""
    await ready_edge(world)
    warning = "no TLS server domain matches 10.0.0.1:5061 (match_ip_address, or *): connections fail"
    world.mi.warnings = {"tls:10.0.0.1:5061": warning}
    result = await world.rec.reconcile(world.body("edge", tls()))
    assert result.status["listeners"] == [{"pod": "proxy-0", "state": "Failed", "message": warning}]
    assert world.methods() == ["sockets_list"]
    world.mi.warnings = {}
    world.calls.clear()
    result = await world.rec.reconcile(world.body("edge", tls()))
    assert world.methods() == ["tls_reload", "sockets_list"]
    assert conditions(result.status)["Ready"][:2] == ("True", "Listening")

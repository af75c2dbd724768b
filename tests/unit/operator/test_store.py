"""Owned rows (sockets and tls_mgm) in a real SQLite database: written once, repaired, removed; other rows
never touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from sipoperator.domains import DomainRow
from sipoperator.lease import NotLeader
from sipoperator.spec import Row
from sipoperator.store import DomainTaken, Store
from sipproxy.shared.tls_domains import TlsDomain
from sipproxy.shared.tls_table import read_domains
from tests.tlscerts import Issued, issue, make_ca


def make(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


async def test_write_is_idempotent_and_records_the_owner(tmp_path: Path) -> None:
    store = make(tmp_path)
    row = Row(socket="udp:10.0.0.1:5060", tag="a")
    first = await store.write("uid-1", "voip", "a", 1, row)
    again = await store.write("uid-1", "voip", "a", 1, row)
    assert first.changed and not again.changed
    assert first.row_id == again.row_id
    rows = await store.snapshot()
    assert [(r.socket, r.tag, r.owner_uid, r.owner_name) for r in rows] == [
        ("udp:10.0.0.1:5060", "a", "uid-1", "a")
    ]
    await store.close()


async def test_spec_change_replaces_the_row_in_place(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.write("uid-1", "voip", "a", 1, Row(socket="udp:10.0.0.1:5060"))
    changed = await store.write("uid-1", "voip", "a", 2, Row(socket="udp:10.0.0.1:5070"))
    assert changed.changed
    assert [r.socket for r in await store.snapshot()] == ["udp:10.0.0.1:5070"]
    await store.close()


async def test_hand_edits_and_deletes_are_repaired(tmp_path: Path) -> None:
    store = make(tmp_path)
    row = Row(socket="udp:10.0.0.1:5060")
    written = await store.write("uid-1", "voip", "a", 1, row)
    async with store.engine.begin() as conn:
        await conn.execute(update(store.sockets).values(socket="udp:10.0.0.1:9999"))
    assert (await store.write("uid-1", "voip", "a", 1, row)).changed
    assert [r.socket for r in await store.snapshot()] == ["udp:10.0.0.1:5060"]
    async with store.engine.begin() as conn:
        await conn.execute(store.sockets.delete())
    repaired = await store.write("uid-1", "voip", "a", 1, row)
    assert repaired.changed and repaired.row_id != written.row_id
    assert [(r.socket, r.owner_uid) for r in await store.snapshot()] == [("udp:10.0.0.1:5060", "uid-1")]
    await store.close()


async def test_rows_it_does_not_own_are_never_changed(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.ensure_schema()
    async with store.engine.begin() as conn:
        await conn.execute(insert(store.sockets).values(socket="tcp:10.0.0.9:5060", tag="by-hand"))
    await store.write("uid-1", "voip", "a", 1, Row(socket="udp:10.0.0.1:5060"))
    assert await store.remove("uid-1")
    assert not await store.remove("uid-1")
    assert not await store.remove("uid-unknown")
    async with store.engine.connect() as conn:
        left = (await conn.execute(select(store.sockets.c.socket, store.sockets.c.tag))).all()
    assert [tuple(r) for r in left] == [("tcp:10.0.0.9:5060", "by-hand")]
    owners = await store.owner_uids()
    assert owners == {}
    await store.close()


async def test_unreachable_database_is_reported_not_raised_raw(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'no-such-dir' / 'db.sqlite'}")
    try:
        await store.snapshot()
    except Exception as exc:
        assert type(exc).__name__ == "DatabaseUnavailable"
        assert "creating the tables" in str(exc)
    else:
        raise AssertionError("expected DatabaseUnavailable")
    await store.close()


# -- tls_mgm -------------------------------------------------------------------------------------------------

CA = make_ca()
LEAF = issue(CA, "sip.example.com", dns=["sip.example.com"])
RENEWED = issue(CA, "sip.example.com", dns=["sip.example.com"])
TLS_ROW = Row(socket="tls:10.0.0.1:5061")


def domain(leaf: Issued = LEAF, name: str = "voip/edge", address: str = "10.0.0.1:5061") -> DomainRow:
    return DomainRow(
        domain=name, match_ip_address=address, certificate=leaf.cert_pem, private_key=leaf.key_pem
    )


async def proxy_domains(store: Store) -> list[TlsDomain]:
    """What the proxy's own tls_mgm reader makes of the table."""
    found, errors = await read_domains(store.engine)
    assert errors == []
    return found


async def test_the_socket_row_and_its_domain_row_are_written_together_and_read_by_the_proxy(
    tmp_path: Path,
) -> None:
    store = make(tmp_path)
    first = await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain())
    assert first.changed and first.domain_changed and first.domain_id is not None
    again = await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain())
    assert not again.changed and not again.domain_changed and again.domain_id == first.domain_id
    [seen] = await proxy_domains(store)
    assert (seen.name, seen.kind, seen.match_addresses, seen.certificate) == (
        "voip/edge",
        "server",
        ("10.0.0.1:5061",),
        LEAF.cert_pem,
    )
    assert await store.domain_of("uid-1") == domain()
    assert [(o.owner_uid, o.owner_name) for o in await store.domain_owners()] == [("uid-1", "edge")]
    await store.close()


async def test_a_renewal_changes_only_the_domain_row_in_place(tmp_path: Path) -> None:
    store = make(tmp_path)
    first = await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain())
    renewed = await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain(RENEWED))
    assert (renewed.changed, renewed.domain_changed) == (False, True)
    assert renewed.domain_id == first.domain_id
    assert [d.certificate for d in await proxy_domains(store)] == [RENEWED.cert_pem]
    await store.close()


async def test_remove_takes_both_rows_and_a_socket_without_tls_drops_its_domain(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain())
    gone = await store.remove("uid-1")
    assert (gone.socket, gone.domain) == (True, True)
    assert await proxy_domains(store) == [] and await store.snapshot() == []

    await store.write("uid-2", "voip", "edge", 1, TLS_ROW, domain())
    to_tcp = await store.write("uid-2", "voip", "edge", 2, Row(socket="tcp:10.0.0.1:5061"))
    assert to_tcp.domain_changed and await proxy_domains(store) == []
    assert await store.domain_of("uid-2") is None
    await store.close()


async def test_a_hand_edited_or_deleted_domain_row_is_repaired(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain())
    async with store.engine.begin() as conn:
        await conn.execute(update(store.tls).values(match_ip_address="10.9.9.9:5061", cipher_list="NULL"))
    assert (await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain())).domain_changed
    [seen] = await proxy_domains(store)
    assert (seen.match_addresses, seen.cipher_list) == (("10.0.0.1:5061",), None)
    async with store.engine.begin() as conn:
        await conn.execute(store.tls.delete())
    assert (await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain())).domain_changed
    assert len(await proxy_domains(store)) == 1
    await store.close()


async def test_a_domain_of_that_name_not_owned_is_never_taken(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.ensure_schema()
    async with store.engine.begin() as conn:
        await conn.execute(insert(store.tls).values(domain="voip/edge", type=2, match_ip_address="*"))
    with pytest.raises(
        DomainTaken, match=r"already has server domain 'voip/edge'.*rename or delete that row"
    ):
        await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain())
    # One transaction: the socket row was not written either.
    assert await store.snapshot() == []
    await store.close()


async def test_the_domain_of_an_earlier_object_of_that_name_is_taken_over(tmp_path: Path) -> None:
    """Deleted with its finalizer removed by force, then created again: the name is the new object's."""
    store = make(tmp_path)
    await store.write("uid-old", "voip", "edge", 1, TLS_ROW, domain())
    async with store.engine.begin() as conn:
        await conn.execute(store.owners.delete())
        await conn.execute(store.sockets.delete())
    written = await store.write("uid-new", "voip", "edge", 1, TLS_ROW, domain(RENEWED))
    assert written.domain_changed
    assert [(o.owner_uid, o.domain_id) for o in await store.domain_owners()] == [
        ("uid-new", written.domain_id)
    ]
    assert [d.certificate for d in await proxy_domains(store)] == [RENEWED.cert_pem]
    await store.close()


async def test_the_tls_table_name_is_configurable(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}", tls_table_name="tls_domains")
    await store.write("uid-1", "voip", "edge", 1, TLS_ROW, domain())
    found, errors = await read_domains(store.engine, "tls_domains")
    assert errors == [] and [d.name for d in found] == ["voip/edge"]
    await store.close()


class Closed:
    def budget(self) -> float:
        raise NotLeader("not the leader")


class Short:
    """A leader with this little time left before the Lease could pass to another replica."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def budget(self) -> float:
        return self.seconds


async def test_a_replica_without_the_lease_writes_nothing_and_still_reads(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.write("uid-1", "voip", "a", 1, Row(socket="udp:10.0.0.1:5060"))
    store.fence = Closed()
    with pytest.raises(NotLeader):
        await store.write("uid-2", "voip", "b", 1, Row(socket="udp:10.0.0.2:5060"))
    with pytest.raises(NotLeader):
        await store.remove("uid-1")
    assert [r.owner_uid for r in await store.snapshot()] == ["uid-1"]  # reads are not fenced (the webhook)
    await store.close()


async def test_a_write_that_would_outlive_the_lease_is_abandoned(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.ensure_schema()
    store.fence = Short(0.0)
    with pytest.raises(NotLeader, match="abandoned"):
        await store.write("uid-1", "voip", "a", 1, Row(socket="udp:10.0.0.1:5060"))
    store.fence = Short(30.0)
    assert await store.snapshot() == []  # nothing of the abandoned write was committed
    await store.close()

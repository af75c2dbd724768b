"""The one status writer, through the operator's own API client, against a real (small) HTTP API."""

from __future__ import annotations

import kopf
import pytest

from sipoperator.kube import KubeClient, KubeError
from sipoperator.lease import NotLeader
from sipoperator.status import StatusWriter, changes
from tests.unit.operator.servers import FakeAPI

READY = {
    "observedGeneration": 1,
    "socket": "udp:10.0.0.1:5060",
    "port": 5060,
    "conditions": [{"type": "Ready"}],
}


def test_only_fields_that_differ_from_every_status_seen_are_sent() -> None:
    assert changes(READY, [READY]) == {}
    assert changes(READY, [{**READY, "port": 5070}]) == {"port": 5060}
    # The watched body lags behind our last patch, which said otherwise: send again.
    assert changes(READY, [READY, {**READY, "socket": None}]) == {"socket": "udp:10.0.0.1:5060"}


async def test_a_merge_patch_of_the_changes_to_the_status_subresource() -> None:
    async with FakeAPI() as api:
        api.objects[("voip", "a")] = {}
        kube = KubeClient(api.login())
        writer = StatusWriter(kube)
        try:
            assert await writer.write("voip", "a", READY, [{}])
            assert not await writer.write("voip", "a", READY, [READY])  # nothing new: no call
            assert await writer.write("voip", "a", {**READY, "port": 5070}, [READY])
        finally:
            await kube.close()
    assert [p.body for p in api.patches] == [{"status": READY}, {"status": {"port": 5070}}]
    assert {p.content_type for p in api.patches} == {"application/merge-patch+json"}
    assert api.objects[("voip", "a")]["port"] == 5070


async def test_an_object_deleted_meanwhile_is_not_an_error() -> None:
    async with FakeAPI() as api:
        kube = KubeClient(api.login())
        try:
            assert not await StatusWriter(kube).write("voip", "gone", READY, [{}])
        finally:
            await kube.close()
    assert len(api.patches) == 1


async def test_a_refused_token_is_replaced_by_logging_in_again() -> None:
    logins: list[str] = []

    async with FakeAPI(token="fresh") as api:
        api.objects[("voip", "a")] = {}

        def login() -> kopf.ConnectionInfo:
            token = "stale" if not logins else "fresh"
            logins.append(token)
            return api.login(token)()

        kube = KubeClient(login)
        try:
            assert await StatusWriter(kube).write("voip", "a", READY, [{}])
        finally:
            await kube.close()
    assert logins == ["stale", "fresh"]
    assert [p.authorization for p in api.patches] == ["Bearer fresh"]


async def test_other_errors_say_what_the_api_said() -> None:
    async with FakeAPI() as api:
        api.fail_with = 500
        kube = KubeClient(api.login())
        try:
            with pytest.raises(KubeError) as info:
                await StatusWriter(kube).write("voip", "a", READY, [{}])
        finally:
            await kube.close()
    assert (info.value.status, info.value.reason) == (500, "InternalError")
    assert "etcd is having a bad day" in str(info.value)


async def test_an_unreachable_api_is_a_kube_error_too() -> None:
    async with FakeAPI() as api:
        url = api.url
    kube = KubeClient(lambda: kopf.ConnectionInfo(server=url, token="t"), timeout=5)
    try:
        with pytest.raises(KubeError) as info:
            await kube.get("/api/v1/namespaces/voip/pods")
    finally:
        await kube.close()
    assert info.value.status == 0 and info.value.reason == "Unreachable"


async def test_a_replica_without_the_lease_patches_no_status() -> None:
    class Closed:
        def budget(self) -> float:
            raise NotLeader("not the leader")

    async with FakeAPI() as api:
        api.objects[("voip", "a")] = {}
        kube = KubeClient(api.login())
        try:
            with pytest.raises(NotLeader):
                await StatusWriter(kube, Closed()).write("voip", "a", READY, [{}])
        finally:
            await kube.close()
    assert api.patches == []

"""JSON-RPC 2.0 framing of the MI over a real in-process HTTP server: OpenSIPS codes, token, notifications."""

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sipproxy.supervisor.mi.rpc import Method, MIError, Params, no_params
from sipproxy.supervisor.mi.server import make_app


async def echo(params: Params) -> Any:
    return {"params": params}


async def plain(params: Params) -> Any:
    no_params(params)
    return "OK"


async def reload_fails(params: Params) -> Any:
    raise MIError(500, "Could not reload sockets")


async def crashes(params: Params) -> Any:
    raise RuntimeError("secret internals")


METHODS: dict[str, Method] = {"echo": echo, "plain": plain, "reload": reload_fails, "crash": crashes}


async def metrics() -> str:
    return "x 1\n"


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = make_app("mi", METHODS, None, ready=lambda: True, metrics=metrics)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
async def token_client() -> AsyncIterator[TestClient[Any, Any]]:
    app = make_app("mi", METHODS, "s3cret", ready=lambda: False, metrics=metrics)
    async with TestClient(TestServer(app)) as c:
        yield c


async def call(c: TestClient[Any, Any], body: Any, raw: bool = False) -> tuple[int, Any]:
    data = body if raw else json.dumps(body)
    resp = await c.post("/mi", data=data, headers={"Content-Type": "application/json"})
    text = await resp.text()
    return resp.status, (json.loads(text) if text else None)


async def test_opensips_cli_style_request(client: TestClient[Any, Any]) -> None:
    status, body = await call(client, {"jsonrpc": "2.0", "method": "plain", "params": {}, "id": "a1b2"})
    assert status == 200
    assert body == {"jsonrpc": "2.0", "result": "OK", "id": "a1b2"}


async def test_params_array_or_absent(client: TestClient[Any, Any]) -> None:
    assert (await call(client, {"jsonrpc": "2.0", "method": "echo", "params": [1], "id": 1}))[1][
        "result"
    ] == {"params": [1]}
    assert (await call(client, {"jsonrpc": "2.0", "method": "plain", "id": 2}))[1]["result"] == "OK"


async def test_parse_error_has_null_id(client: TestClient[Any, Any]) -> None:
    status, body = await call(client, b"{not json", raw=True)
    assert status == 200
    assert body["error"]["code"] == -32700 and body["id"] is None


@pytest.mark.parametrize(
    "request_body",
    [
        [1, 2],
        {"jsonrpc": "1.0", "method": "plain", "id": 1},
        {"jsonrpc": "2.0", "method": 5, "id": 1},
        {"jsonrpc": "2.0", "method": "plain", "params": "x", "id": 1},
        {"jsonrpc": "2.0", "method": "plain", "id": {"a": 1}},
    ],
)
async def test_invalid_requests(client: TestClient[Any, Any], request_body: Any) -> None:
    status, body = await call(client, request_body)
    assert status == 200 and body["error"]["code"] == -32600


@pytest.mark.parametrize(
    "raw",
    [
        b'{"jsonrpc":"2.0","method":"plain","id":NaN}',
        b'{"jsonrpc":"2.0","method":"plain","params":[Infinity],"id":1}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser recurses
    ],
)
async def test_what_is_not_strict_json_is_a_parse_error(client: TestClient[Any, Any], raw: bytes) -> None:
    """Found by the MI fuzz harness (fuzz/mi_rpc.py): these raised, or were answered with invalid JSON."""
    status, body = await call(client, raw, raw=True)
    assert status == 200
    assert body == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}


async def test_an_id_json_cannot_write_back_is_an_invalid_request(client: TestClient[Any, Any]) -> None:
    """Found by the MI fuzz harness: an id of 1e4001 reads as inf and was echoed as `Infinity`."""
    status, body = await call(client, b'{"jsonrpc":"2.0","method":"plain","id":1e4001}', raw=True)
    assert status == 200 and body["error"]["code"] == -32600 and body["id"] is None
    _, body = await call(client, b'{"jsonrpc":"2.0","method":"plain","id":-2.5e3}', raw=True)
    assert body == {"jsonrpc": "2.0", "result": "OK", "id": -2500.0}


async def test_unknown_method_and_bad_params(client: TestClient[Any, Any]) -> None:
    _, body = await call(client, {"jsonrpc": "2.0", "method": "nope", "id": 3})
    assert body["error"]["code"] == -32601 and body["id"] == 3
    _, body = await call(client, {"jsonrpc": "2.0", "method": "plain", "params": {"x": 1}, "id": 4})
    assert body["error"]["code"] == -32602


async def test_command_error_code_and_no_traceback(client: TestClient[Any, Any]) -> None:
    _, body = await call(client, {"jsonrpc": "2.0", "method": "reload", "id": 5})
    assert body["error"] == {"code": 500, "message": "Could not reload sockets"}
    status, body = await call(client, {"jsonrpc": "2.0", "method": "crash", "id": 6})
    assert status == 200 and body["error"]["code"] == -32000
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)


async def test_notification_gets_202_and_empty_body(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/mi", data=json.dumps({"jsonrpc": "2.0", "method": "plain"}))
    assert resp.status == 202 and await resp.read() == b""


async def test_other_http_methods_are_405(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/mi")).status == 405
    assert (await client.put("/mi", data=b"{}")).status == 405


async def test_health_and_metrics(client: TestClient[Any, Any], token_client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await token_client.get("/readyz")).status == 503
    assert await (await client.get("/metrics")).text() == "x 1\n"


async def test_token_is_enforced(token_client: TestClient[Any, Any]) -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": "plain", "id": 1})
    assert (await token_client.post("/mi", data=body)).status == 401
    wrong = await token_client.post("/mi", data=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    ok = await token_client.post("/mi", data=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200 and (await ok.json())["result"] == "OK"

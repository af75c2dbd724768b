"""JSON-RPC 2.0 framing, independent of HTTP and of the methods: pure, so it is unit-tested alone."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("sipproxy.mi")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SERVER_ERROR = -32000

Params = dict[str, Any] | list[Any] | None
Method = Callable[[Params], Awaitable[Any]]


class MIError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


@dataclass(frozen=True, slots=True)
class RawJson:
    """A result already written as JSON text (`sockets_reload` assembles its answer from the listing's cached
    parts, listing.py): put into the response as it is."""

    text: str


def no_params(params: Params) -> None:
    if params:
        raise MIError(INVALID_PARAMS, "Invalid params", "this command takes no parameters")


def _error(code: int, message: str, ident: Any, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": ident}


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _valid_id(ident: Any) -> bool:
    """A string, a number or null; a number JSON can write back (1e400 reads as inf, which it cannot)."""
    if isinstance(ident, float):
        return math.isfinite(ident)
    return not isinstance(ident, bool) and isinstance(ident, str | int | type(None))


async def handle_body(body: bytes, methods: Mapping[str, Method]) -> dict[str, Any] | None:
    """The response object for one HTTP request body; None for a notification (no id)."""
    try:
        # Strict JSON (RFC 8259): Python's NaN and Infinity extensions are refused. Nesting deeper than
        # the parser's recursion limit is refused too, as a parse error rather than an exception.
        request = json.loads(body, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _error(PARSE_ERROR, "Parse error", None)
    if not isinstance(request, dict):
        return _error(INVALID_REQUEST, "Invalid Request", None)
    ident = request.get("id")
    if not _valid_id(ident):
        return _error(INVALID_REQUEST, "Invalid Request", None)
    if request.get("jsonrpc") != "2.0":
        return _error(INVALID_REQUEST, "Invalid Request", ident, 'jsonrpc must be "2.0"')
    method = request.get("method")
    if not isinstance(method, str):
        return _error(INVALID_REQUEST, "Invalid Request", ident, "method must be a string")
    params = request.get("params")
    if params is not None and not isinstance(params, dict | list):
        return _error(INVALID_REQUEST, "Invalid Request", ident, "params must be an object or an array")
    notification = "id" not in request
    func = methods.get(method)
    if func is None:
        response = _error(METHOD_NOT_FOUND, "Method not found", ident)
    else:
        try:
            result = await func(params)
            response = {"jsonrpc": "2.0", "result": result, "id": ident}
        except MIError as exc:
            response = _error(exc.code, exc.message, ident, exc.data)
        except Exception:
            log.exception("MI command %s failed", method)
            response = _error(SERVER_ERROR, "Server error", ident)
    return None if notification else response


def encode_response(response: dict[str, Any]) -> str:
    """The response object as JSON text, a `RawJson` result spliced in as written."""
    result = response.get("result")
    if isinstance(result, RawJson):
        ident = json.dumps(response["id"], separators=(",", ":"))
        return f'{{"jsonrpc":"2.0","result":{result.text},"id":{ident}}}'
    return json.dumps(response, separators=(",", ":"))

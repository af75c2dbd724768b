"""Fuzz harness 2: the MI's JSON-RPC 2.0 framing (`sipproxy.supervisor.mi.rpc.handle_body`).

Each input is the body of one HTTP POST to the MI. `handle_body` runs it against the proxy's real method
table (`make_methods`) bound to a real `Supervisor` that was built but never started (no socket, no worker,
no database: `sockets_reload` answers its "no database" error, `get_statistics` counts nothing), and the
harness fails unless

- `handle_body` returns (never raises: the HTTP server would answer 500 with no JSON-RPC object);
- it returns None only for a well-formed notification (an object with `"jsonrpc": "2.0"`, a string
  `method`, valid `params` and no `id` member), and otherwise a JSON-RPC 2.0 response object: `jsonrpc`
  "2.0", an `id` (the request's own when it had a usable one, else null), exactly one of `result` and
  `error`, an error with an integer `code` and a string `message`;
- the response, as the MI server writes it (`encode_response`), is strict JSON (RFC 8259: no NaN or
  Infinity).

The MI is pure Python: atheris instruments `sipproxy.supervisor.mi` and counts its branches and
comparisons; no native code is involved, so no sanitizer runtime is loaded.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["sipproxy.supervisor.mi"]):
    from sipproxy.supervisor.mi.methods import make_methods
    from sipproxy.supervisor.mi.rpc import encode_response, handle_body

from sipproxy.supervisor.config import Config
from sipproxy.supervisor.supervisor import Supervisor

LOOP = asyncio.new_event_loop()


async def _methods() -> Any:
    return make_methods(Supervisor(Config()))


METHODS = LOOP.run_until_complete(_methods())


class Violation(AssertionError):
    pass


def _strict(constant: str) -> Any:
    raise ValueError(constant)


def _request_of(data: bytes) -> Any:
    """The request as RFC 8259 reads it (no NaN or Infinity), None when it is no JSON at all."""
    try:
        return json.loads(data, parse_constant=_strict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _usable_id(request: Any) -> bool:
    ident = request.get("id")
    if isinstance(ident, bool):
        return False
    if isinstance(ident, float):
        return math.isfinite(ident)
    return isinstance(ident, str | int | type(None))


def is_notification(request: Any) -> bool:
    return (
        isinstance(request, dict)
        and "id" not in request
        and request.get("jsonrpc") == "2.0"
        and isinstance(request.get("method"), str)
        and (request.get("params") is None or isinstance(request.get("params"), dict | list))
    )


def check_response(data: bytes, response: Any) -> None:
    request = _request_of(data)
    if response is None:
        if not is_notification(request):
            raise Violation(f"no answer to a request that is not a notification: {request!r}")
        return
    if not isinstance(response, dict) or response.get("jsonrpc") != "2.0" or "id" not in response:
        raise Violation(f"not a JSON-RPC 2.0 response: {response!r}")
    if ("result" in response) == ("error" in response):
        raise Violation(f"a response has exactly one of result and error: {response!r}")
    if "error" in response:
        error = response["error"]
        if not isinstance(error, dict) or set(error) - {"code", "message", "data"}:
            raise Violation(f"malformed error member: {error!r}")
        if type(error.get("code")) is not int or not isinstance(error.get("message"), str):
            raise Violation(f"error code must be an integer and message a string: {error!r}")
    if isinstance(request, dict) and _usable_id(request) and response["id"] != request.get("id"):
        raise Violation(f"response id {response['id']!r} is not the request's {request.get('id')!r}")
    try:
        json.loads(encode_response(response), parse_constant=_strict)
    except (TypeError, ValueError) as exc:
        raise Violation(f"the response is not strict JSON ({exc}): {response!r}") from None


def test_one_input(data: bytes) -> None:
    response = LOOP.run_until_complete(handle_body(data, METHODS))
    check_response(data, response)


def main(argv: list[str]) -> None:
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

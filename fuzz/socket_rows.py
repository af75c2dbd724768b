"""Fuzz harness 3: socket rows and static sockets (`sipproxy.shared.socketspec`).

Each input is text (UTF-8, invalid bytes replaced). `static <rest>` is a static socket of the config file
(`parse_static_socket(rest)`); anything else is one row of the `sockets` table, its columns separated by
`|` in the order socket, advertised, tag, flags, tos (a missing column is NULL; a tos column `#N` is the
integer N, as a database may return it). The harness fails unless

- the parse returns a SocketSpec or raises RowError with a non-empty message, and nothing else: the
  supervisor's reload and the operator's webhook catch RowError alone, so any other exception would fail a
  whole reload (every row) or the webhook instead of refusing one row;
- what a spec says reads back the same: the row written from a parsed spec (its socket string, advertised
  string, tag, flags and tos) parses to an equal spec, and so does the static-socket line written from a
  parsed static socket.

Host names are resolved by a fixed table (no DNS: a fuzzer must not send queries), with a name that
resolves to two addresses and one that does not resolve. The module is pure Python: atheris instruments
`sipproxy.shared.socketspec`; no sanitizer runtime is loaded.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["sipproxy.shared.socketspec"]):
    from sipproxy.shared.socketspec import RowError, SocketSpec, parse_row, parse_static_socket

NAMES = {
    "proxy.example": ["192.0.2.10"],
    "v6.example": ["2001:db8::10"],
    "twice.example": ["192.0.2.11", "192.0.2.12"],
    "localhost": ["127.0.0.1"],
}


def resolve(name: str) -> list[str]:
    if name in NAMES:
        return NAMES[name]
    raise RowError(f"host {name!r} does not resolve")


class Violation(AssertionError):
    pass


def row_columns(text: str) -> tuple[str | None, ...]:
    columns: list[str | None] = list(text.split("|", 4))
    return tuple(columns + [None] * (5 - len(columns)))


def parse_text(text: str) -> SocketSpec:
    if text.startswith("static "):
        return parse_static_socket(text[len("static ") :], resolve)
    socket, advertised, tag, flags, tos = row_columns(text)
    tos_value: str | int | None = tos
    if tos is not None and tos.startswith("#") and tos[1:].isascii() and tos[1:].lstrip("-").isdigit():
        tos_value = int(tos[1:])
    return parse_row(socket, advertised, tag, flags, tos_value, resolve=resolve)


def as_row(spec: SocketSpec) -> SocketSpec:
    flags = ",".join(spec.flags_tuple) or None
    return parse_row(spec.socket_str, spec.advertised_str, spec.tag, flags, spec.tos, resolve=resolve)


def as_static(spec: SocketSpec) -> SocketSpec:
    words = [spec.socket_str]
    if spec.advertised_str is not None:
        words += ["as", spec.advertised_str]
    if spec.tag is not None:
        words += ["tag", spec.tag]
    if spec.use_workers is not None:
        words += ["use_workers", str(spec.use_workers)]
    words += list(spec.flags_tuple)
    return parse_static_socket(" ".join(words), resolve)


def check(text: str) -> SocketSpec | None:
    try:
        spec = parse_text(text)
    except RowError as exc:
        if not str(exc).strip():
            raise Violation(f"RowError without a reason for {text!r}") from exc
        return None
    if text.startswith("static "):
        again = as_static(spec)
        if again != spec or again.use_workers != spec.use_workers:
            raise Violation(f"static socket {text!r} -> {spec!r}, written back and read as {again!r}")
    else:
        again = as_row(spec)
        if again != spec:
            raise Violation(f"row {text!r} -> {spec!r}, written back and read as {again!r}")
    return spec


def test_one_input(data: bytes) -> None:
    check(data.decode("utf-8", "replace"))


def main(argv: list[str]) -> None:
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

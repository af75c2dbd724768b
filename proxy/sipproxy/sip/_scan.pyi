# The C scanner (_scan.c); sipproxy.sip.scan describes the tuples.
_Route = tuple[str, int | None, bool, str | None]

def scan_request(
    data: bytes, /
) -> (
    tuple[
        bytes,
        bytes,
        str,
        int | None,
        bytes,
        str,
        bool,
        bool,
        bytes,
        bytes,
        int,
        int,
        int,
        tuple[_Route, ...],
    ]
    | None
): ...
def scan_response(
    data: bytes, /
) -> tuple[bytes, bytes, int | None, bytes, str, str, int | None, str | None, int | None] | None: ...

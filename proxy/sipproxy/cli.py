"""Command line entry point of the proxy (placeholder until the proxy issue lands)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("sipproxy: not implemented yet", file=sys.stderr)
    return 2

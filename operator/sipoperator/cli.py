"""Command line entry point of the operator (placeholder until the operator issue lands)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("sipsockets-operator: not implemented yet", file=sys.stderr)
    return 2

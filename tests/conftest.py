"""Checks before any test runs: the compiled SIP core is built from the sources being tested."""

from __future__ import annotations

from pathlib import Path

import pytest

SIP_CORE = Path(__file__).resolve().parents[1] / "proxy" / "sipproxy" / "sip"


def stale_extensions(core: Path = SIP_CORE) -> list[str]:
    """Sources of the SIP core edited after their mypyc extension module was built (setup.py)."""
    stale = []
    for source in sorted(core.glob("*.py")):
        for ext in core.glob(f"{source.stem}.*.so"):
            if ext.stat().st_mtime < source.stat().st_mtime:
                stale.append(source.name)
    return stale


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_extensions()
    if stale:
        pytest.exit(
            f"the compiled SIP core is older than {', '.join(stale)}: the tests would run the old code. "
            "Run `make venv` to rebuild it (or delete proxy/sipproxy/sip/*.so to test the pure-Python core).",
            returncode=2,
        )

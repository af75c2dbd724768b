"""Checks before any test runs: the compiled SIP core is built from the sources being tested."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIP_CORE = ROOT / "proxy" / "sipproxy" / "sip"
# Compiled in the same build as the SIP core (setup.py), from outside its package.
ALSO_COMPILED = (ROOT / "proxy" / "sipproxy" / "worker" / "pool_active.py",)


def stale_extensions(
    core: Path = SIP_CORE, root: Path = ROOT, also: tuple[Path, ...] = ALSO_COMPILED
) -> list[str]:
    """Sources of the SIP core (and `also`) edited after the mypyc build (setup.py) that would shadow them.

    The compiled code lives in one shared library at the top of the checkout (`*__mypyc*.so`); the
    per-module `.so` beside each source is a small stub that a rebuild leaves untouched when unchanged, so
    the shared library's time is the build's time.
    """
    stubs = list(core.glob("*.so"))
    if not stubs:
        return []  # not compiled: the sources run as they are
    libraries = list(root.glob("*__mypyc*.so"))
    built = min((lib.stat().st_mtime for lib in libraries), default=0.0)
    stale = [
        source.name
        for source in [*core.glob("*.py"), *also]
        if any(source.parent.glob(f"{source.stem}.*.so")) and source.stat().st_mtime > built
    ]
    # Extensions written in C (the scanner) are built each into their own library.
    for source in core.glob("*.c"):
        own = [lib.stat().st_mtime for lib in core.glob(f"{source.stem}.*.so")]
        if source.stat().st_mtime > min(own, default=0.0):
            stale.append(source.name)
    return sorted(stale)


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_extensions()
    if stale:
        pytest.exit(
            f"the compiled SIP core is older than {', '.join(stale)}: the tests would run the old code. "
            "Run `make venv` to rebuild it (or delete proxy/sipproxy/sip/*.so to test the pure-Python core).",
            returncode=2,
        )

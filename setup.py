"""Build hook: the SIP core (proxy/sipproxy/sip) and the loop an active UDP pool worker runs per datagram
(proxy/sipproxy/worker/pool_active.py) are compiled to C extension modules with mypyc, beside the one-pass
scanner of usual messages written in C (`_scan.c`).

Everything else about the distribution is in pyproject.toml. The compiled modules are the same source as
the pure-Python ones, and the scanner only lets the engine skip its general path on messages that path
would forward the same way, so a build without a C compiler can set SIPSOCKETS_PURE_PYTHON=1 and get an
identical proxy, only slower per message (docs/benchmarks.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from setuptools import Extension, setup

SIP_CORE = sorted(p.as_posix() for p in Path("proxy/sipproxy/sip").glob("*.py") if p.name != "__init__.py")
POOL_LOOP = ["proxy/sipproxy/worker/pool_active.py"]


def ext_modules() -> list[Any]:
    if os.environ.get("SIPSOCKETS_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    scanner = Extension("sipproxy.sip._scan", ["proxy/sipproxy/sip/_scan.c"], extra_compile_args=["-O2"])
    return [*mypycify(SIP_CORE + POOL_LOOP, opt_level="3", group_name="sipproxy_sip_core"), scanner]


setup(ext_modules=ext_modules())

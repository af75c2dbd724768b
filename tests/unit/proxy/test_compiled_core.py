"""The SIP core runs compiled (mypyc, setup.py) with its C scanner unless the install asked for pure
Python, and a compiled module older than its source is caught before it can shadow an edit."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from tests.conftest import ALSO_COMPILED, SIP_CORE, stale_extensions

MODULES = sorted(p.stem for p in SIP_CORE.glob("*.py") if p.name != "__init__.py")


@pytest.mark.skipif(os.environ.get("SIPSOCKETS_PURE_PYTHON") == "1", reason="installed uncompiled on purpose")
def test_every_module_of_the_sip_core_is_the_compiled_one() -> None:
    for name in MODULES:
        module = importlib.import_module(f"sipproxy.sip.{name}")
        assert str(module.__file__).endswith(".so"), f"sipproxy.sip.{name} runs uncompiled: {module.__file__}"
    for source in ALSO_COMPILED:
        module = importlib.import_module(f"sipproxy.worker.{source.stem}")
        assert str(module.__file__).endswith(".so"), f"{source.name} runs uncompiled: {module.__file__}"
    scan = importlib.import_module("sipproxy.sip.scan")
    assert scan.SCAN_REQUEST is not None and scan.SCAN_RESPONSE is not None, "built without the C scanner"


def test_a_source_edited_after_the_build_is_reported(tmp_path: Path) -> None:
    core = tmp_path / "sip"
    core.mkdir()
    for name in ("engine", "via"):
        (core / f"{name}.py").write_text("x = 1\n")
        (core / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    library = tmp_path / "sipproxy_sip_core__mypyc.cpython-311-x86_64-linux-gnu.so"
    library.write_bytes(b"")
    built = library.stat().st_mtime
    for stub in core.glob("*.so"):
        os.utime(stub, (built - 100, built - 100))  # stubs a rebuild left untouched
    assert stale_extensions(core, tmp_path, ()) == []
    os.utime(core / "via.py", (built + 10, built + 10))
    assert stale_extensions(core, tmp_path, ()) == ["via.py"]
    scanner = core / "_scan.c"
    scanner.write_text("/* C */\n")
    (core / "_scan.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    os.utime(scanner, (built - 50, built - 50))
    assert stale_extensions(core, tmp_path, ()) == ["via.py"]
    os.utime(scanner, (built + 10, built + 10))  # the C source edited after its own library was built
    assert stale_extensions(core, tmp_path, ()) == ["_scan.c", "via.py"]
    library.unlink()  # stubs without their library: nothing compiled can be trusted
    assert stale_extensions(core, tmp_path, ()) == ["_scan.c", "engine.py", "via.py"]

"""The SIP core runs compiled (mypyc, setup.py) unless the install asked for pure Python, and a compiled
module older than its source is caught before it can shadow an edit."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from tests.conftest import SIP_CORE, stale_extensions

MODULES = sorted(p.stem for p in SIP_CORE.glob("*.py") if p.name != "__init__.py")


@pytest.mark.skipif(os.environ.get("SIPSOCKETS_PURE_PYTHON") == "1", reason="installed uncompiled on purpose")
def test_every_module_of_the_sip_core_is_the_compiled_one() -> None:
    for name in MODULES:
        module = importlib.import_module(f"sipproxy.sip.{name}")
        assert str(module.__file__).endswith(".so"), f"sipproxy.sip.{name} runs uncompiled: {module.__file__}"


def test_a_source_edited_after_the_build_is_reported(tmp_path: Path) -> None:
    for name in ("engine", "via"):
        (tmp_path / f"{name}.py").write_text("x = 1\n")
        (tmp_path / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert stale_extensions(tmp_path) == []
    source = tmp_path / "via.py"
    built = (tmp_path / "via.cpython-311-x86_64-linux-gnu.so").stat().st_mtime
    os.utime(source, (built + 10, built + 10))
    assert stale_extensions(tmp_path) == ["via.py"]

"""Import the SIP core from its Python sources, with the sanitized scanner as `sipproxy.sip._scan`.

The editable checkout has mypyc's compiled modules beside the sources, and Python prefers an extension
module over a `.py` file of the same name. A harness wants the sources instead: atheris can only count
coverage in Python bytecode it instruments, and the compiled modules have none. This finder, put first on
`sys.meta_path`, answers for `sipproxy.sip.*` with the `.py` file (a plain SourceFileLoader, which
atheris' import hook knows how to instrument) and for `sipproxy.sip._scan` with the library that
fuzz/sanitized.py built. Everything outside the SIP core imports as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import CodeType, ModuleType

from fuzz.sanitized import ROOT

CORE = ROOT / "proxy" / "sipproxy" / "sip"
PACKAGE = "sipproxy.sip."


Instrument = Callable[[CodeType], CodeType]


class InstrumentedLoader(importlib.machinery.SourceFileLoader):
    """A module's source, its bytecode passed through `instrument` (atheris' coverage hooks)."""

    def __init__(self, fullname: str, path: str, instrument: Instrument) -> None:
        super().__init__(fullname, path)
        self.instrument = instrument

    def get_code(self, fullname: str) -> CodeType:
        code = super().get_code(fullname)
        if code is None:
            raise ImportError(f"no code for {fullname}", name=fullname)
        return self.instrument(code)


class PureCoreFinder(importlib.abc.MetaPathFinder):
    def __init__(self, scanner: Path | None, instrument: Instrument | None, sources: bool = True) -> None:
        self.scanner = scanner
        self.instrument = instrument
        self.sources = sources

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PACKAGE):
            return None
        name = fullname[len(PACKAGE) :]
        if name == "_scan":
            if self.scanner is None:
                return None  # no scanner at all: sipproxy.sip.scan falls back to the general path
            loader: importlib.abc.Loader = importlib.machinery.ExtensionFileLoader(
                fullname, str(self.scanner)
            )
            return importlib.util.spec_from_file_location(fullname, self.scanner, loader=loader)
        source = CORE / f"{name}.py"
        if not self.sources or "." in name or not source.exists():
            return None
        if self.instrument is None:
            loader = importlib.machinery.SourceFileLoader(fullname, str(source))
        else:
            loader = InstrumentedLoader(fullname, str(source), self.instrument)
        return importlib.util.spec_from_file_location(fullname, source, loader=loader)


def use_pure_core(scanner: Path | None, instrument: Instrument | None = None, sources: bool = True) -> None:
    """Must run before anything imports the SIP core; `instrument` patches each module's bytecode.
    `sources=False` keeps the compiled modules (as the proxy runs them) and replaces the scanner only."""
    loaded = [name for name in sys.modules if name.startswith(PACKAGE)]
    if loaded:
        raise RuntimeError(f"the SIP core is already imported ({', '.join(sorted(loaded))})")
    sys.meta_path.insert(0, PureCoreFinder(scanner, instrument, sources))


def check_pure_core(scanner: Path | None, sources: bool = True) -> None:
    """Fail loudly if the core or the scanner is not the one asked for: with the compiled core where
    its sources were wanted, the fuzzer would be blind to the engine's branches."""
    from sipproxy.sip import engine, scan

    if str(engine.__file__).endswith(".py") != sources:
        raise RuntimeError(f"sipproxy.sip.engine came from {engine.__file__}")
    if scanner is not None and scan.SCAN_REQUEST is None:
        raise RuntimeError(f"the sanitized scanner {scanner} did not load")
    if scanner is not None:
        from sipproxy.sip import _scan

        if Path(str(_scan.__file__)) != scanner:
            raise RuntimeError(f"sipproxy.sip._scan came from {_scan.__file__}, not {scanner}")

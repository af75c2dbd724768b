"""The C scanner built for fuzzing, and the environment a harness process needs to load it.

`_scan.c` is compiled with clang into build/fuzz/ext/ (never over the normal build beside its source):
AddressSanitizer and UndefinedBehaviorSanitizer catch a bad memory access or undefined arithmetic as it
happens, `-fno-sanitize-recover=all` makes every UBSan report fatal (so the fuzzer keeps the input), and
`-fsanitize=fuzzer-no-link` adds the SanitizerCoverage hooks libFuzzer reads, so the fuzzer also steers by
the branches taken in C. The library is linked without any runtime: the sanitizers and libFuzzer come from
atheris' `asan_with_fuzzer.so`, preloaded into the harness process (atheris' guidance for native
extensions: libFuzzer's coverage symbols must win over the sanitizers' weak ones, which a preloaded runtime
with libFuzzer inside ensures). `PYTHONMALLOC=malloc` gives every Python object its own malloc'd block, so
ASan's redzones sit right after a bytes object instead of inside a pymalloc arena.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "proxy" / "sipproxy" / "sip" / "_scan.c"
BUILD = ROOT / "build" / "fuzz"
EXT_DIR = BUILD / "ext"
FLAGS = [
    "-shared",
    "-fPIC",
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined,fuzzer-no-link",
    "-fno-sanitize-recover=all",
]


class BuildError(RuntimeError):
    pass


def scanner_path() -> Path:
    return EXT_DIR / f"_scan{sysconfig.get_config_var('EXT_SUFFIX')}"


def build_extension(source: Path, out: Path) -> Path:
    """Compile one C extension module with the sanitizer and coverage flags."""
    clang = shutil.which("clang")
    if clang is None:
        raise BuildError("clang is needed to build the sanitized scanner (Debian package `clang`)")
    out.parent.mkdir(parents=True, exist_ok=True)
    include = sysconfig.get_paths()["include"]
    tmp = out.with_suffix(".tmp")
    cmd = [clang, *FLAGS, f"-I{include}", str(source), "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    tmp.replace(out)
    return out


def build_scanner(force: bool = False) -> Path:
    """The sanitized scanner, rebuilt when `_scan.c` is newer than it."""
    out = scanner_path()
    if not force and out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    return build_extension(SOURCE, out)


def runtime_library() -> Path:
    """atheris' ASan runtime with libFuzzer linked in (UBSan's handlers are part of it)."""
    import atheris

    path = Path(atheris.path()) / "asan_with_fuzzer.so"
    if not path.exists():
        raise BuildError(f"{path} is missing: this atheris install has no sanitizer runtime")
    return path


def sanitized_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a harness process that loads the sanitized scanner."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = str(runtime_library())
    env["PYTHONMALLOC"] = "malloc"
    # CPython keeps objects alive until exit on purpose: leak reports would be noise. A sanitizer report
    # aborts, so libFuzzer's deadly-signal handler saves the input.
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:symbolize=1:allocator_may_return_null=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:abort_on_error=1"
    return env


if __name__ == "__main__":
    print(build_scanner(force="--force" in sys.argv[1:]))

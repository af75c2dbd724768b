"""Container images without a registry: built here, cached, imported into the local node's containerd.

- base: a Debian root filesystem from `debootstrap` (python3 and its venv module), the BASE_IMAGE of the
  project's Dockerfile; build: the same plus a C compiler and Python's headers, its BUILD_IMAGE;
- pause: the pod sandbox image, a tiny static program built with Go;
- proxy and operator: `buildah bud --target proxy|operator` of the Dockerfile on those;
- postgresql: Debian's `postgresql` package with an entry point that honours the POSTGRES_* variables of
  the official image (what the chart's StatefulSet sets).

Each image is tagged with a hash of its inputs and rebuilt only when they change; the archives that
containerd imports are kept in ~/.cache/sipsockets/images.

    python -m devenv.images build      # build what is missing, print the references
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devenv import binaries
from devenv.localcluster import layout

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Bump when the way an image is made changes without its listed inputs changing.
RECIPE_VERSION = "1"

HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DOWNLOAD_ATTEMPTS = 3
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# The Dockerfile's build stages (BUILD_IMAGE) install the distribution, the proxy's compiling the SIP core:
# the base, a C compiler and Python's headers.
BUILD_PACKAGES = (*BASE_PACKAGES, "python3-dev", "gcc", "libc6-dev")
POSTGRES_PACKAGES = ("postgresql", "ca-certificates")
# The chart runs PostgreSQL as uid/gid 999 (the official image's user); initdb needs a passwd entry for it.
POSTGRES_UID = 999

# Image references the chart and the node use (the contract with tests/e2e/cluster).
PAUSE_REF = layout.PAUSE_IMAGE
PROXY_REPO = "docker.io/sipsockets/proxy"
OPERATOR_REPO = "docker.io/sipsockets/operator"
POSTGRES_REPO = "docker.io/sipsockets/postgresql"

_PAUSE_GO = """package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

// The pod sandbox: hold the namespaces, reap orphans, exit on SIGINT/SIGTERM.
func main() {
\tsigs := make(chan os.Signal, 4)
\tsignal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
\tfor s := range sigs {
\t\tif s == syscall.SIGCHLD {
\t\t\tfor {
\t\t\t\tvar ws syscall.WaitStatus
\t\t\t\tpid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
\t\t\t\tif pid <= 0 || err != nil {
\t\t\t\t\tbreak
\t\t\t\t}
\t\t\t}
\t\t\tcontinue
\t\t}
\t\tos.Exit(0)
\t}
}
"""

_POSTGRES_ENTRYPOINT = """#!/bin/sh
# Initialise PGDATA on first start from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, then run the server.
set -eu
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
mkdir -p "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > "$pwfile"
  "$bindir/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -A scram-sha-256 -E UTF8 >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != "postgres" ]; then
    "$bindir/postgres" --single -D "$PGDATA" -c listen_addresses= postgres >/dev/null <<EOF
CREATE DATABASE "$POSTGRES_DB" OWNER "$POSTGRES_USER";
EOF
  fi
fi
exec "$bindir/postgres" -D "$PGDATA" -c listen_addresses='*' \\
  -c unix_socket_directories=/var/run/postgresql "$@"
"""


def cache_dir() -> Path:
    return binaries.cache_dir().parent / "images"


def say(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


def _run(
    cmd: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(cmd), capture_output=True, text=True, check=False, timeout=timeout, cwd=cwd, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def tree_digest(paths: Iterable[Path], root: Path = REPO) -> str:
    """Hash of file names and contents below paths (caches and bytecode excluded)."""
    h = hashlib.sha256()
    files: list[Path] = []
    for p in paths:
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += [f for f in p.rglob("*") if f.is_file()]
    for f in sorted(files):
        rel = f.relative_to(root).as_posix()
        # Build output of this checkout (bytecode, the in-place compiled SIP core) is not an input.
        if "__pycache__" in rel or rel.endswith((".pyc", ".so")) or "/.mypy_cache/" in rel:
            continue
        h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# -- buildah -----------------------------------------------------------------------------------------------


def _buildah(*args: str, timeout: float = 1800) -> str:
    store = cache_dir() / "buildah"
    cmd = [
        "buildah",
        f"--root={store / 'storage'}",
        f"--runroot=/run/sipsockets/buildah-{_digest(str(store))}",
        "--storage-driver=overlay",
        *args,
    ]
    return _run(cmd, timeout=timeout).stdout.strip()


def _image_exists(ref: str) -> bool:
    try:
        _buildah("inspect", "--type=image", ref, timeout=60)
    except RuntimeError:
        return False
    return True


def _export(ref: str) -> Path:
    """A docker-archive of the image (containerd's importer keeps its name from the RepoTags)."""
    archives = cache_dir() / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    out = archives / (ref.replace("/", "_").replace(":", "_") + ".tar")
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _buildah("push", "--quiet", ref, f"docker-archive:{tmp}:{ref}")
        tmp.rename(out)
        # Older builds of the same image are rarely used again; the newest two stay (another run may be
        # importing the previous one right now).
        repo = ref.rpartition(":")[0].replace("/", "_").replace(":", "_")
        older = sorted(archives.glob(f"{repo}_*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in older[2:]:
            old.unlink(missing_ok=True)
    return out


# -- root filesystems --------------------------------------------------------------------------------------


def _rootfs(name: str, packages: Sequence[str], prepare: str = "", apt: bool = False) -> tuple[Path, str]:
    """A debootstrap'ed Debian tree, cached by its package list; `prepare` runs in the chroot first.

    With `prepare` or `apt` the packages are installed by apt in the chroot after a minimal debootstrap:
    debootstrap's own --include trips over packages that bring alternatives (gcc: "file already exists").
    """
    key = _digest(RECIPE_VERSION, SUITE, MIRROR, *sorted(packages), prepare)
    target = cache_dir() / "rootfs" / f"{name}-{key}"
    if (target / ".complete").exists():
        return target, key
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    say(f"debootstrap {name} rootfs ({', '.join(packages)}) ...")
    apt = apt or bool(prepare)
    include = ["passwd", *([] if apt else packages)]
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(include)}", SUITE, str(tmp), MIRROR]
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        # The mirror sometimes drops a download ("Couldn't download packages"): start over, a few times.
        try:
            _run(argv, timeout=1800)
            break
        except RuntimeError as exc:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise
            say(f"debootstrap {name} failed (attempt {attempt}), retrying: {str(exc).splitlines()[-1][:200]}")
            shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            time.sleep(10 * attempt)
    if prepare:
        # Users that must exist before a package's maintainer scripts create their own.
        _run(["chroot", str(tmp), "sh", "-ec", prepare], timeout=300)
    if apt:
        _chroot_apt(tmp, packages)
    _run(["chroot", str(tmp), "apt-get", "clean"], timeout=300)
    for sub in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        d = tmp / sub
        if d.is_dir():
            shutil.rmtree(d)
            d.mkdir()
    (tmp / ".complete").write_text(key)
    tmp.rename(target)
    say(f"{name} rootfs ready in {int(time.monotonic() - started)}s")
    return target, key


def _chroot_apt(root: Path, packages: Sequence[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    # No init system in a chroot: maintainer scripts must not try to start services.
    policy = root / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        retries = f"-oAcquire::Retries={DOWNLOAD_ATTEMPTS}"
        _run(["chroot", str(root), "apt-get", retries, "update", "-qq"], env=env, timeout=600)
        _run(
            ["chroot", str(root), "apt-get", retries, "install", "-y", "-qq", "--no-install-recommends",
             *packages],
            env=env,
            timeout=1200,
        )  # fmt: skip
    finally:
        policy.unlink(missing_ok=True)


def _image_from_rootfs(ref: str, rootfs: Path, config: Sequence[str]) -> None:
    ctr = _buildah("from", "scratch")
    try:
        _buildah("copy", "--quiet", ctr, f"{rootfs}/.", "/")
        _buildah("config", *config, ctr)
        _buildah("commit", "--quiet", "--rm", ctr, ref)
    except Exception:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
        raise


# -- the images --------------------------------------------------------------------------------------------


def base_image(name: str = "base", packages: Sequence[str] = BASE_PACKAGES, apt: bool = False) -> str:
    rootfs, key = _rootfs(name, packages, apt=apt)
    ref = f"localhost/sipsockets/{name}:{key}"
    if not _image_exists(ref):
        say(f"committing {ref}")
        _image_from_rootfs(ref, rootfs, ["--env", "LANG=C.UTF-8", "--cmd", "/bin/sh"])
    return ref


def pause_image() -> str:
    ref = PAUSE_REF
    if _image_exists(ref):
        return ref
    src = cache_dir() / "pause"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text("module sipsockets.local/pause\n\ngo 1.21\n")
    (src / "main.go").write_text(_PAUSE_GO)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false")
    _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", "pause", "."], cwd=src, env=env, timeout=600)
    ctr = _buildah("from", "scratch")
    _buildah("copy", "--quiet", "--chmod=0755", ctr, str(src / "pause"), "/pause")
    _buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr)
    _buildah("commit", "--quiet", "--rm", ctr, ref)
    return ref


DOCKERFILE = REPO / "Dockerfile"


def _context_digest() -> str:
    inputs = [
        DOCKERFILE,
        REPO / "pyproject.toml",
        REPO / "setup.py",
        REPO / "README.md",
        REPO / ".dockerignore",
        REPO / "proxy" / "sipproxy",
        REPO / "operator" / "sipoperator",
    ]
    return tree_digest([p for p in inputs if p.exists()])


def dockerfile_image(repo: str, target: str, base: str, build: str) -> str:
    """The Dockerfile's `target` stage (proxy or operator) built on the local base and build images."""
    ref = f"{repo}:dev-{_digest(RECIPE_VERSION, target, base, build, _context_digest())}"
    if _image_exists(ref):
        return ref
    say(f"buildah bud --target {target} -> {ref}")
    # pip inside the build trusts what this machine trusts (a TLS-inspecting proxy's CA, for one), through
    # build-time mounts only: nothing of the host ends up in the image.
    pip_conf = cache_dir() / "build-pip.conf"
    pip_conf.write_text("[global]\ncert = /etc/ssl/build-host-ca.crt\n")
    started = time.monotonic()
    _buildah(
        "bud",
        "--quiet",
        "--isolation=chroot",
        "--pull=false",
        "--layers=false",
        f"--target={target}",
        f"--build-arg=BASE_IMAGE={base}",
        f"--build-arg=BUILD_IMAGE={build}",
        f"--volume={HOST_CA_BUNDLE}:/etc/ssl/build-host-ca.crt:ro",
        f"--volume={pip_conf}:/etc/pip.conf:ro",
        "-f",
        str(DOCKERFILE),
        "-t",
        ref,
        str(REPO),
        timeout=2400,
    )
    say(f"built {ref} in {int(time.monotonic() - started)}s")
    return ref


def postgres_image() -> str:
    prepare = (
        f"groupadd --system --gid {POSTGRES_UID} postgres && "
        f"useradd --system --uid {POSTGRES_UID} --gid {POSTGRES_UID} --home-dir /var/lib/postgresql "
        "--shell /bin/sh postgres"
    )
    rootfs, key = _rootfs("postgresql", POSTGRES_PACKAGES, prepare)
    ref = f"{POSTGRES_REPO}:15-{_digest(key, _POSTGRES_ENTRYPOINT)}"
    if _image_exists(ref):
        return ref
    entry = cache_dir() / "postgres-entrypoint.sh"
    entry.write_text(_POSTGRES_ENTRYPOINT)
    ctr = _buildah("from", "scratch")
    _buildah("copy", "--quiet", ctr, f"{rootfs}/.", "/")
    _buildah("copy", "--quiet", "--chmod=0755", ctr, str(entry), "/usr/local/bin/postgres-entrypoint")
    _buildah(
        "config",
        "--env",
        "LANG=C.UTF-8",
        "--env",
        "PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin",
        "--user",
        f"{POSTGRES_UID}:{POSTGRES_UID}",
        "--entrypoint",
        '["/usr/local/bin/postgres-entrypoint"]',
        "--port",
        "5432/tcp",
        ctr,
    )
    _buildah("commit", "--quiet", "--rm", ctr, ref)
    return ref


@dataclass(frozen=True)
class Images:
    pause: str
    proxy: str
    operator: str
    postgresql: str

    def all(self) -> list[str]:
        return [self.pause, self.proxy, self.operator, self.postgresql]

    @staticmethod
    def split(ref: str) -> tuple[str, str]:
        repo, _, tag = ref.rpartition(":")
        return repo, tag


def build_all(*, with_app: bool = True) -> Images:
    """Build (or find cached) every image, one heavy step at a time."""
    started = time.monotonic()
    pause = pause_image()
    proxy = operator = postgresql = ""
    if with_app:
        base = base_image()
        build = base_image("build", BUILD_PACKAGES, apt=True)
        proxy = dockerfile_image(PROXY_REPO, "proxy", base, build)
        operator = dockerfile_image(OPERATOR_REPO, "operator", base, build)
        postgresql = postgres_image()
    say(f"images ready in {int(time.monotonic() - started)}s")
    return Images(pause=pause, proxy=proxy, operator=operator, postgresql=postgresql)


def import_into(containerd_socket: Path, refs: Iterable[str]) -> None:
    """Import images into containerd's k8s.io namespace (where the CRI plugin looks)."""
    for ref in refs:
        if not ref:
            continue
        archive = _export(ref)
        _run(
            ["ctr", f"--address={containerd_socket}", "-n", "k8s.io", "images", "import", str(archive)],
            timeout=600,
        )  # fmt: skip


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        images = build_all(with_app="--pause-only" not in argv)
        print(json.dumps(images.__dict__, indent=1))
        return 0
    print("usage: python -m devenv.images build [--pause-only]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The Kubernetes binaries the e2e tier and the demo run: built once with Go, cached outside the repo.

There is no Docker engine and no release download here, only the Go module proxy, so etcd, kube-apiserver,
kubectl and helm are compiled from their published modules. `k8s.io/kubernetes` cannot be required as is
(its go.mod pins the staging modules at v0.0.0), so a small wrapper module replaces each staging module with
its published v0.X.Y twin.

A user who already has the binaries points KUBEBUILDER_ASSETS at them (the setup-envtest convention).

    python -m devenv.binaries ensure [NAME...]
    python -m devenv.binaries path NAME
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

K8S_VERSION = "1.35.4"
ETCD_VERSION = "3.6.16"
HELM_VERSION = "3.22.0"
ALL = ("etcd", "kube-apiserver", "kubectl", "helm")

_K8S_COMMANDS = {"kube-apiserver", "kubectl", "kube-controller-manager", "kube-scheduler", "kubelet"}


def cache_dir() -> Path:
    base = os.environ.get("SIPSOCKETS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sipsockets"
    )
    return Path(base) / f"k8s-v{K8S_VERSION}-etcd-v{ETCD_VERSION}-helm-v{HELM_VERSION}"


def _assets_dirs() -> list[Path]:
    dirs = []
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        dirs.append(Path(assets))
    dirs.append(cache_dir() / "bin")
    return dirs


def _kubectl_on_path_fits() -> Path | None:
    """A kubectl on PATH is used only within one minor version of the API server (kubectl's skew policy)."""
    found = shutil.which("kubectl")
    if not found:
        return None
    try:
        out = subprocess.run(
            [found, "version", "--client", "-o", "json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'"minor":\s*"(\d+)', out)
    want = int(K8S_VERSION.split(".")[1])
    return Path(found) if m and abs(int(m.group(1)) - want) <= 1 else None


def find(name: str) -> Path | None:
    for d in _assets_dirs():
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    if name == "kubectl":
        return _kubectl_on_path_fits()
    return None


def binary(name: str) -> Path:
    p = find(name)
    if p is None:
        raise FileNotFoundError(f"{name} is not built yet: run `python -m devenv.binaries ensure {name}`")
    return p


def ensure(names: Iterable[str] = ALL) -> dict[str, Path]:
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        if name not in ALL and name not in _K8S_COMMANDS:
            raise ValueError(f"unknown binary {name!r}")
    missing = [n for n in wanted if find(n) is None]
    if missing:
        _check_go()
        k8s = [n for n in missing if n in _K8S_COMMANDS]
        if k8s:
            _build_k8s(k8s)
        if "etcd" in missing:
            _build_etcd()
        if "helm" in missing:
            _go_install("helm", f"helm.sh/helm/v3/cmd/helm@v{HELM_VERSION}", "helm")
    return {n: binary(n) for n in wanted}


def _check_go() -> None:
    if shutil.which("go") is None:
        raise RuntimeError("building the Kubernetes binaries needs Go (1.25 or newer) on PATH")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["CGO_ENABLED"] = "0"
    return env


def _run_with_progress(label: str, cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Run a Go build, printing a heartbeat: a cold kube-apiserver build takes minutes on two cores."""
    print(f"[binaries] building {label} ...", flush=True)
    started = time.monotonic()
    log = cwd / f"build-{label.replace(' ', '_')}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(30):
                lines = log.read_text(errors="replace").count("\n")
                print(
                    f"[binaries]   {label}: {int(time.monotonic() - started)}s, {lines} packages so far",
                    flush=True,
                )

        t = threading.Thread(target=heartbeat, daemon=True)
        t.start()
        rc = proc.wait()
        done.set()
        t.join()
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"building {label} failed (exit {rc}); last lines of {log}:\n{tail}")
    print(f"[binaries] built {label} in {int(time.monotonic() - started)}s", flush=True)


def _staging_modules(kubernetes_mod: str) -> list[str]:
    return re.findall(r"^\s*(k8s\.io/[\w.-]+) v0\.0\.0$", kubernetes_mod, flags=re.M)


def _write_k8s_wrapper(src: Path, env: dict[str, str]) -> None:
    src.mkdir(parents=True, exist_ok=True)
    gomod = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{K8S_VERSION}"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r'"GoMod":\s*"([^"]+)"', gomod)
    if not m:
        raise RuntimeError(f"could not locate k8s.io/kubernetes@v{K8S_VERSION}'s go.mod:\n{gomod}")
    staging = _staging_modules(Path(m.group(1)).read_text())
    minor = "v0." + K8S_VERSION.split(".", 1)[1]
    replaces = "\n".join(f"\t{mod} => {mod} {minor}" for mod in staging)
    (src / "go.mod").write_text(
        "module sipsockets.local/k8sbins\n\ngo 1.25.0\n\n"
        f"require k8s.io/kubernetes v{K8S_VERSION}\n\nreplace (\n{replaces}\n)\n"
    )
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"' for c in sorted(_K8S_COMMANDS))
    (src / "tools.go").write_text(f"//go:build tools\n\npackage k8sbins\n\nimport (\n{imports}\n)\n")
    print("[binaries] resolving k8s.io/kubernetes dependencies (go mod tidy) ...", flush=True)
    subprocess.run(["go", "mod", "tidy"], cwd=src, env=env, check=True)


def _build_k8s(names: list[str]) -> None:
    env = _go_env()
    src = cache_dir() / "src" / "k8s"
    if not (src / "go.sum").exists():
        _write_k8s_wrapper(src, env)
    bindir = cache_dir() / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    major, minor, _ = K8S_VERSION.split(".")
    # Without these the binaries say v0.0.0: helm's kubeVersion checks and kubectl's skew warnings misfire.
    ldflags = " ".join(
        f"-X {pkg}.{k}={v}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for k, v in (
            ("gitVersion", f"v{K8S_VERSION}"),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    )
    for name in names:
        tmp = bindir / f".{name}.tmp"
        _run_with_progress(
            name,
            [
                "go",
                "build",
                "-v",
                "-trimpath",
                "-ldflags",
                f"-s -w {ldflags}",
                "-o",
                str(tmp),
                f"k8s.io/kubernetes/cmd/{name}",
            ],
            src,
            env,
        )
        tmp.rename(bindir / name)


def _build_etcd() -> None:
    # etcd's server module carries replace directives, so `go install module@version` refuses it; a wrapper
    # main module requiring it (and its sibling modules at the same version, as tidy resolves) builds fine.
    env = _go_env()
    src = cache_dir() / "src" / "etcd"
    src.mkdir(parents=True, exist_ok=True)
    if not (src / "go.sum").exists():
        (src / "go.mod").write_text(
            "module sipsockets.local/etcdbin\n\ngo 1.25.0\n\n"
            f"require go.etcd.io/etcd/server/v3 v{ETCD_VERSION}\n"
        )
        (src / "main.go").write_text(
            'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
            "func main() { etcdmain.Main(os.Args) }\n"
        )
        subprocess.run(["go", "mod", "tidy"], cwd=src, env=env, check=True)
    bindir = cache_dir() / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    tmp = bindir / ".etcd.tmp"
    _run_with_progress(
        "etcd", ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."], src, env
    )
    tmp.rename(bindir / "etcd")


def _go_install(name: str, pkg_at_version: str, built_name: str) -> None:
    env = _go_env()
    work = cache_dir() / "src" / name
    work.mkdir(parents=True, exist_ok=True)
    gobin = work / "bin"
    env["GOBIN"] = str(gobin)
    _run_with_progress(
        name, ["go", "install", "-v", "-trimpath", "-ldflags", "-s -w", pkg_at_version], work, env
    )
    bindir = cache_dir() / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    (gobin / built_name).rename(bindir / name)


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "ensure":
        for name, path in ensure(argv[1:] or ALL).items():
            print(f"[binaries] {name}: {path}")
        return 0
    if len(argv) == 2 and argv[0] == "path":
        print(binary(argv[1]))
        return 0
    print("usage: python -m devenv.binaries ensure [NAME...] | path NAME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

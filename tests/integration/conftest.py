"""Integration harness: real `sipproxy` processes on their own loopback addresses, SIPp, real databases."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import yaml
from sqlalchemy import MetaData, delete, insert, text, update

from devenv.databases import MariaDBServer, PostgresServer
from sipproxy.shared.schema import sockets_table
from sipproxy.supervisor.db_reader import make_engine

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).parent / "scenarios"
_used_ips: set[str] = set()


def loopback_ip() -> str:
    """A loopback address no other test of this run uses (127.0.0.0/8 is all routed to lo)."""
    while True:
        ip = f"127.{random.randint(64, 250)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        if ip not in _used_ips:
            _used_ips.add(ip)
            return ip


def free_port(ip: str) -> int:
    """A port free for both UDP and TCP on ip."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((ip, 0))
            port = int(u.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind((ip, port))
                    return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def wait_for(predicate: Callable[[], Any], what: str, limit: float = 60.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


class Proxy:
    """One `sipproxy --config` process; MI helpers; SIGTERM stop that checks no process is left."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        token: str | None = None,
        client_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.workdir = workdir
        self.client_tls = client_tls  # how MI calls are made when the config has mi.tls
        self.ip = loopback_ip()
        self.mi_port = free_port(self.ip)
        config = dict(config)
        mi = dict(config.get("mi") or {})
        mi.setdefault("listen", f"{self.ip}:{self.mi_port}")
        self.token = token
        if token is not None:
            token_file = workdir / "mi.token"
            token_file.write_text(token + "\n")
            mi["token_file"] = str(token_file)
        config["mi"] = mi
        config.setdefault("log_level", "info")
        self.config = config
        self.config_path = workdir / f"proxy-{self.mi_port}.yaml"
        self.log_path = workdir / f"proxy-{self.mi_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    @property
    def mi_url(self) -> str:
        scheme = "https" if self.config["mi"].get("tls") else "http"
        return f"{scheme}://{self.config['mi']['listen']}/{self.config['mi'].get('root', 'mi')}"

    @property
    def probe_listen(self) -> str:
        """Where /healthz, /readyz and /metrics are: the metrics listener when there is one."""
        listen: str = (self.config.get("metrics") or {}).get("listen") or self.config["mi"]["listen"]
        return listen

    def probe_url(self, path: str) -> str:
        tls = self.config["mi"].get("tls") and not self.config.get("metrics")
        return f"{'https' if tls else 'http'}://{self.probe_listen}{path}"

    def start(self, wait_ready: bool = True) -> Proxy:
        self.config_path.write_text(yaml.safe_dump(self.config))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sipproxy.cli", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        if wait_ready:
            wait_for(self._ready, f"proxy ready\n{self.log()}", 90)
            self.remember_pids()
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"proxy exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.probe_url("/readyz"), timeout=5, context=self.client_tls) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def http(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        hdrs = {"Content-Type": "application/json"}
        if self.token is not None:
            hdrs["Authorization"] = f"Bearer {self.token}"
        hdrs.update(headers or {})
        req = urllib.request.Request(self.mi_url, data=body, headers=hdrs, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120, context=self.client_tls) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def mi(self, method: str, params: Any = None, ident: Any = 1) -> dict[str, Any]:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": ident}
        if params is not None:
            request["params"] = params
        status, body = self.http(json.dumps(request).encode())
        assert status == 200, (status, body)
        response: dict[str, Any] = json.loads(body)
        return response

    def call(self, method: str, params: Any = None) -> Any:
        response = self.mi(method, params)
        assert "error" not in response, response
        return response["result"]

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.probe_url(path), timeout=30, context=self.client_tls) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def processes(self) -> list[dict[str, Any]]:
        procs: list[dict[str, Any]] = self.call("ps")["Processes"]
        return procs

    def remember_pids(self) -> None:
        for p in self.processes():
            if p["PID"]:
                self.seen_pids.add(int(p["PID"]))

    def stop(self) -> int:
        """SIGTERM; the proxy must exit 0 and leave no worker behind."""
        assert self.proc is not None
        if self.proc.poll() is None:
            try:
                self.remember_pids()
            except Exception:
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"proxy did not stop on SIGTERM:\n{self.log()}") from None
        wait_for(lambda: not any(pid_alive(p) for p in self.seen_pids), "every proxy process to exit", 30)
        return self.proc.returncode


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def make(
        config: dict[str, Any],
        token: str | None = None,
        start: bool = True,
        client_tls: ssl.SSLContext | None = None,
    ) -> Proxy:
        proxy = Proxy(tmp_path, config, token, client_tls)
        started.append(proxy)
        return proxy.start() if start else proxy

    yield make
    failures = []
    for proxy in started:
        if proxy.proc is None:
            continue
        code = proxy.stop()
        if code != 0:
            failures.append(f"proxy exit code {code}:\n{proxy.log()}")
    assert not failures, "\n".join(failures)


class SocketsTable:
    """Rows of the sockets table, written through the same async layer the proxy reads with."""

    def __init__(self, db_url: str, table_name: str = "sockets") -> None:
        self.db_url = db_url
        self.table = sockets_table(MetaData(), table_name)

    def _run(self, statement: Any) -> None:
        async def go() -> None:
            engine = make_engine(self.db_url)
            try:
                async with engine.begin() as conn:
                    await conn.execute(statement)
            finally:
                await engine.dispose()

        asyncio.run(go())

    def add(self, socket_text: str, **columns: str | None) -> None:
        self._run(insert(self.table).values(socket=socket_text, **columns))

    def remove(self, socket_text: str) -> None:
        self._run(delete(self.table).where(self.table.c.socket == socket_text))

    def set(self, socket_text: str, **columns: str | None) -> None:
        self._run(update(self.table).where(self.table.c.socket == socket_text).values(**columns))

    def clear(self) -> None:
        self._run(delete(self.table))

    def execute(self, sql: str) -> None:
        self._run(text(sql))


def db_init(db_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sipproxy.cli", "db", "init", "--db-url", db_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def sqlite_table(tmp_path: Path) -> SocketsTable:
    url = f"sqlite:///{tmp_path}/proxy.db"
    db_init(url)
    return SocketsTable(url)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("pg"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("maria"))
    server.start()
    yield server
    server.stop()


# --- SIP peers ---------------------------------------------------------------------------------------------


def sipp_options(ip: str, port: int, transport: str = "udp", count: int = 1) -> CompletedProcess[str]:
    """SIPp sends OPTIONS to ip:port (the proxy's own socket) and expects 200; exit 0 = all answered."""
    local = loopback_ip()
    return subprocess.run(
        [
            "sipp",
            f"{ip}:{port}",
            "-sf",
            str(SCENARIOS / "options.xml"),
            "-i",
            local,
            "-p",
            str(free_port(local)),
            "-t",
            "u1" if transport == "udp" else "t1",
            "-m",
            str(count),
            "-r",
            "50",
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
            *SIPP_TOLERATE_REORDER,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class SippUas:
    """`sipp -sn uas` in the background, answering every INVITE."""

    def __init__(self, transport: str = "udp") -> None:
        self.ip = loopback_ip()
        self.port = free_port(self.ip)
        self.transport = transport
        self.proc = subprocess.Popen(
            [
                "sipp",
                "-sn",
                "uas",
                "-i",
                self.ip,
                "-p",
                str(self.port),
                "-t",
                "u1" if transport == "udp" else "t1",
                "-nostdin",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proto = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        wait_for(lambda: self._bound(proto), "sipp uas to listen", 20)

    def _bound(self, proto: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("sipp uas exited")
        with socket.socket(socket.AF_INET, proto) as s:
            try:
                s.bind((self.ip, self.port))
            except OSError:
                return True
        return False

    @property
    def uri(self) -> str:
        return f"sip:{self.ip}:{self.port}" + (";transport=tcp" if self.transport == "tcp" else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def uas_factory() -> Iterator[Callable[..., SippUas]]:
    peers: list[SippUas] = []

    def make(transport: str = "udp") -> SippUas:
        uas = SippUas(transport)
        peers.append(uas)
        return uas

    yield make
    for uas in peers:
        uas.stop()


# A real UA ignores a 180 that arrives after the 200 (two workers may forward them in either order);
# SIPp's built-in uac scenario would abort the call on it.
SIPP_TOLERATE_REORDER = ["-default_behaviors", "all,-abortunexp"]


def sipp_uac(
    proxy_ip: str, proxy_port: int, transport: str = "udp", calls: int = 10, rate: int = 10
) -> CompletedProcess[str]:
    """`sipp -sn uac` calls sip:<service>@proxy (routes send them on to the uas); exit 0 = no failed call."""
    local = loopback_ip()
    return subprocess.run(
        [
            "sipp",
            "-sn",
            "uac",
            f"{proxy_ip}:{proxy_port}",
            "-s",
            "uas",
            "-i",
            local,
            "-p",
            str(free_port(local)),
            "-t",
            "u1" if transport == "udp" else "t1",
            "-m",
            str(calls),
            "-r",
            str(rate),
            "-timeout",
            f"{max(60, calls // max(rate, 1) + 60)}s",
            "-timeout_error",
            "-nostdin",
            *SIPP_TOLERATE_REORDER,
        ],
        capture_output=True,
        text=True,
        timeout=max(120, calls // max(rate, 1) + 120),
        check=False,
    )


def sip_options_bytes(ip: str, port: int, local: tuple[str, int], transport: str = "UDP") -> bytes:
    branch = f"z9hG4bK{random.getrandbits(48):x}"
    return (
        f"OPTIONS sip:{ip}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{local[0]}>;tag=p{random.getrandbits(32):x}\r\n"
        f"To: <sip:{ip}:{port}>\r\n"
        f"Call-ID: {random.getrandbits(64):x}@{local[0]}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def udp_options(ip: str, port: int, wait: float = 3.0) -> bytes | None:
    """One OPTIONS over UDP from a plain socket; the reply, or None when nothing answered."""
    local = loopback_ip()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((local, 0))
        s.settimeout(wait)
        try:
            s.sendto(sip_options_bytes(ip, port, s.getsockname()), (ip, port))
            return s.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None


def tcp_connect_refused(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=3):
            return False
    except ConnectionRefusedError:
        return True


class SippScenario:
    """SIPp running one of tests/integration/scenarios as a server for `calls` calls, in the background."""

    def __init__(self, scenario: str, calls: int = 1, transport: str = "udp") -> None:
        self.ip = loopback_ip()
        self.port = free_port(self.ip)
        self.proc = subprocess.Popen(
            [
                "sipp",
                "-sf",
                str(SCENARIOS / scenario),
                "-i",
                self.ip,
                "-p",
                str(self.port),
                "-t",
                "u1" if transport == "udp" else "t1",
                "-m",
                str(calls),
                "-timeout",
                "60s",
                "-timeout_error",
                "-nostdin",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(self._bound, f"sipp {scenario} to listen", 20)

    def _bound(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"sipp exited: {self.proc.stdout.read() if self.proc.stdout else ''}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((self.ip, self.port))
            except OSError:
                return True
        return False

    @property
    def uri(self) -> str:
        return f"sip:{self.ip}:{self.port}"

    def wait(self, timeout: float = 90) -> tuple[int, str]:
        """SIPp's exit code (0: every call as the scenario says) and its output."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out or ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def scenarios() -> Iterator[Callable[..., SippScenario]]:
    running: list[SippScenario] = []

    def start(scenario: str, calls: int = 1, transport: str = "udp") -> SippScenario:
        sipp = SippScenario(scenario, calls, transport)
        running.append(sipp)
        return sipp

    yield start
    for sipp in running:
        sipp.stop()


def dropped(proxy: Proxy, reason: str) -> int:
    """How many messages or connections the proxy dropped for `reason`, over all its sockets (/metrics)."""
    total = 0
    for line in proxy.get("/metrics")[1].splitlines():
        if line.startswith("sipproxy_dropped_packets_total{") and f'reason="{reason}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total

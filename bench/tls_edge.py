"""TLS, WS and WSS: what the proxy spends on them, each figure beside Kamailio 5.6 with its tls module
measured in the same run (same machine, same certificate: ECDSA P-256 by default, `--tls-key rsa` for
RSA-2048).

1. Handshakes: `openssl s_time -new` (a full handshake per connection, no data, no resumption) against one
   TLS socket served by one worker (ours: `tcp_workers: 1`; Kamailio: `tcp_children=1`). Figure: the server
   process tree's CPU time per handshake (utime + stime over the run / handshakes), and the handshakes one
   worker could do per CPU second (its inverse); s_time's own rate is printed too (the client shares the CPU).
2. Idle connections: N connections (default 10,000) opened and left idle, over TCP, TLS (handshake done) and
   WSS (TLS + WebSocket upgrade done; ours only: Kamailio's websocket module needs a different stack). Figure:
   the server tree's proportional set size (PSS, /proc/PID/smaps_rollup: shared pages counted once) with the
   connections open minus before, divided by N. The client is this process (TLS over memory BIOs, so that it
   holds no 256 KiB asyncio buffer per connection).
3. Calls over TLS: SIPp can't speak TLS, so a Kamailio in front converts: SIPp uac (UDP) -> front Kamailio ->
   TLS -> the proxy under test -> UDP -> SIPp uas, and every answer back; in-dialog ACK and BYE go the same
   way (the proxy under test Record-Routes, the front does not). The front is the same process config for
   both. Figure: CPU time of the proxy under test's tree per call (INVITE/180/200/ACK/BYE/200).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import ssl
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.cpu import read_all, tree, tree_cpu
from bench.peers import KAMAILIO, start_sipproxy
from bench.procs import Processes, free_tcp_port, free_udp_port
from bench.sipp import run_uac, uas_argv
from sipproxy.shared.fdlimit import raise_fd_limit
from sipproxy.sip.websocket import encode_frame
from sipproxy.worker.tls import TlsSession

HOST = "127.0.0.1"
KAMAILIO_TLS_CFG = Path(__file__).with_name("kamailio_tls.cfg")
CONNECT_CONCURRENCY = 64


# --- certificates -----------------------------------------------------------------------------------------


def make_certificate(workdir: Path, kind: str) -> tuple[Path, Path]:
    """A self-signed server certificate for HOST (and the name bench.test) with its key, as PEM files."""
    cert, key = workdir / f"server-{kind}.crt", workdir / f"server-{kind}.key"
    if kind == "ec":
        algorithm = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    else:
        algorithm = ["-newkey", "rsa:2048"]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            *algorithm,
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=bench.test",
            "-addext",
            f"subjectAltName=DNS:bench.test,IP:{HOST}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


# --- the two servers --------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: asyncio.subprocess.Process
    worker_pid: int | None  # ours: the one TCP worker
    tls: int
    tcp: int
    udp: int
    wss: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


async def start_ours(
    procs: Processes, workdir: Path, cert: Path, key: Path, next_hop: str | None, name: str = "sipproxy"
) -> Server:
    tls, tcp, wss, mi = (free_tcp_port(HOST) for _ in range(4))
    udp = free_udp_port(HOST)
    config: dict[str, Any] = {
        "sockets": [f"tls:{HOST}:{tls}", f"tcp:{HOST}:{tcp}", f"wss:{HOST}:{wss}", f"udp:{HOST}:{udp}"],
        "udp_workers": 1,
        "tcp_workers": 1,
        "tcp_idle_timeout": 3600,
        "mi": {"listen": f"{HOST}:{mi}"},
        "log_level": "warning",
        "tls_mgm": {
            "domains": [
                {
                    "domain": "bench",
                    "type": "server",
                    "certificate": str(cert),
                    "private_key": str(key),
                    "verify_cert": False,
                    "require_cert": False,
                }
            ]
        },
    }
    if next_hop:
        config["routes"] = [{"match": {}, "forward": next_hop}]
    proxy = await start_sipproxy(procs, workdir, name, config)
    async with aiohttp.ClientSession() as session:
        pids = await proxy.worker_pids(session)
    worker = next(pid for n, pid in pids.items() if n.startswith("tcp#"))
    return Server(name, proxy.proc, worker, tls, tcp, udp, wss)


KAMAILIO_TLS_PROFILE = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {cert}

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
"""


async def start_kamailio_tls(
    procs: Processes, workdir: Path, cert: Path, key: Path, next_hop: str, record_route: bool, name: str
) -> Server:
    tls, tcp, udp = free_tcp_port(HOST), free_tcp_port(HOST), free_udp_port(HOST)
    profile = workdir / f"{name}-tls.cfg"
    profile.write_text(KAMAILIO_TLS_PROFILE.format(key=key, cert=cert))
    text = KAMAILIO_TLS_CFG.read_text()
    for k, v in {
        "@HOST@": HOST,
        "@TLS_PORT@": str(tls),
        "@UDP_PORT@": str(udp),
        "@TCP_PORT@": str(tcp),
        "@TLS_CFG@": str(profile),
        "@NEXT_HOP@": next_hop or f"sip:{HOST}:9",
        "@RECORD_ROUTE@": "1" if record_route else "0",
    }.items():
        text = text.replace(k, v)
    cfg = workdir / f"{name}.cfg"
    cfg.write_text(text)
    rundir = workdir / f"{name}-run"
    rundir.mkdir(parents=True, exist_ok=True)
    # 1 GiB of shared memory: Kamailio's TLS connections live in it (its OpenSSL allocates there).
    argv = [KAMAILIO, "-f", str(cfg), "-DD", "-E", "-m", "1024", "-M", "64", "-Y", str(rundir)]
    proc = await procs.start(name, argv)
    deadline = time.monotonic() + 60
    while not _listening(tls):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {procs.log_tail(name)}")
        await asyncio.sleep(0.1)
    return Server(name, proc, None, tls, tcp, udp)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


# --- 1. handshakes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshakes:
    peer: str
    handshakes: int
    seconds: float
    server_cpu_s: float
    worker_cpu_s: float | None

    @property
    def cpu_ms_per_handshake(self) -> float:
        return self.server_cpu_s * 1000 / max(self.handshakes, 1)

    @property
    def per_cpu_second(self) -> float:
        return self.handshakes / self.server_cpu_s if self.server_cpu_s else 0.0


async def s_time(port: int, seconds: int) -> int:
    """Full handshakes `openssl s_time -new` completed in `seconds`."""
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_time",
        "-connect",
        f"{HOST}:{port}",
        "-new",
        "-time",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    found = re.search(rb"(\d+) connections in [\d.]+s", out)
    if found is None:
        raise RuntimeError(f"openssl s_time: {out.decode(errors='replace')[-500:]}")
    return int(found.group(1))


async def measure_handshakes(server: Server, seconds: int) -> Handshakes:
    await s_time(server.tls, 1)  # warm-up: code paths, allocator
    before = tree_cpu(server.pid)
    worker_before = tree_cpu(server.worker_pid) if server.worker_pid else None
    t0 = time.monotonic()
    count = await s_time(server.tls, seconds)
    elapsed = time.monotonic() - t0
    used = tree_cpu(server.pid) - before
    worker = None
    if server.worker_pid and worker_before is not None:
        worker = (tree_cpu(server.worker_pid) - worker_before).total
    return Handshakes(server.name, count, elapsed, used.total, worker)


# --- 2. idle connections ----------------------------------------------------------------------------------


def pss_kib(root: int) -> int:
    """Proportional set size of a process tree in KiB (a shared page split among the processes sharing it)."""
    total = 0
    for st in tree(read_all(), root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{st.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


class Holder(asyncio.Protocol):
    """One idle client connection: plain, TLS (memory BIOs) and optionally a WebSocket upgrade on top."""

    def __init__(self, tls: ssl.SSLContext | None, ws: bool, ready: asyncio.Future[None]) -> None:
        self.session = TlsSession(tls, server_side=False) if tls is not None else None
        self.ws = ws
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.session is None:
            self._up()
        else:
            self.transport.write(self.session.start())

    def _up(self) -> None:
        if not self.ws:
            self._done()
            return
        assert self.transport is not None
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        upgrade = (
            f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
        ).encode()
        self._send(upgrade)

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.session.send(data) if self.session is not None else data)

    def _done(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            was = self.session.handshake_done
            data, answer = self.session.receive(data)
            if answer and self.transport is not None:
                self.transport.write(answer)
            if self.session.handshake_done and not was:
                self._up()
        if self.ws and not self.upgraded and b"101 Switching Protocols" in data:
            self.upgraded = True
            self._done()
        elif self.ws and self.upgraded and data[:1] == b"\x89":  # a ping: pong it (masked, as a client must)
            self._send(encode_frame(0xA, b"", mask=os.urandom(4)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"lost before ready: {exc}"))


async def open_idle(port: int, count: int, tls: bool, ws: bool) -> list[asyncio.Transport]:
    loop = asyncio.get_running_loop()
    ctx: ssl.SSLContext | None = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    transports: list[asyncio.Transport] = []
    sources = [f"127.{n // 250 + 100}.{n % 250 + 1}.1" for n in range(4)]  # spread over source addresses

    async def one(n: int) -> None:
        async with limit:
            ready: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda: Holder(ctx, ws, ready), HOST, port, local_addr=(sources[n % len(sources)], 0)
            )
            transports.append(transport)
            await asyncio.wait_for(ready, 60)

    await asyncio.gather(*(one(n) for n in range(count)))
    return transports


@dataclass(frozen=True)
class IdleMemory:
    peer: str
    transport: str
    connections: int
    before_kib: int
    after_kib: int

    @property
    def kib_per_connection(self) -> float:
        return (self.after_kib - self.before_kib) / max(self.connections, 1)


async def measure_idle(server: Server, transport: str, count: int) -> IdleMemory:
    port = {"tcp": server.tcp, "tls": server.tls, "wss": server.wss}[transport]
    assert port is not None
    await asyncio.sleep(1)
    before = pss_kib(server.pid)
    transports = await open_idle(port, count, tls=transport in ("tls", "wss"), ws=transport == "wss")
    await asyncio.sleep(3)  # idle: nothing in flight
    after = pss_kib(server.pid)
    for t in transports:
        t.abort()
    await asyncio.sleep(2)
    return IdleMemory(server.name, transport, count, before, after)


# --- 3. calls over TLS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsCalls:
    peer: str
    calls: int
    successful: int
    failed: int
    cpu_s: float

    @property
    def cpu_ms_per_call(self) -> float:
        return self.cpu_s * 1000 / max(self.successful, 1)


async def measure_calls(
    procs: Processes, workdir: Path, server: Server, front: Server, calls: int, rate: float, name: str
) -> TlsCalls:
    target = f"{HOST}:{front.udp}"
    await run_uac(procs, f"{name}-warmup", target, HOST, rate, min(50, calls), workdir, free_udp_port(HOST))
    before = tree_cpu(server.pid)
    stats = await run_uac(procs, name, target, HOST, rate, calls, workdir, free_udp_port(HOST))
    used = tree_cpu(server.pid) - before
    return TlsCalls(server.name, stats.created, stats.successful, stats.failed, used.total)


# --- the run ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--tls-key", choices=["ec", "rsa"], default="ec", help="server key type (default ec)")
    parser.add_argument("--tls-seconds", type=int, default=10, help="s_time run per peer (default 10 s)")
    parser.add_argument(
        "--tls-connections", type=int, default=10_000, help="idle connections (default 10000)"
    )
    parser.add_argument("--tls-calls", type=int, default=1000, help="calls over TLS per peer (default 1000)")
    parser.add_argument("--tls-rate", type=float, default=50.0, help="call rate (default 50/s)")
    parser.add_argument("--tls-rounds", type=int, default=2, help="alternated rounds per figure (default 2)")
    parser.add_argument(
        "--tls-parts",
        default="handshakes,idle,calls",
        help="which figures, comma-separated (default handshakes,idle,calls)",
    )


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    raise_fd_limit()  # this process holds every idle connection of part 2
    cert, key = make_certificate(workdir, args.tls_key)
    out: dict[str, Any] = {"key": args.tls_key, "handshakes": [], "idle": [], "calls": []}
    parts = set(args.tls_parts.split(","))
    async with Processes(workdir / "logs") as procs:
        if "handshakes" in parts:
            await _handshakes(procs, workdir, cert, key, args, out)
        if "idle" in parts:
            await _idle(procs, workdir, cert, key, args, out)
        if "calls" in parts:
            await _calls(procs, workdir, cert, key, args, out)
    return out


async def _handshakes(
    procs: Processes, workdir: Path, cert: Path, key: Path, args: argparse.Namespace, out: dict[str, Any]
) -> None:
    # 1. Handshakes: one server of each, alternated.
    ours = await start_ours(procs, workdir, cert, key, None, "sipproxy-server")
    theirs = await start_kamailio_tls(procs, workdir, cert, key, "", False, "kamailio-server")
    for rnd in range(args.tls_rounds):
        for server in (ours, theirs) if rnd % 2 == 0 else (theirs, ours):
            h = await measure_handshakes(server, args.tls_seconds)
            out["handshakes"].append({**_plain(h), "cpu_ms_per_handshake": h.cpu_ms_per_handshake})
            alone = (
                f" (the worker alone {h.worker_cpu_s * 1000 / h.handshakes:.3f} ms)" if h.worker_cpu_s else ""
            )
            print(
                f"  handshakes {h.peer:16} {h.handshakes:6d} in {h.seconds:5.1f}s: "
                f"{h.cpu_ms_per_handshake:.3f} ms CPU each, {h.per_cpu_second:6.0f} per CPU-second{alone}"
            )
    for server in (ours, theirs):
        await procs.stop(server.proc)


async def _idle(
    procs: Processes, workdir: Path, cert: Path, key: Path, args: argparse.Namespace, out: dict[str, Any]
) -> None:
    # 2. Idle connections: a fresh server for each measurement, so that no transport reuses memory another
    # one freed.
    for transport in ("tcp", "tls", "wss"):
        for peer in ("sipproxy", "kamailio"):
            if transport == "wss" and peer == "kamailio":
                continue
            name = f"{peer}-idle-{transport}"
            if peer == "sipproxy":
                server = await start_ours(procs, workdir, cert, key, None, name)
            else:
                server = await start_kamailio_tls(procs, workdir, cert, key, "", False, name)
            m = await measure_idle(server, transport, args.tls_connections)
            await procs.stop(server.proc)
            out["idle"].append({**_plain(m), "kib_per_connection": m.kib_per_connection})
            print(
                f"  idle {transport:3} {peer:9} {m.connections} connections: "
                f"PSS {m.before_kib / 1024:.1f} -> {m.after_kib / 1024:.1f} MiB, "
                f"{m.kib_per_connection:.1f} KiB each"
            )


async def _calls(
    procs: Processes, workdir: Path, cert: Path, key: Path, args: argparse.Namespace, out: dict[str, Any]
) -> None:
    # 3. Calls: SIPp uac -> front Kamailio (UDP -> TLS) -> server -> SIPp uas.
    uas_port = free_udp_port(HOST)
    await procs.start("uas", uas_argv(HOST, uas_port), stdout_to_log=False)
    uas = f"sip:{HOST}:{uas_port};transport=udp"
    servers = [
        await start_ours(procs, workdir, cert, key, uas, "sipproxy-calls"),
        await start_kamailio_tls(procs, workdir, cert, key, uas, True, "kamailio-calls"),
    ]
    fronts = {}
    for server in servers:
        hop = f"sip:{HOST}:{server.tls};transport=tls"
        fronts[server.name] = await start_kamailio_tls(
            procs, workdir, cert, key, hop, False, f"front-{server.name}"
        )
    for rnd in range(args.tls_rounds):
        for server in servers if rnd % 2 == 0 else servers[::-1]:
            name = f"uac-{server.name}-{rnd}"
            c = await measure_calls(
                procs, workdir, server, fronts[server.name], args.tls_calls, args.tls_rate, name
            )
            out["calls"].append({**_plain(c), "cpu_ms_per_call": c.cpu_ms_per_call})
            print(
                f"  calls over TLS {c.peer:16} {c.successful}/{c.calls} ok, {c.failed} failed: "
                f"{c.cpu_ms_per_call:.3f} ms CPU per call"
            )


def _plain(result: Handshakes | IdleMemory | TlsCalls) -> dict[str, Any]:
    return asdict(result)

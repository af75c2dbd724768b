"""The proxies under test: sipproxy (ours) and Kamailio 5.6, started in the foreground and waited for."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.procs import Processes, udp_port_free

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMAILIO_CFG = Path(__file__).with_name("kamailio.cfg")
START_TIMEOUT = 60.0


def render_kamailio_cfg(
    listens: Sequence[tuple[str, int]], uas_host: str, uas_port: int, children: int = 1
) -> str:
    text = KAMAILIO_CFG.read_text()
    for key, value in {
        "@LISTENS@": "\n".join(f"listen=udp:{host}:{port}" for host, port in listens),
        "@CHILDREN@": str(children),
        "@UAS_HOST@": uas_host,
        "@UAS_PORT@": str(uas_port),
    }.items():
        text = text.replace(key, value)
    return text


def kamailio_argv(cfg: Path, rundir: Path) -> list[str]:
    # -DD -E: foreground, log to stderr; -x/-X tlsf: the TLSF allocator for shared and private memory.
    return [
        KAMAILIO,
        "-f",
        str(cfg),
        "-DD",
        "-E",
        "-x",
        "tlsf",
        "-X",
        "tlsf",
        "-m",
        "64",
        "-M",
        "8",
        "-Y",
        str(rundir),
    ]


async def start_kamailio(
    procs: Processes,
    workdir: Path,
    listen: tuple[str, int],
    uas: tuple[str, int],
    children: int = 1,
    more: Sequence[tuple[str, int]] = (),
) -> asyncio.subprocess.Process:
    """Kamailio listening on `listen` (and `more`), `children` UDP workers per socket."""
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(render_kamailio_cfg([listen, *more], uas[0], uas[1], children))
    rundir = workdir / "kamailio-run"
    rundir.mkdir(parents=True, exist_ok=True)
    proc = await procs.start("kamailio", kamailio_argv(cfg, rundir))
    deadline = time.monotonic() + START_TIMEOUT
    while any(udp_port_free(*address) for address in (listen, *more)):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"kamailio did not start: {procs.log_tail('kamailio')}")
        await asyncio.sleep(0.1)
    return proc


class SipProxy:
    """A running `sipproxy --config FILE` and its MI endpoint."""

    def __init__(self, proc: asyncio.subprocess.Process, mi_url: str, base_url: str) -> None:
        self.proc = proc
        self.mi_url = mi_url
        self.base_url = base_url
        self._ids = 0

    async def mi_answer(self, session: aiohttp.ClientSession, method: str, limit: float = 120.0) -> bytes:
        """The MI answer as it arrives, not parsed."""
        self._ids += 1
        body = {"jsonrpc": "2.0", "method": method, "id": self._ids}
        async with session.post(self.mi_url, json=body, timeout=aiohttp.ClientTimeout(total=limit)) as resp:
            return await resp.read()

    async def mi(self, session: aiohttp.ClientSession, method: str, limit: float = 120.0) -> Any:
        data = json.loads(await self.mi_answer(session, method, limit))
        if "error" in data:
            raise RuntimeError(f"MI {method}: {data['error']}")
        return data["result"]

    async def worker_pids(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """Process type/name -> pid, from the MI `ps` method."""
        result = await self.mi(session, "ps")
        items = result.get("Processes", result) if isinstance(result, dict) else result
        out: dict[str, int] = {}
        for item in items:
            name = str(item.get("Name") or item.get("Type") or "")
            pid = item.get("PID")
            if name and pid:
                out[name] = int(pid)
        return out


async def start_sipproxy(
    procs: Processes,
    workdir: Path,
    name: str,
    config: dict[str, Any],
    limit: float = START_TIMEOUT,
    python: str = sys.executable,
) -> SipProxy:
    """`python`: the interpreter whose installed sipproxy runs (another checkout's venv to compare builds)."""
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    host, port = str(config["mi"]["listen"]).rsplit(":", 1)
    base = f"http://{host}:{port}"
    proc = await procs.start(name, [python, "-m", "sipproxy.cli", "--config", str(cfg)])
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while True:
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {limit:.0f}s: {procs.log_tail(name)}")
            try:
                async with session.get(base + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    return SipProxy(proc, f"{base}/{config['mi'].get('root', 'mi')}", base)

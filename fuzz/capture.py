"""Record what real SIP peers send to the proxy, as seeds for the SIP fuzz harness (fuzz/corpus/sip/).

    .venv/bin/python -m fuzz.capture            # rewrites fuzz/corpus/sip/*.sip

The run is the integration tier's (tests/integration/test_calls.py): a real `sipproxy` process with a UDP
and a TCP socket on its own loopback address, SIPp's built-in `uac` calling through it to SIPp's built-in
`uas`, and a caller and callee that keep the proxy's Record-Route as their route set
(fuzz/scenarios/dialog.xml, answer.xml), over UDP, TCP and across the two, and SIPp OPTIONS pings to the
proxy itself. Both SIPp ends run
with `-trace_msg`; every message a SIPp end *sent* is one the proxy received (the uac's requests, and the
uas' responses carrying the proxy's Via), so those are the seeds.

The proxy's address and port in the captures (and the `sk` parameter of its Via, which names that socket)
are rewritten to the harness' listener, 127.0.0.1:5060, so responses come back to a socket the fuzzed
engine knows, and the scanned response path sees them as its own. Needs `sip-tester` (SIPp).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from fuzz.sanitized import ROOT
from tests.integration.conftest import Proxy, free_port, loopback_ip

OUT = ROOT / "fuzz" / "corpus" / "sip"
HARNESS_IP, HARNESS_PORT = "127.0.0.1", 5060
RECORD = re.compile(rb"^-{40,} [^\n]*\n(\w+) message sent \((\d+) bytes\):\n\n", re.M)
CALLS = 2  # per transport pair: each call is INVITE, 180, 200, ACK, BYE, 200 at the proxy
SCENARIOS = ROOT / "fuzz" / "scenarios"
# SIPp's built-in caller and callee, whose ACK and BYE carry no Route; and a caller and callee that keep the
# proxy's Record-Route as the dialog's route set, so the proxy also receives loose-routed in-dialog requests.
CALLERS = [
    ("builtin", ["-sn", "uac"], ["-sn", "uas"]),
    ("dialog", ["-sf", str(SCENARIOS / "dialog.xml")], ["-sf", str(SCENARIOS / "answer.xml")]),
]


def sent_messages(trace: Path) -> list[bytes]:
    """The messages a SIPp `-trace_msg` file says were sent, each exactly as many bytes as it says."""
    text = trace.read_bytes() if trace.exists() else b""
    return [text[m.end() : m.end() + int(m.group(2))] for m in RECORD.finditer(text)]


def sipp(args: list[str], trace: Path, transport: str) -> subprocess.Popen[bytes]:
    cmd = ["sipp", *args, "-t", "u1" if transport == "udp" else "t1", "-nostdin"]
    cmd += ["-trace_msg", "-message_file", str(trace)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def socket_key_hex(ip: str, port: int) -> bytes:
    return f"{ipaddress.ip_address(ip).packed.hex()}-{port:x}".encode()


def normalized(message: bytes, ip: str, port: int) -> bytes:
    """The proxy's address, port and socket key as the harness' listener 127.0.0.1:5060 has them."""
    message = message.replace(f"{ip}:{port}".encode(), f"{HARNESS_IP}:{HARNESS_PORT}".encode())
    return message.replace(socket_key_hex(ip, port), socket_key_hex(HARNESS_IP, HARNESS_PORT))


def capture(workdir: Path) -> list[bytes]:
    ip = loopback_ip()
    port = free_port(ip)
    uas_ip = loopback_ip()
    uas_ports = {"udp": free_port(uas_ip), "tcp": free_port(uas_ip)}
    uas_uri = {
        "udp": f"sip:{uas_ip}:{uas_ports['udp']}",
        "tcp": f"sip:{uas_ip}:{uas_ports['tcp']};transport=tcp",
    }
    config = {
        "sockets": [f"udp:{ip}:{port} tag edge", f"tcp:{ip}:{port} tag edge-tcp"],
        "udp_workers": 1,
        "tcp_workers": 1,
        "routes": [
            {"match": {"ruri": "^sip:uas@"}, "forward": uas_uri["udp"]},
            {"match": {"ruri": "^sip:tcpuas@"}, "forward": uas_uri["tcp"]},
        ],
    }
    proxy = Proxy(workdir, config).start()
    messages: list[bytes] = []
    try:
        for kind, uac_scenario, uas_scenario in CALLERS:
            for transport in ("udp", "tcp"):
                trace = workdir / f"{kind}-uas-{transport}.log"
                args = [*uas_scenario, "-i", uas_ip, "-p", str(uas_ports[transport])]
                uas = sipp(args, trace, transport)
                try:
                    for uac_transport in ("udp", "tcp"):
                        uac_trace = workdir / f"{kind}-uac-{uac_transport}-{transport}.log"
                        local = loopback_ip()
                        service = "uas" if transport == "udp" else "tcpuas"
                        args = [*uac_scenario, f"{ip}:{port}", "-s", service]
                        args += ["-i", local, "-p", str(free_port(local))]
                        args += ["-m", str(CALLS), "-r", "5", "-timeout", "30s", "-timeout_error"]
                        if sipp(args, uac_trace, uac_transport).wait(timeout=60) != 0:
                            raise RuntimeError(f"SIPp {kind} uac over {uac_transport} to {transport} failed")
                        messages += sent_messages(uac_trace)
                finally:
                    uas.terminate()
                    uas.wait(timeout=10)
                messages += sent_messages(trace)
        for transport in ("udp", "tcp"):
            local = loopback_ip()
            trace = workdir / f"options-{transport}.log"
            args = [f"{ip}:{port}", "-sf", str(ROOT / "tests/integration/scenarios/options.xml")]
            args += ["-i", local, "-p", str(free_port(local)), "-m", "2", "-timeout", "30s", "-timeout_error"]
            if sipp(args, trace, transport).wait(timeout=60) != 0:
                raise RuntimeError(f"SIPp OPTIONS over {transport} failed")
            messages += sent_messages(trace)
    finally:
        proxy.stop()
    return [normalized(m, ip, port) for m in messages]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sipsockets-capture-") as tmp:
        messages = capture(Path(tmp))
    if not messages:
        print("no message captured", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.sip"):
        old.unlink()
    names: set[str] = set()
    for data in messages:
        start = data.split(b"\r\n", 1)[0].decode("latin-1")
        kind = start.split(" ")[1] if start.startswith("SIP/") else start.split(" ")[0]
        name = f"{kind.lower()}-{hashlib.sha1(data).hexdigest()[:10]}.sip"
        if name not in names:
            names.add(name)
            (OUT / name).write_bytes(data)
    print(f"{len(names)} messages written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

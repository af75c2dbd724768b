"""Kamailio 5.6 with its tls module (Debian: `kamailio` and `kamailio-tls-modules`) as a TLS peer on loopback.

It listens on `tls:IP:PORT` and `udp:IP:PORT`, both on one loopback address of its own. It answers OPTIONS
addressed to itself with `200 OK` carrying `X-Transport: <the transport it came over>` (so a test sees
that Kamailio, not only the client, spoke TLS), and relays every other request statefully (tm) to
`next_hop`, a SIP URI such as `sip:127.0.0.5:5060` (UDP) or `sip:127.0.0.5:5061;transport=tls`:
- as a TLS server: requests that came over TLS go on to a UDP next hop, answers come back over TLS;
- as a TLS client: requests that came over UDP go to a `;transport=tls` next hop over a connection that
  Kamailio opens, verifying the next hop's certificate chain against `ca_file` (not its name) and sending
  `server_name` as SNI. A next hop whose handshake fails gets no request: the sender gets a 408 after 10 s.
`client_ca_file` makes its server side require client certificates signed by that CA. Each relayed
request gets `X-Relayed-By: kamailio`.

Started in the foreground (-DD -E) in a session of its own and stopped by its process group, like the
benchmark's Kamailio (bench/peers.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
START_TIMEOUT = 60.0

_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
tcp_children=1
auto_aliases=no
dns=no
rev_dns=no
enable_tls=yes
listen=tls:{host}:{tls_port}
listen=udp:{host}:{udp_port}

mpath="{modules}/"
loadmodule "tls.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"

modparam("tls", "config", "{tls_cfg}")
modparam("tls", "xavp_cfg", "tls")
# A next hop that never answers (its TLS handshake failed) gets a 408 after 10 s instead of 30.
modparam("tm", "fr_timer", 10000)

request_route {{
	if (!mf_process_maxfwd_header("10")) {{
		sl_send_reply("483", "Too Many Hops");
		exit;
	}}
	if (is_method("OPTIONS") && uri == myself) {{
		append_to_reply("X-Transport: $proto\\r\\n");
		sl_send_reply("200", "OK");
		exit;
	}}
{relay}
}}
"""

_RELAY = """	append_hf("X-Relayed-By: kamailio\\r\\n");
	{sni}$du = "{next_hop}";
	if (!t_relay()) {{
		sl_reply_error();
	}}
	exit;"""
_NO_RELAY = """	sl_send_reply("404", "No Next Hop");
	exit;"""

_TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = {verify_clients}
require_certificate = {verify_clients}
private_key = {key_file}
certificate = {cert_file}
{server_ca}
[client:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
ca_list = {ca_file}
{server_name}
"""


@dataclass
class KamailioTls:
    """One Kamailio TLS peer; use as a context manager (or start() and stop())."""

    workdir: Path
    host: str  # a loopback address of its own
    tls_port: int
    udp_port: int
    cert_file: Path  # its certificate (PEM), the one TLS clients see
    key_file: Path
    ca_file: Path  # CAs it trusts for the next hops it connects to
    next_hop: str = ""
    server_name: str | None = None  # SNI sent to a TLS next hop
    client_ca_file: Path | None = None  # require client certificates signed by these CAs
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"kamailio-{self.tls_port}.log"

    def config(self) -> str:
        return _CFG.format(
            host=self.host,
            tls_port=self.tls_port,
            udp_port=self.udp_port,
            modules=MODULES,
            tls_cfg=self.workdir / f"tls-{self.tls_port}.cfg",
            relay=_RELAY.format(next_hop=self.next_hop, sni=self._sni()) if self.next_hop else _NO_RELAY,
        )

    def _sni(self) -> str:
        # The client profile's server_name alone selects a profile; the SNI sent is the xavp's.
        if not self.server_name:
            return ""
        return f'$xavp(tls=>server_name) = "{self.server_name}";\n\t'

    def tls_config(self) -> str:
        return _TLS_CFG.format(
            verify_clients="yes" if self.client_ca_file else "no",
            key_file=self.key_file,
            cert_file=self.cert_file,
            server_ca=f"ca_list = {self.client_ca_file}" if self.client_ca_file else "",
            ca_file=self.ca_file,
            server_name=f"server_name = {self.server_name}" if self.server_name else "",
        )

    def start(self) -> KamailioTls:
        cfg = self.workdir / f"kamailio-{self.tls_port}.cfg"
        cfg.write_text(self.config())
        (self.workdir / f"tls-{self.tls_port}.cfg").write_text(self.tls_config())
        rundir = self.workdir / f"kamailio-run-{self.tls_port}"
        rundir.mkdir(parents=True, exist_ok=True)
        argv = [KAMAILIO, "-f", str(cfg), "-DD", "-E", "-m", "64", "-M", "16", "-Y", str(rundir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kamailio did not start:\n{self.log()}")
            time.sleep(0.1)
        return self

    def _listening(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect((self.host, self.tls_port))
            except OSError:
                return False
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        # Kamailio's children share the group of the process we started; none may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.proc = None

    def __enter__(self) -> KamailioTls:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

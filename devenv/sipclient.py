"""A minimal SIP OPTIONS client for the demo and tests: is anything answering SIP on this socket?"""

from __future__ import annotations

import secrets
import socket


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def options_request(target: str, port: int, local: tuple[str, int], transport: str = "UDP") -> bytes:
    """An OPTIONS addressed to the proxy itself, with a top Via naming this client so the reply comes back."""
    branch = "z9hG4bK" + secrets.token_hex(8)
    call_id = secrets.token_hex(12)
    lines = [
        f"OPTIONS sip:{_host(target)}:{port} SIP/2.0",
        f"Via: SIP/2.0/{transport} {_host(local[0])}:{local[1]};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:demo@{_host(local[0])}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{_host(target)}:{port}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        f"Contact: <sip:demo@{_host(local[0])}:{local[1]}>",
        "Accept: application/sdp",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def send_options(address: str, port: int, transport: str = "udp", timeout: float = 3.0) -> str:
    """Send one OPTIONS to address:port and return the reply's text; raises TimeoutError without one."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    local_host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    if transport == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.bind((local_host, 0))
            s.sendto(options_request(address, port, s.getsockname()[:2]), (address, port))
            try:
                data, _ = s.recvfrom(65535)
            except TimeoutError:
                raise TimeoutError(
                    f"no SIP reply from udp:{_host(address)}:{port} within {timeout}s"
                ) from None
            return data.decode(errors="replace")
    with socket.create_connection((address, port), timeout=timeout) as s:
        s.sendall(options_request(address, port, s.getsockname()[:2], transport="TCP"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65535)
            if not chunk:
                break
            buf += chunk
        if not buf:
            raise TimeoutError(f"no SIP reply from tcp:{_host(address)}:{port}")
        return buf.decode(errors="replace")


def status_code(reply: str) -> int:
    parts = reply.split(" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def answers_ok(address: str, port: int, transport: str = "udp", timeout: float = 2.0) -> bool:
    """Does a SIP socket at address:port answer an OPTIONS addressed to it with 200?"""
    try:
        return status_code(send_options(address, port, transport=transport, timeout=timeout)) == 200
    except (TimeoutError, OSError):
        return False

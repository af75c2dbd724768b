"""Service addresses and cluster DNS for the single local node: what kube-proxy and CoreDNS do in a full
cluster, reduced to what one node needs.

- ClusterIP Services: an nftables table of our own (`ip sipsockets_node`) translates every Service
  address and port to one of its ready endpoints; the `kubernetes` Service goes to the API server on
  127.0.0.1. Rewritten whenever Services or EndpointSlices change (polled every second).
- LoadBalancer Services: what a cloud's controller and kube-proxy do together. Each gets an address of the
  node's pool (layout.LOAD_BALANCER_POOL) in status.loadBalancer.ingress, and that address is translated
  like the Service's cluster address.
- DNS: `<service>.<namespace>.svc.cluster.local` (and `<hostname>.<service>...` of StatefulSet pods)
  answered on the node address, port 53 (UDP). Names outside the cluster domain get NXDOMAIN: pods have
  no way off the machine anyway.

    python -m devenv.localcluster.services WORKDIR
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
import struct
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from devenv.controlplane import SERVICE_CIDR
from devenv.localcluster import hostnet, layout

log = logging.getLogger("services")


@dataclass(frozen=True)
class Backend:
    ip: str
    port: int


@dataclass(frozen=True)
class ServicePort:
    cluster_ip: str
    protocol: str  # tcp | udp
    port: int
    backends: tuple[Backend, ...]


@dataclass
class Snapshot:
    ports: list[ServicePort] = field(default_factory=list)
    # fully qualified name (lower case, no trailing dot) -> IPv4 addresses
    names: dict[str, list[str]] = field(default_factory=dict)


# -- pure: API objects -> rules and names -------------------------------------------------------------------


def snapshot(
    services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]], api_port: int
) -> Snapshot:
    by_service: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in slices:
        meta = s.get("metadata", {})
        owner = meta.get("labels", {}).get("kubernetes.io/service-name")
        if owner and s.get("addressType") == "IPv4":
            by_service.setdefault((meta.get("namespace", ""), owner), []).append(s)
    snap = Snapshot()
    domain = layout.CLUSTER_DOMAIN
    for svc in services:
        meta, spec = svc.get("metadata", {}), svc.get("spec", {})
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        fqdn = f"{name}.{ns}.svc.{domain}"
        cluster_ip = spec.get("clusterIP") or ""
        svc_slices = by_service.get((ns, name), [])
        ready = _ready_endpoints(svc_slices)
        if cluster_ip and cluster_ip != "None":
            snap.names[fqdn] = [cluster_ip]
        else:  # headless: the ready pods themselves
            snap.names[fqdn] = sorted({ip for ip, _ in ready})
        for ip, hostname in ready:
            if hostname:
                snap.names.setdefault(f"{hostname}.{fqdn}", []).append(ip)
        if not cluster_ip or cluster_ip == "None":
            continue
        addresses = [cluster_ip, *ingress_ips(svc)]
        for sp in spec.get("ports", []):
            proto = str(sp.get("protocol", "TCP")).lower()
            if proto not in ("tcp", "udp"):
                continue
            if ns == "default" and name == "kubernetes":
                backends: tuple[Backend, ...] = (Backend("127.0.0.1", api_port),)
            else:
                backends = _backends(svc_slices, sp, proto)
            for address in addresses:
                snap.ports.append(ServicePort(address, proto, int(sp["port"]), backends))
    return snap


def ingress_ips(service: Mapping[str, Any]) -> list[str]:
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [str(i["ip"]) for i in ingress if isinstance(i, Mapping) and i.get("ip")]


def load_balancer_assignments(
    services: Iterable[Mapping[str, Any]], pool: Iterable[str]
) -> dict[tuple[str, str], str]:
    """(namespace, name) -> pool address, for each LoadBalancer Service without an ingress address yet. An
    address in use by another Service is never given twice; when the pool runs out the Service waits, as
    it would with a cloud out of addresses."""
    used: set[str] = set()
    waiting: list[tuple[str, str]] = []
    for svc in services:
        meta = svc.get("metadata", {})
        if (svc.get("spec") or {}).get("type") != "LoadBalancer":
            continue
        ips = ingress_ips(svc)
        used.update(ips)
        if not ips:
            waiting.append((str(meta.get("namespace", "")), str(meta.get("name", ""))))
    free = [ip for ip in pool if ip not in used]
    return dict(zip(sorted(waiting), free, strict=False))


def _ready_endpoints(slices: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    found = []
    for s in slices:
        for ep in s.get("endpoints") or []:
            if ep.get("conditions", {}).get("ready", True) is False:
                continue
            for addr in ep.get("addresses", []):
                found.append((str(addr), str(ep.get("hostname") or "")))
    return found


def _backends(slices: Iterable[Mapping[str, Any]], sp: Mapping[str, Any], proto: str) -> tuple[Backend, ...]:
    name = sp.get("name") or ""
    out = set()
    for s in slices:
        port = next(
            (
                p.get("port")
                for p in s.get("ports") or []
                if (p.get("name") or "") == name and str(p.get("protocol", "TCP")).lower() == proto
            ),
            None,
        )
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            if ep.get("conditions", {}).get("ready", True) is False:
                continue
            for addr in ep.get("addresses", []):
                out.add(Backend(str(addr), int(port)))
    return tuple(sorted(out, key=lambda b: (b.ip, b.port)))


def nft_ruleset(ports: Iterable[ServicePort]) -> str:
    """The whole table. Services without ready endpoints reject, like kube-proxy, instead of timing out."""
    chains: list[str] = []
    dispatch: list[str] = []
    for i, sp in enumerate(sorted(ports, key=lambda p: (p.cluster_ip, p.protocol, p.port))):
        match = f"ip daddr {sp.cluster_ip} {sp.protocol} dport {sp.port}"
        if not sp.backends:
            continue  # rejected by the output/forward filters below
        if len(sp.backends) == 1:
            b = sp.backends[0]
            dispatch.append(f"    {match} dnat to {b.ip}:{b.port}")
            continue
        names = []
        for j, b in enumerate(sp.backends):
            chain = f"svc{i}_ep{j}"
            names.append(f"{j} : jump {chain}")
            # nft maps a port only after a transport match, also in a chain of its own.
            chains.append(f"  chain {chain} {{\n    meta l4proto {sp.protocol} dnat to {b.ip}:{b.port}\n  }}")
        dispatch.append(f"    {match} numgen random mod {len(sp.backends)} vmap {{ {', '.join(names)} }}")
    bridge = layout.BRIDGE
    body = "\n".join(dispatch) or "    return"
    return f"""table ip {layout.NFT_TABLE} {{
  chain services {{
{body}
  }}
{chr(10).join(chains)}
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    iifname "{bridge}" jump services
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    # Service traffic into the bridge comes from the node address: the reply then comes back through the
    # node and is translated back (a pod's own address, or the machine's source address chosen for the
    # Service range, would not).
    oifname "{bridge}" ct status dnat masquerade
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    # The bridge is an island: nothing is forwarded between it and any other interface.
    iifname "{bridge}" oifname != "{bridge}" drop
    oifname "{bridge}" iifname != "{bridge}" drop
  }}
  chain output_filter {{
    type filter hook output priority 0; policy accept;
    # A Service address nothing was translated for must not follow the default route off the machine.
    ip daddr {SERVICE_CIDR} reject
  }}
}}
"""


# -- pure: DNS ----------------------------------------------------------------------------------------------

_A, _AAAA, _IN = 1, 28, 1
NXDOMAIN, NOERROR, FORMERR, NOTIMP = 3, 0, 1, 4


def dns_answer(query: bytes, names: Mapping[str, list[str]]) -> bytes | None:
    """The reply to one DNS query packet (None for garbage not worth an answer)."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000:
        return None  # a response, not a query
    rd = flags & 0x0100
    if qdcount != 1 or (flags >> 11) & 0xF != 0:
        return struct.pack("!HHHHHH", qid, 0x8000 | rd | NOTIMP, 0, 0, 0, 0)
    labels, pos = [], 12
    while True:
        if pos >= len(query):
            return struct.pack("!HHHHHH", qid, 0x8000 | rd | FORMERR, 0, 0, 0, 0)
        n = query[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0 or pos + n > len(query):
            return struct.pack("!HHHHHH", qid, 0x8000 | rd | FORMERR, 0, 0, 0, 0)
        labels.append(query[pos : pos + n].decode("ascii", errors="replace").lower())
        pos += n
    if pos + 4 > len(query):
        return struct.pack("!HHHHHH", qid, 0x8000 | rd | FORMERR, 0, 0, 0, 0)
    qtype, qclass = struct.unpack("!HH", query[pos : pos + 4])
    question = query[12 : pos + 4]
    name = ".".join(labels)
    addrs = names.get(name)
    answers = b""
    count = 0
    if addrs is None:
        rcode = NXDOMAIN
    else:
        rcode = NOERROR  # an AAAA query of a known name gets an empty answer, not NXDOMAIN
        if qtype == _A and qclass == _IN:
            for ip in addrs:
                answers += struct.pack("!HHHIH", 0xC00C, _A, _IN, 5, 4) + ipaddress.IPv4Address(ip).packed
                count += 1
    header = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, count, 0, 0)
    return header + question + answers


# -- I/O ----------------------------------------------------------------------------------------------------


class _Api:
    def __init__(self, workdir: Path) -> None:
        state = json.loads((workdir / "controlplane.json").read_text())
        self.server: str = state["server"]
        pki = workdir / "pki"
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def items(self, path: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=10) as resp:
            items: list[dict[str, Any]] = json.loads(resp.read())["items"]
            return items

    def set_ingress(self, namespace: str, name: str, ip: str) -> None:
        body = json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}).encode()
        req = urllib.request.Request(
            f"{self.server}/api/v1/namespaces/{namespace}/services/{name}/status",
            data=body,
            method="PATCH",
            headers={"Content-Type": "application/merge-patch+json"},
        )
        with urllib.request.urlopen(req, context=self.ctx, timeout=10):
            pass

    def api_port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, state: Snapshot) -> None:
        self.state = state
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = dns_answer(data, self.state.names)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def run(workdir: Path) -> None:
    api = _Api(workdir)
    state = Snapshot()
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _DnsProtocol(state), local_addr=(layout.CLUSTER_DNS, 53))
    applied = None
    while True:
        try:
            services, slices = await asyncio.gather(
                asyncio.to_thread(api.items, "/api/v1/services"),
                asyncio.to_thread(api.items, "/apis/discovery.k8s.io/v1/endpointslices"),
            )
            for (ns, name), ip in load_balancer_assignments(services, layout.LOAD_BALANCER_POOL).items():
                await asyncio.to_thread(api.set_ingress, ns, name, ip)
                log.info("LoadBalancer Service %s/%s: ingress %s", ns, name, ip)
            snap = snapshot(services, slices, api.api_port())
            state.names = snap.names
            ruleset = nft_ruleset(snap.ports)
            if ruleset != applied:
                await asyncio.to_thread(hostnet.nft_apply, ruleset)
                applied = ruleset
                log.info("rules for %d service ports applied", len(snap.ports))
        except Exception as e:  # the API server restarting, a transient error: try again next round
            log.warning("sync failed: %s", e)
        await asyncio.sleep(1.0)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if len(argv) != 1:
        print("usage: python -m devenv.localcluster.services WORKDIR", file=sys.stderr)
        return 2
    asyncio.run(run(Path(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

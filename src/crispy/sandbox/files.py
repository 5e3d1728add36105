"""The files a pod's containers mount: /etc/resolv.conf, /etc/hosts, /etc/hostname.

They live in the pod's state dir and are written atomically (crispy.system.atomic), so
a container that starts while another is reading never sees half a file.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

# Imported from here by the code that writes bundles' config.json as well.
from crispy.system.atomic import write_atomic

HOST_RESOLV = "/etc/resolv.conf"
# Where systemd-resolved keeps the real upstream servers behind its 127.0.0.53 stub.
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"
HOST_HOSTS = "/etc/hosts"

_HOSTS_HEADER = (
    "# Kubernetes-managed hosts file (written by crispy).\n"
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


@dataclass
class DNS:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.servers or self.searches or self.options)


def _is_loopback(server: str) -> bool:
    try:
        return ipaddress.ip_address(server.split("%")[0]).is_loopback
    except ValueError:
        return False


def parse_resolv(text: str) -> DNS:
    dns = DNS()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            dns.servers.append(words[1])
        elif words[0] in ("search", "domain"):
            dns.searches = words[1:]  # the last search/domain line wins, as in the resolver
        elif words[0] == "options":
            dns.options.extend(words[1:])
    return dns


def render_resolv(dns: DNS) -> str:
    lines = [f"nameserver {s}" for s in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n" if lines else ""


def host_dns(
    host_network: bool, resolv: str = HOST_RESOLV, upstream: str = RESOLVED_UPSTREAM
) -> DNS:
    """The host's resolver config, as a pod without DNSConfig gets it. A loopback resolver
    (systemd-resolved's 127.0.0.53, a local dnsmasq) is unreachable from a pod's netns:
    such pods get resolved's upstream list where there is one, else the rest of the list."""
    try:
        with open(resolv) as f:
            dns = parse_resolv(f.read())
    except OSError:
        return DNS()
    if host_network or not any(_is_loopback(s) for s in dns.servers):
        return dns
    try:
        with open(upstream) as f:
            up = parse_resolv(f.read())
        if up.servers:
            dns.servers = up.servers
            return dns
    except OSError:
        pass
    dns.servers = [s for s in dns.servers if not _is_loopback(s)]
    return dns


def resolv_conf(dns: DNS, host_network: bool) -> str:
    return render_resolv(host_dns(host_network) if dns.empty else dns)


def hosts_file(hostname: str, ips: Iterable[str], host_network: bool) -> str:
    """Host-network pods see the node's /etc/hosts; others get localhost and their own name."""
    if host_network:
        try:
            with open(HOST_HOSTS) as f:
                return f.read()
        except OSError:
            pass
    text = _HOSTS_HEADER
    for ip in ips:
        text += f"{ip}\t{hostname}\n"
    return text


def write_pod_files(
    pod_dir: str, hostname: str, dns: DNS, ips: Iterable[str], host_network: bool
) -> None:
    write_atomic(os.path.join(pod_dir, "resolv.conf"), resolv_conf(dns, host_network))
    write_atomic(os.path.join(pod_dir, "hostname"), hostname + "\n")
    write_atomic(os.path.join(pod_dir, "hosts"), hosts_file(hostname, ips, host_network))

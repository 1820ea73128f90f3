"""The lab's DNS data: zone files for real BIND9 servers and configs for real Unbound.

The outside world is one BIND9 process answering as four servers, one view per
address (``match-destinations``): the root (198.41.0.4, like a.root-servers.net),
com/net (192.5.6.30, like a.gtld-servers.net), org (199.19.56.1) and the hosting
server of every second-level zone (100.64.0.53). The .cn TLD and the .cn zones sit
*inside* the censored network (10.10.4.53), as CNNIC does, so that outside resolvers
cross the border to reach them (the collateral-damage path of CCR'12). Every name
gets a stable address in a documentation range, so a forged answer is unmistakable.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

ROOT_IP = "198.41.0.4"
GTLD_IP = "192.5.6.30"
ORG_IP = "199.19.56.1"
HOSTING_IP = "100.64.0.53"
CN_IP = "10.10.4.53"
_DOC_NETS = ("192.0.2", "198.51.100", "203.0.113")
_CN_SECOND = {"com", "net", "org", "gov", "edu", "ac"}


def genuine_address(name: str) -> str:
    """The stable 'real' address of a lab name (documentation ranges only)."""
    digest = hashlib.sha256(name.encode()).digest()
    return f"{_DOC_NETS[digest[0] % 3]}.{1 + digest[1] % 254}"


def registered_domain(name: str) -> str:
    """``www.people.com.cn`` -> ``people.com.cn``; ``a.b.example.com`` -> ``example.com``."""
    labels = name.split(".")
    if len(labels) >= 3 and labels[-1] == "cn" and labels[-2] in _CN_SECOND:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _soa(origin: str, ns: str) -> str:
    contact = "hostmaster." + (origin if origin != "." else "root-servers.net.")
    return f"$TTL 300\n@ IN SOA {ns} {contact} 1 3600 600 86400 300\n@ IN NS {ns}\n"


def build_zones(
    names: Iterable[str], overrides: dict[str, str] | None = None
) -> dict[str, tuple[str, str]]:
    """Zone name -> (server address, zone text) for every zone the lab serves."""
    overrides = overrides or {}
    by_domain: dict[str, set[str]] = defaultdict(set)
    for name in names:
        name = name.lower().strip(".")
        if name.count(".") < 1 or name.split(".")[-1] not in ("com", "net", "org", "cn"):
            continue
        domain = registered_domain(name)
        by_domain[domain].update({name, domain})
    zones: dict[str, tuple[str, str]] = {}
    root = _soa(".", "a.root-servers.net.") + f"a.root-servers.net. IN A {ROOT_IP}\n"
    for tld, (ip, ns) in {
        "com": (GTLD_IP, "ns.nic.com."), "net": (GTLD_IP, "ns.nic.net."),
        "org": (ORG_IP, "ns.nic.org."), "cn": (CN_IP, "ns.nic.cn."),
    }.items():  # fmt: skip
        root += f"{tld}. IN NS {ns}\n{ns} IN A {ip}\n"
        tld_text = _soa(f"{tld}.", ns) + f"{ns} IN A {ip}\n"
        for domain in sorted(d for d in by_domain if d.endswith("." + tld)):
            host = CN_IP if tld == "cn" else HOSTING_IP
            tld_text += f"{domain}. IN NS ns.{domain}.\nns.{domain}. IN A {host}\n"
        zones[tld] = (ip, tld_text)
    zones["."] = (ROOT_IP, root)
    for domain, members in sorted(by_domain.items()):
        host = CN_IP if domain.endswith(".cn") else HOSTING_IP
        text = _soa(f"{domain}.", f"ns.{domain}.") + f"ns.{domain}. IN A {host}\n"
        for name in sorted(members):
            text += f"{name}. IN A {overrides.get(name, genuine_address(name))}\n"
        zones[domain] = (host, text)
    return zones


def named_conf(directory: Path, zones: dict[str, tuple[str, str]], addresses: list[str]) -> str:
    """A named.conf with one view per server address; writes the zone files too."""
    directory.mkdir(parents=True, exist_ok=True)
    views: dict[str, list[str]] = defaultdict(list)
    for zone, (ip, text) in zones.items():
        if ip not in addresses:
            continue
        filename = "root.zone" if zone == "." else f"{zone}.zone"
        (directory / filename).write_text(text)
        views[ip].append(f'    zone "{zone}" {{ type primary; file "{directory / filename}"; }};')
    listen = "; ".join(addresses)
    out = [
        "options {",
        f'    directory "{directory}";',
        f"    listen-on {{ {listen}; }};",
        "    listen-on-v6 { none; };",
        "    recursion no;",
        "    dnssec-validation no;",
        "    pid-file none;",
        "    allow-query { any; };",
        "    minimal-responses yes;",
        "};",
        "controls { };",
    ]
    for ip, lines in views.items():
        out += [f'view "v-{ip}" {{', f"    match-destinations {{ {ip}; }};", *lines, "};"]
    return "\n".join(out) + "\n"


def unbound_conf(
    directory: Path,
    address: str,
    hijack: dict[str, str] | None = None,
    *,
    port: int = 53,
    root: str = ROOT_IP,
    cache_max_ttl: int | None = None,
    dnstap: Path | None = None,
    tls: tuple[Path, Path] | None = None,
) -> str:
    """An Unbound recursive resolver on ``address`` whose root hint is ``root``.

    ``tls``: (key, certificate) to also answer DNS over TLS on port 853 ([rfc7858]), the
    secure channel a user's shield falls back to (the injector reacts to UDP only).

    ``dnstap``: a Unix socket its dnstap goes to (the answers to users and from upstream
    servers, for ``wallwatch passive``); Unbound connects when a receiver listens there.
    """
    directory.mkdir(parents=True, exist_ok=True)
    hints = directory / "root.hints"
    hints.write_text(f". 3600000 NS a.root-servers.net.\na.root-servers.net. 3600000 A {root}\n")
    lines = [
        "server:",
        f"    interface: {address}",
        f"    port: {port}",
        "    do-ip6: no",
        '    username: ""',
        '    chroot: ""',
        f'    directory: "{directory}"',
        f'    pidfile: "{directory}/unbound.pid"',
        "    use-syslog: no",
        '    logfile: ""',
        "    verbosity: 1",
        "    num-threads: 1",
        "    access-control: 0.0.0.0/0 allow",
        f'    root-hints: "{hints}"',
        '    module-config: "iterator"',
        "    qname-minimisation: no",
        "    harden-referral-path: no",
        "    prefetch: no",
        "    minimal-responses: yes",
        "    infra-host-ttl: 60",
        "    outgoing-range: 256",
        # A monitor asks its TCP control for a whole panel at once (the default, 10
        # connections, would queue a minute's round behind the path delay).
        "    incoming-num-tcp: 128",
    ]
    if tls is not None:
        lines += [f"    interface: {address}@853", "    tls-port: 853",
                  f'    tls-service-key: "{tls[0]}"', f'    tls-service-pem: "{tls[1]}"']  # fmt: skip
    if cache_max_ttl is not None:
        lines.append(f"    cache-max-ttl: {cache_max_ttl}")
    for name, answer in (hijack or {}).items():
        lines += [
            f'    local-zone: "{name}." redirect',
            f'    local-data: "{name}. 300 IN A {answer}"',
        ]
    if dnstap is not None:
        lines += [
            "dnstap:",
            "    dnstap-enable: yes",
            "    dnstap-bidirectional: yes",
            f'    dnstap-socket-path: "{dnstap}"',
            "    dnstap-send-identity: yes",
            "    dnstap-log-client-response-messages: yes",
            "    dnstap-log-resolver-response-messages: yes",
        ]
    return "\n".join(lines) + "\n"

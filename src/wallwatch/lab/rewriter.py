"""An ISP resolver front that turns NXDOMAIN into an advertising server's address.

Many ISPs (and some public resolvers) answer names that do not exist with the
address of their own search or advertising page; dnsmasq-china-list keeps a list
of such addresses (``bogus-nxdomain``). It is *not* the firewall, and a detector
must not call it injection: the answer comes from the resolver itself, only for
names that do not exist, and a TCP query to the same resolver gets the same lie.

Run as ``python -m wallwatch.lab.rewriter LISTEN_IP UPSTREAM_PORT AD_ADDRESS``
inside the ISP resolver's namespace, in front of Unbound on 127.0.0.1.
"""

from __future__ import annotations

import selectors
import socket
import sys

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


def rewrite(reply_wire: bytes, ad_address: str) -> bytes:
    """NXDOMAIN to an A query becomes NOERROR with ``ad_address``; anything else passes."""
    try:
        reply = dns.message.from_wire(reply_wire)
    except Exception:  # an upstream oddity is passed through untouched
        return reply_wire
    if reply.rcode() != dns.rcode.NXDOMAIN or not reply.question:
        return reply_wire
    question = reply.question[0]
    if question.rdtype != dns.rdatatype.A:
        return reply_wire
    reply.set_rcode(dns.rcode.NOERROR)
    reply.authority = []
    reply.answer = [dns.rrset.from_text(question.name, 60, "IN", "A", ad_address)]
    return reply.to_wire()


def main() -> None:
    listen_ip, upstream_port, ad_address = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind((listen_ip, 53))
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    pending: dict[int, tuple[tuple[str, int], bytes]] = {}
    next_id = 0
    selector = selectors.DefaultSelector()
    selector.register(front, selectors.EVENT_READ)
    selector.register(upstream, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is front:
                query, client = front.recvfrom(65535)
                if len(query) < 12:
                    continue
                next_id = (next_id + 1) & 0xFFFF
                pending[next_id] = (client, query[:2])
                upstream.sendto(
                    next_id.to_bytes(2, "big") + query[2:], ("127.0.0.1", upstream_port)
                )
            else:
                reply, _ = upstream.recvfrom(65535)
                entry = pending.pop(int.from_bytes(reply[:2], "big"), None)
                if entry is not None:
                    client, original_id = entry
                    front.sendto(rewrite(original_id + reply[2:], ad_address), client)


if __name__ == "__main__":
    main()

"""Closed vocabularies of wallwatch records.

Every string that a record may carry in one of these fields is a member of an
enum here, so that a consumer can switch on it exhaustively and a typo is a type
error rather than a new, silent category. Members serialise as their value.

Failure strings are OONI's (ooni/spec ``data-formats/df-007-errors.md``) where
OONI has one, so that wallwatch records and OONI measurements can be judged by
the same code; wallwatch-only members say so.
"""

from __future__ import annotations

from enum import StrEnum


class TargetKind(StrEnum):
    """What the prober believes it is sending a query to.

    The kind decides how a reply is read later: any reply from a ``dark`` host is
    an injection ([triplet-2021]; [ooni-ts012], OONI ts-012, Triplet 2.1), a ``resolver``'s
    reply may be its own lie or the path's, an ``authoritative`` server's reply is
    the ground truth unless the path lies, and a ``control`` is reached over a
    channel the on-path injector cannot forge (TCP, DoT, DoH).
    """

    #: A recursive resolver (the ISP's, or a public one such as 8.8.8.8).
    RESOLVER = "resolver"
    #: A host that runs no DNS server: every reply to it was injected on the path.
    DARK = "dark"
    #: An authoritative server for the queried zone.
    AUTHORITATIVE = "authoritative"
    #: A trusted resolver reached over a channel the injector cannot race.
    CONTROL = "control"


class Engine(StrEnum):
    """The transport a query used (OONI's ``engine`` values)."""

    UDP = "udp"
    TCP = "tcp"
    DOT = "dot"
    DOH = "doh"
    #: The system resolver (OONI's ``getaddrinfo``/``system``); only in imported data.
    GETADDRINFO = "getaddrinfo"


class Failure(StrEnum):
    """Why a measurement did not end with a usable NOERROR answer.

    OONI derives ``failure`` from the first answer of a lookup; wallwatch does the
    same, so ``dns_nxdomain_error`` means the *first* reply said NXDOMAIN, even if
    a later, genuine reply disagrees. The replies themselves are all kept.
    """

    #: No reply at all within the timeout, after every retry.
    GENERIC_TIMEOUT = "generic_timeout_error"
    #: An ICMP port-unreachable came back and no DNS reply did.
    CONNECTION_REFUSED = "connection_refused"
    #: The first reply had RCODE NXDOMAIN.
    DNS_NXDOMAIN = "dns_nxdomain_error"
    #: The first reply had RCODE REFUSED.
    DNS_REFUSED = "dns_refused_error"
    #: The first reply had RCODE SERVFAIL.
    DNS_SERVFAIL = "dns_servfail_error"
    #: The first reply was NOERROR with no answer of the queried type.
    DNS_NO_ANSWER = "dns_no_answer"
    #: The first reply had another non-zero RCODE, or would not parse.
    DNS_SERVER_MISBEHAVING = "dns_server_misbehaving"
    #: A TCP/TLS/HTTPS control channel was reset or closed early.
    CONNECTION_RESET = "connection_reset"
    #: The destination could not be reached at all (ICMP host/net unreachable).
    HOST_UNREACHABLE = "host_unreachable"
    #: A TLS or HTTPS error on a DoT/DoH control lookup (wallwatch-only).
    SSL_ERROR = "ssl_failed_handshake"
    #: Any other local error, with details in the log (OONI's catch-all).
    UNKNOWN = "unknown_failure"


class ParseFailure(StrEnum):
    """Why the bytes of one reply would not parse as a DNS message.

    A reply that fails to parse is never dropped: it is kept raw, base64, with one
    of these codes, because malformed replies are themselves a fingerprint
    (Wallbleed's leaking injector, [wallbleed-2025]; [triplet-2021]; [gfwrev-2009]).
    """

    #: Fewer than the 12 bytes of a DNS header.
    SHORT_HEADER = "short_header"
    #: A name ran past the end of the message.
    NAME_TRUNCATED = "name_truncated"
    #: A compression pointer pointed forward or at itself (a loop), or the pointers
    #: chained past the per-message work bound (one step per byte; ``wire.work_budget``).
    BAD_POINTER = "bad_pointer"
    #: A label type other than a plain label or a pointer (0x40, 0x80).
    BAD_LABEL = "bad_label"
    #: A name longer than 255 bytes once decompressed.
    NAME_TOO_LONG = "name_too_long"
    #: A question or record ran past the end of the message.
    SECTION_TRUNCATED = "section_truncated"
    #: RDATA whose length does not fit its type (an A record that is not 4 bytes).
    BAD_RDATA = "bad_rdata"
    #: Bytes left over after the last record the header announces.
    TRAILING_DATA = "trailing_data"
    #: Any other reason the reference parser (dnspython) refused the message.
    OTHER = "other"


class RecordType(StrEnum):
    """The kinds of line in a wallwatch JSONL file (its ``record_type``)."""

    #: One query (with its retries) and every reply it drew.
    MEASUREMENT = "measurement"
    #: A reply that matched no open query: late beyond the window, or unknown.
    STRAY = "stray"
    #: An input line that could not be turned into a query name.
    INPUT_ERROR = "input_error"


class Outcome(StrEnum):
    """The verdict vocabulary (documented in docs/outcomes.md).

    Values are ``stage.outcome`` in the style of Censored Planet's outcome strings,
    never a bare "anomaly". The analysis assigns them; the prober never does.
    """

    #: The reply agrees with the trusted control by address.
    OK_MATCH_IP = "ok.match_ip"
    #: The reply says NXDOMAIN, and so does the control.
    OK_MATCH_NXDOMAIN = "ok.match_nxdomain"
    #: The reply has no address of the type asked, and neither has the control.
    OK_MATCH_NODATA = "ok.match_nodata"
    #: The reply agrees with the control by origin AS only (CDNs, GeoDNS).
    OK_MATCH_ASN = "ok.match_asn"
    #: The source's own check vouches for the answer (a verified TLS handshake for the
    #: name; Satellite's certificate, page, IP or AS tags matching its controls).
    OK_MATCH_SOURCE = "ok.match_source"
    #: A reply came from a host that runs no DNS server.
    INJECTED_DARK = "injected.dark_destination"
    #: More than one differing reply to one query.
    INJECTED_MULTI_REPLY = "injected.multi_reply"
    #: The answer is in a published forged-address pool.
    INJECTED_FORGED_POOL = "injected.forged_pool"
    #: A large platform's address (Facebook, Twitter, Dropbox) for a name that is not theirs.
    INJECTED_UNRELATED_PLATFORM = "injected.unrelated_platform"
    #: The reply disagrees with the control and carries an injector's header fingerprint.
    INJECTED_FINGERPRINT = "injected.fingerprint"
    #: The resolver itself answered with an address the control disowns.
    RESOLVER_TAMPERED = "resolver.tampered"
    #: Every vantage, the control included, sees the new address.
    AUTHORITATIVE_CHANGED = "authoritative.changed"
    #: NXDOMAIN was rewritten into an address (ISP advertising redirect).
    NXDOMAIN_REWRITE = "resolver.nxdomain_rewrite"
    #: The answer is a bogon (private, loopback, reserved).
    IP_BOGON = "ip.bogon"
    #: The query drew no reply.
    DNS_TIMEOUT = "dns.timeout"
    #: The reply's bytes are not a valid DNS message (kept raw; a fingerprint in itself).
    DNS_MALFORMED = "dns.malformed"
    #: The evidence does not support any of the other outcomes.
    UNKNOWN = "unknown"


class Reading(StrEnum):
    """What an outcome says of who made the reply: the classes attribution reads.

    One table (:data:`READING`) maps every :class:`Outcome` to one of these, and the
    attribution SQL, the minute signals, ``explain`` and the report are built from it,
    so an outcome is never classed in two places (a test checks the table is total).
    """

    #: The injector itself made this packet: only the path can have sent it.
    PATH = "path"
    #: The answer is forged or false, but the packet could be the resolver's own.
    FALSE_ANSWER = "false_answer"
    #: The resolver turned "no such name" into an address.
    REWRITE = "rewrite"
    #: The answer agrees with the trusted control.
    GENUINE = "genuine"
    #: Nothing came back: says nothing of tampering.
    SILENT = "silent"
    #: The evidence supports no reading.
    UNDETERMINED = "undetermined"


#: How each outcome reads (see :class:`Reading`).
READING: dict[Outcome, Reading] = {
    Outcome.OK_MATCH_IP: Reading.GENUINE,
    Outcome.OK_MATCH_NXDOMAIN: Reading.GENUINE,
    Outcome.OK_MATCH_NODATA: Reading.GENUINE,
    Outcome.OK_MATCH_ASN: Reading.GENUINE,
    Outcome.OK_MATCH_SOURCE: Reading.GENUINE,
    Outcome.INJECTED_DARK: Reading.PATH,
    Outcome.INJECTED_MULTI_REPLY: Reading.PATH,
    Outcome.INJECTED_FINGERPRINT: Reading.PATH,
    Outcome.INJECTED_FORGED_POOL: Reading.FALSE_ANSWER,
    Outcome.INJECTED_UNRELATED_PLATFORM: Reading.FALSE_ANSWER,
    Outcome.RESOLVER_TAMPERED: Reading.FALSE_ANSWER,
    Outcome.IP_BOGON: Reading.FALSE_ANSWER,
    Outcome.NXDOMAIN_REWRITE: Reading.REWRITE,
    Outcome.AUTHORITATIVE_CHANGED: Reading.UNDETERMINED,
    Outcome.DNS_TIMEOUT: Reading.SILENT,
    Outcome.DNS_MALFORMED: Reading.UNDETERMINED,
    Outcome.UNKNOWN: Reading.UNDETERMINED,
}


def outcomes(*readings: Reading) -> frozenset[Outcome]:
    """The outcomes that read as any of ``readings``."""
    return frozenset(o for o, r in READING.items() if r in readings)


#: Outcomes that *prove* the injector made the packet with no fingerprint needed: a dark
#: host answered, or the genuine answer raced it (confirmed evidence; [holdon-2012]).
PROVEN: frozenset[Outcome] = frozenset({Outcome.INJECTED_DARK, Outcome.INJECTED_MULTI_REPLY})


class Evidence(StrEnum):
    """How strongly a verdict's rule supports it (after ooni/data's evidence levels)."""

    #: Conclusive on its own (a dark host answered; a genuine reply raced the forged one).
    CONFIRMED = "confirmed"
    #: Strong, published basis, but not conclusive alone (forged pool, fingerprint).
    STRONG = "strong"
    #: Suggestive; combine with other evidence before claiming anything.
    SCORED = "scored"
    #: No evidence of tampering.
    NONE = "none"


class Attribution(StrEnum):
    """Who tampered with the answers for a name (docs/outcomes.md)."""

    #: Forged on the path by an injector (the firewall).
    ON_PATH_INJECTOR = "on_path_injector"
    #: The resolver itself answered with what the control disowns.
    TAMPERING_RESOLVER = "tampering_resolver"
    #: The authoritative data changed: every vantage agrees with the new answer.
    HIJACKED_AUTHORITATIVE = "hijacked_authoritative"
    #: The resolver rewrote NXDOMAIN into an address.
    ISP_NXDOMAIN_REWRITE = "isp_nxdomain_rewrite"
    #: Every answer agrees with the control.
    NONE = "none"
    #: The evidence does not support any of the above.
    UNKNOWN = "unknown"


class Axis(StrEnum):
    """What an aggregation counts measurements by (the API's ``/aggregation``,
    ``wallwatch aggregate``)."""

    VANTAGE = "vantage"
    TARGET = "target"
    TLD = "tld"
    QTYPE = "qtype"
    HOSTNAME = "hostname"
    #: The analysis's outcome for the measurement's first reply.
    VERDICT = "verdict"
    #: Who tampered with the name, from that vantage, in that minute.
    ATTRIBUTION = "attribution"
    #: The addresses in the first reply (a measurement counts once per address).
    ANSWER = "answer"


class Decision(StrEnum):
    """What the shield (:mod:`wallwatch.shield`) did with one query from a user."""

    #: A UDP reply from the upstream passed every check and was given.
    ACCEPTED = "accepted"
    #: Answered from the cache (an answer accepted earlier, its TTLs counted down).
    CACHED = "cached"
    #: Answered by the secure channel (DoT/DoH): no UDP reply passed within the hold,
    #: or the secure channel won a race.
    SECURE = "secure"
    #: Answered over TCP to the upstream, after an accepted UDP reply was truncated.
    TCP = "tcp"
    #: Nothing acceptable came within the hold and no secure channel answered: SERVFAIL.
    FAILED = "failed"
    #: The query was malformed: FORMERR, or dropped when not even its header was there.
    FORMERR = "formerr"
    #: The source is not in the networks allowed to use the shield.
    REFUSED = "refused"
    #: Too many queries were pending: SERVFAIL rather than unbounded memory.
    OVERLOADED = "overloaded"


class Drop(StrEnum):
    """Why the shield did not accept one UDP reply (each check that held is recorded)."""

    #: Not a DNS message, or its question is not the query's.
    QUESTION_MISMATCH = "question_mismatch"
    #: An answer in a known or learned forged pool, or in Teredo 2001::/32.
    FORGED_POOL = "forged_pool"
    #: The header fits a published injector's fingerprint (``families.SIGNS``).
    INJECTOR_PROFILE = "injector_profile"
    #: No OPT, from an upstream whose genuine replies carry it (injectors drop it).
    NO_OPT = "no_opt"
    #: An A record answering a non-A query.
    TYPE_MISMATCH = "type_mismatch"
    #: The IP TTL is more than ``signals.TTL_SLACK`` off the upstream's learned one.
    IP_TTL_OFF = "ip_ttl_off"
    #: Faster than ``signals.FAST_SHARE`` of the upstream's least learned RTT.
    TOO_FAST = "too_fast"

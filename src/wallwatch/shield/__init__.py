"""The shield: a stub resolver for people behind an on-path injector.

The firewall's injectors race the genuine reply; they cannot stop it ([holdon-2012]).
So the shield asks the upstream over UDP and keeps listening: it gives the user the
first reply that passes the checks of :mod:`.checks` (the analysis's forged pools and
injector signs, Hold-On's learned RTT and IP TTL), and when none does within a learned
hold it asks a secure channel (DoT/DoH) or answers SERVFAIL, never the forgery. What
it cannot fix by waiting -- a resolver whose cache already holds the forgery -- it
says, and the secure channel answers instead (docs/shield.md).

* :mod:`.checks`: the checks as data and the learned path;
* :mod:`.cache`: the answer cache (TTLs counted down, bounded);
* :mod:`.server`: the loop, the records and the decisions;
* :mod:`.users`: emulated users who resolve and connect, to measure a flood.
"""

from wallwatch.shield.server import Shield, ShieldConfig

__all__ = ["Shield", "ShieldConfig"]

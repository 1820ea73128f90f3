"""Mutated frames, captures and messages through an AddressSanitizer build of _native.

Run by tests/test_fastwire.py in a subprocess with libasan preloaded: a read or write out
of bounds, a use after free, or a failed CPython assertion ends it with an error.
Usage: python tests/asan_mutations.py PATH_TO_ASAN_BUILD.so [ROUNDS]
"""

import importlib.util
import random
import sys
import tempfile
from pathlib import Path

spec = importlib.util.spec_from_file_location("wallwatch._native", sys.argv[1])
assert spec is not None and spec.loader is not None
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.path.insert(0, "tests")
import test_fastwire as T  # noqa: E402

frames = T._frames()
data = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
cap = T._pcap(101, [T._ip(m) for m in T._messages()])
eth = T._pcap(1, [b"\x02" * 12 + b"\x08\x00" + T._ip(m) for m in T._messages()])
with tempfile.TemporaryDirectory() as tmp:
    T._capture_mix(Path(tmp) / "mix.pcap")
    mix = (Path(tmp) / "mix.pcap").read_bytes()
rng = random.Random(5)
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
for i in range(rounds):
    base = rng.choice([data, cap, eth, b"", mix[: 24 + rng.randrange(4000)]])
    b = bytearray(base[: rng.randrange(len(base) + 1)] if base else b"")
    for _ in range(rng.randrange(6)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    b += bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
    buffer = bytes(b)
    mod.summary(buffer[24:])
    mod.summary(buffer)
    mod.dnstap_answer(buffer)
    mod.dnstap_answer(buffer[4:])
    mod.dnstap_group(buffer, 0, {}, {}, set(), (0.0, 1.0, 0.0), True, True, [0] * 5)
    for linktype in (1, 101, 113, 276, 0):
        if len(buffer) >= 24:
            mod.scan_pcap(buffer, 24, bool(i % 2), False, linktype, 1000)
            # The fused matcher, in small steps and then the rest (its state kept between).
            state = [None, -1, None]
            offset = 24
            for limit in (3, 10**6):
                offset = mod.scan_match(buffer, offset, bool(i % 2), False, linktype, limit, 0,
                                        53, 3.0, state, {}, {}, set(), {}, {}, (0.0, 1.0, 0.0),
                                        bool(i % 3), [0])[2]  # fmt: skip
print("ok", rounds)

state = [None, -1, None]
offset, final = 24, False
keys: dict[object, object] = {}
judged: set[int] = set()
while not final:
    _, _, offset, _, _, final, _ = mod.scan_match(mix, offset, False, False, 1, 500, 0, 53, 3.0,
                                                  state, keys, {}, judged, {}, {},
                                                  (0.0, 1.0, 0.0), True, [0])  # fmt: skip
    judged |= set(list(keys)[:-2])  # minutes judged as the capture goes: their keys forgotten
    for minute in list(keys)[:-2]:
        del keys[minute]
print("mix ok")

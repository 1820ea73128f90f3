"""Benchmark: wallwatch passive reading a resolver's dnstap, against decoding the protobuf alone.

A dnstap file of generated ``CLIENT_RESPONSE`` messages (one A answer each, as a busy
resolver answers its users) is read by the Frame Streams reader and turned into
measurements (:func:`wallwatch.interop.dnstap.read_records`: framing, the protobuf, the
DNS message, the record), then grouped into minutes by :class:`wallwatch.passive.Passive`
without judging (``lag`` past the data, so no minute closes: the judgement is timed by
``bench/judge.py``). The reference, in the same run, is the least any dnstap reader
does: ``dnstap_pb`` parsing each frame's protobuf, nothing else.

The last line is machine-readable:

    passive messages_per_s=<n> protobuf_only_per_s=<n> ratio=<n>

Usage: ``.venv/bin/python bench/passive.py [--messages 200000]``
"""

from __future__ import annotations

import argparse
import socket
import struct
import tempfile
import time
from pathlib import Path

import dnstap_pb

from wallwatch.interop import dnstap
from wallwatch.passive import Passive


def answer(name: bytes, address: bytes, txid: int) -> bytes:
    question = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\0" + b"\0\1\0\1"
    return (struct.pack("!HHHHHH", txid, 0x8180, 1, 1, 0, 0) + question
            + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + address)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    start_time = 1_390_288_500
    payloads = [
        dnstap.message_bytes(
            identity=b"isp-resolver",
            type=6,
            socket_family=1,
            socket_protocol=1,
            query_address=socket.inet_aton(f"10.0.{i % 250}.{i % 200 + 1}"),
            query_port=1024 + i % 60000,
            response_address=socket.inet_aton("10.10.2.53"),
            response_port=53,
            query_time_sec=start_time + i // 5000,
            query_time_nsec=i % 1000 * 1000,
            response_time_sec=start_time + i // 5000,
            response_time_nsec=i % 1000 * 1000 + 400_000,
            response_message=answer(
                f"site{i % 5000}.example.com".encode(),
                socket.inet_aton(f"198.51.{i % 250}.{i % 200}"),
                i % 65536,
            ),
        )  # fmt: skip
        for i in range(args.messages)
    ]
    with tempfile.TemporaryDirectory(prefix="ww-bench-passive-") as tmp:
        path = Path(tmp) / "resolver.dnstap"
        with open(path, "wb") as handle:
            dnstap.write_frames(handle, payloads)
        # The reference: the protobuf alone, frame by frame.
        message = dnstap_pb.Dnstap()
        start = time.perf_counter()
        for payload in payloads:
            message.ParseFromString(payload)
        reference = len(payloads) / (time.perf_counter() - start)
        # wallwatch: read, convert, group into minutes (no minute closes: lag past the data).
        engine = Passive(Path(tmp) / "out", emit=lambda line: None, lag=10**9)
        start = time.perf_counter()
        count = 0
        for record in dnstap.read_records(path):
            engine.add(record)  # type: ignore[arg-type]
            count += 1
        ours = count / (time.perf_counter() - start)
    print(f"passive messages_per_s={ours:.0f} protobuf_only_per_s={reference:.0f} "
          f"ratio={ours / reference:.2f} messages={count}")  # fmt: skip


if __name__ == "__main__":
    main()

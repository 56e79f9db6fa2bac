"""``python -m bench.codec [--mib 256] [--level 3] [--rounds 3]``: how fast store.codec encodes and decodes.

A redis-like replication stream (RESP `SET key:N value` commands, a quarter with random hex values),
made before the clock starts, is encoded and decoded in memory for each encoding; printed are MiB/s of
plain bytes and the compression ratio. No thresholds: a figure for docs/PERFORMANCE.md and reviews.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import random
import time
from collections.abc import Iterator

from redis_backup.store.codec import Codec, Key, decode

MIB = 1 << 20
NAME = "20261125T190811Z-c2abd784-0/appendonly.aof.1.incr.aof"


def commands(total: int, seed: int = 1) -> list[bytes]:
    """About 1 MiB pieces of RESP SET commands, `total` bytes in all."""
    rnd, i, made, out = random.Random(seed), 0, 0, []
    while made < total:
        lines = []
        for _ in range(16000):
            value = rnd.randbytes(16).hex().encode() if i % 4 == 0 else b"value-%d" % (i % 1000)
            key = b"key:%d" % i
            lines.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
            i += 1
        piece = b"".join(lines)[: total - made]
        out.append(piece)
        made += len(piece)
    return out


def stream(blocks: list[bytes], total: int) -> Iterator[bytes]:
    """`total` bytes: the blocks over and over (32 MiB of them, more than zstd's window remembers)."""
    made = 0
    for block in itertools.cycle(blocks):
        piece = block[: total - made]
        if not piece:
            return
        made += len(piece)
        yield piece


def measure(codec: Codec, blocks: list[bytes], total: int, rounds: int) -> tuple[float, float, float]:
    """(encode MiB/s, decode MiB/s, compression ratio), of plain bytes, the best of `rounds` (the
    machine's noise only ever slows a round down)."""
    enc = dec = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        encoded = list(codec.encode(stream(blocks, total), NAME))
        t1 = time.perf_counter()
        size = sum(map(len, encoded))
        source = io.BytesIO(b"".join(encoded))
        del encoded
        t2 = time.perf_counter()
        with decode(source, NAME + codec.suffix, codec.key) as f:
            n = 0
            while piece := f.read(MIB):
                n += len(piece)
        t3 = time.perf_counter()
        assert n == total, (n, total)
        enc, dec = max(enc, total / MIB / (t1 - t0)), max(dec, total / MIB / (t3 - t2))
    return enc, dec, total / size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="plain MiB per encoding (default 256)")
    parser.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per encoding, the best is shown (default 3)")
    args = parser.parse_args()
    key = Key.from_secret(os.urandom(32))
    blocks = commands(32 * MIB)
    total = args.mib * MIB
    print(f"{args.mib} MiB of RESP SET commands, zstd level {args.level}, chunk 1 MiB, one thread, "
          f"best of {args.rounds}")  # fmt: skip
    print(f"{'encoding':<10} {'encode MiB/s':>13} {'decode MiB/s':>13} {'ratio':>7}")
    for label, codec in [
        ("zstd+aes", Codec("zstd", args.level, key)),
        ("zstd", Codec("zstd", args.level)),
        ("aes", Codec("none", args.level, key)),
    ]:
        enc, dec, ratio = measure(codec, blocks, total, args.rounds)
        print(f"{label:<10} {enc:>13.0f} {dec:>13.0f} {ratio:>7.2f}")


if __name__ == "__main__":
    main()

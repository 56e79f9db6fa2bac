"""``python -m bench.rdbwalk [SIZE_MB]``: what walking the snapshot's structure (which databases it
uses, redis_backup/rdbscan.py) costs on top of the checks the service already makes while it receives
one (RdbDigest: CRC64 and SHA-256), on the benchmark dataset, in the service's 256 KiB chunks.

In-process CPU time, medians of 5 rounds, both side by side in the same process.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.datasets import populate
from redis_backup.chain.rdb import RdbDigest
from redis_backup.chain.rdbscan import RdbScan
from tests.support.servers import RedisServer

CHUNK = 1 << 18


def main(size_mb: int = 100) -> None:
    with tempfile.TemporaryDirectory(prefix="redis-backup-rdbwalk-") as tmp:
        srv = RedisServer(Path(tmp) / "srv")
        try:
            populate(srv, size_mb << 20)
            srv.execute("SAVE")
            data = (Path(tmp) / "srv" / "dump.rdb").read_bytes()
        finally:
            srv.stop()
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]

    def digest() -> None:
        d = RdbDigest()
        for c in chunks:
            d.update(c)
        d.verify()

    def digest_and_walk() -> None:
        d, s = RdbDigest(), RdbScan()
        for c in chunks:
            d.update(c)
            s.feed(c)
        d.verify()
        s.finish()
        assert s.complete, s.error

    times: dict[str, list[float]] = {"digest": [], "digest+walk": []}
    for _ in range(5):
        for name, fn in (("digest", digest), ("digest+walk", digest_and_walk)):
            t = time.process_time()
            fn()
            times[name].append(time.process_time() - t)
    mb = len(data) / 1e6
    for name, v in times.items():
        print(f"{name:12} {statistics.median(v):.3f} s CPU for {mb:.0f} MB ({mb / statistics.median(v):.0f} MB/s)")
    print(f"walk adds {statistics.median(times['digest+walk']) - statistics.median(times['digest']):.3f} s per "
          f"{mb:.0f} MB; ratio {statistics.median(times['digest+walk']) / statistics.median(times['digest']):.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)

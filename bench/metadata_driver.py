"""``python -m bench.metadata_driver OUT_DIR SIZES ROTATIONS [COPY_AT]``: drive a ChainWriter in-process.

Run with PYTHONPATH starting with one code tree (this checkout, or an older commit unpacked elsewhere): it uses
only what both have (SnapshotWriter, ChainWriter.append / maybe_rotate / write_metadata). The chain grows
to each size in SIZES (comma separated file counts); at each, ROTATIONS real rotations are timed (CPU and
wall), then the once-a-second metadata write, and RSS is read. Between sizes the chain is fast-forwarded:
sealed files holding only their SELECT header and a #TS line (no stream bytes, so offsets stay
contiguous) are put on disk and into the metadata the way each version keeps them (the list in memory, or
the journal), so reaching 10,000 files does not take hours on the old code. At each size in COPY_AT the
chain directory is copied to OUT_DIR/copy-<size>/ for list, restore --dry-run and recovery timings.
Prints one JSON object.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.metadata import FileMeta
from redis_backup.chain.writer import ChainWriter, Limits, SnapshotWriter
from redis_backup.store.fsutil import atomic_write
from redis_backup.wire.protocol import StreamData
from redis_backup.wire.resp import StreamScanner, encode_command
from tests.support.fake_primary import empty_rdb

T0 = 1_800_000_000


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Driver:
    def __init__(self, root: Path) -> None:
        self.limits = Limits(segment_max_bytes=1 << 40, segment_max_seconds=1.0)
        snap = SnapshotWriter(root, primary="bench:6379", replid="ab" * 20, offset=0, now=T0, limits=self.limits)
        snap.write(empty_rdb())
        self.w: ChainWriter = snap.finish(T0)
        self.sc = StreamScanner()
        self.offset = 0
        self.now = float(T0)
        self.journal = hasattr(self.w.meta, "journal_records")  # format 3

    def files(self) -> int:
        m = self.w.meta
        return int(getattr(m, "journal_records", 0)) + len(m.files) if self.journal else len(m.files)

    def rotate(self) -> tuple[float, float]:
        """One SET, then the rotation it makes due: (CPU, wall) seconds of the rotation."""
        data = encode_command("SET", "key", "v" * 64)
        sc = self.sc
        sc.feed(data)
        ev = StreamData(data, self.offset, self.offset + len(data), sc.first_safe, sc.last_safe, sc.last_safe_db,
                        sc.last_boundary, sc.db, sc.in_multi, sc.writes, sc.getack, sc.max_db)  # fmt: skip
        self.offset += len(data)
        self.now += 1
        self.w.append(ev, self.now)
        self.now += 1
        cpu, wall = time.process_time(), time.perf_counter()
        assert self.w.maybe_rotate(self.now)
        return time.process_time() - cpu, time.perf_counter() - wall

    def periodic_write(self) -> float:
        cpu = time.process_time()
        self.w.write_metadata(self.w.metadata_version())
        return time.process_time() - cpu

    def manifest_rewrite(self) -> tuple[float, float]:
        """The manifest rewritten with one more file, the way this version's rotation does it (CPU, wall
        seconds); then put back as it was."""
        path = self.w.dir / naming.MANIFEST
        before = path.stat().st_size
        cur = self.w.current
        nxt = FileMeta(naming.incr_file(cur.seq + 1), "incr", cur.seq + 1, 0)
        cpu, wall = time.process_time(), time.perf_counter()
        if hasattr(md, "append_manifest"):
            md.append_manifest(self.w.dir, nxt)
        else:  # format 2: rendered from the list of every file
            atomic_write(path, md.render_manifest([*self.w.meta.files, nxt]))
        took = time.process_time() - cpu, time.perf_counter() - wall
        os.truncate(path, before)
        return took

    def fast_forward(self, count: int) -> None:
        """Put count sealed files before the open one (just rotated: it holds only its header)."""
        w = self.w
        cur = w.current
        header = encode_command("SELECT", cur.start_db)
        first = cur.seq
        os.rename(w.dir / cur.name, w.dir / naming.incr_file(first + count))
        ts = int(self.now)
        data = header + b"#TS:%d\r\n" % ts
        sha = hashlib.sha256(data).hexdigest()
        fakes = []
        for seq in range(first, first + count):
            (w.dir / naming.incr_file(seq)).write_bytes(data)
            fakes.append(FileMeta(name=naming.incr_file(seq), type="incr", seq=seq, start_offset=cur.start_offset,
                                  end_offset=cur.start_offset, header_size=len(header), start_db=cur.start_db,
                                  first_ts=ts, last_ts=ts, size=len(data), sha256=sha))  # fmt: skip
        cur.seq = first + count
        cur.name = naming.incr_file(cur.seq)
        if self.journal:
            lines = b"".join(md.journal_line(f) for f in fakes)
            with open(w.dir / naming.JOURNAL, "ab") as j:
                j.write(lines)
            w.meta.journal_records += count
            w.meta.journal_bytes += len(lines)
        else:
            w.meta.files[-1:-1] = fakes
        lines = (f"file {naming.incr_file(s)} seq {s} type i\n".encode() for s in range(first + 1, cur.seq + 1))
        with open(w.dir / naming.MANIFEST, "ab") as m:  # it lists the files up to the one that was open
            m.write(b"".join(lines))
        del fakes
        w.write_metadata()


def main() -> None:
    out = Path(sys.argv[1])
    sizes = [int(s) for s in sys.argv[2].split(",")]
    rotations = int(sys.argv[3])
    copy_at = {int(s) for s in sys.argv[4].split(",") if s} if len(sys.argv) > 4 else set()
    root = out / "bk"
    root.mkdir(parents=True)
    d = Driver(root)
    results: list[dict[str, Any]] = []
    for size in sizes:
        behind = size - rotations - d.files()
        while behind > 0:  # in batches: what the driver itself allocates stays out of the RSS figures
            d.fast_forward(min(behind, 200))
            behind = size - rotations - d.files()
        samples = [d.rotate() for _ in range(rotations)]
        writes = [d.periodic_write() for _ in range(rotations)]
        manifests = [d.manifest_rewrite() for _ in range(rotations)]
        gc.collect()
        manifest = (d.w.dir / naming.MANIFEST).stat().st_size
        results.append({
            "files": d.files(),
            "rotation_cpu": sorted(c for c, _ in samples)[len(samples) // 2],
            "rotation_wall": sorted(w for _, w in samples)[len(samples) // 2],
            "write_cpu": sorted(writes)[len(writes) // 2],
            "manifest_cpu": sorted(c for c, _ in manifests)[len(manifests) // 2],
            "manifest_wall": sorted(w for _, w in manifests)[len(manifests) // 2],
            "rss_kib": rss_kib(),
            "metadata_bytes": (d.w.dir / naming.METADATA).stat().st_size,
            "manifest_bytes": manifest,
        })  # fmt: skip
        if size in copy_at:
            d.w.write_metadata()
            (out / f"copy-{size}").mkdir()  # by cp: copying in-process would add its objects to the RSS
            subprocess.run(["cp", "-a", str(d.w.dir), str(out / f"copy-{size}")], check=True)
    d.w.release()
    print(json.dumps({"results": results, "chain": d.w.dir.name}))


if __name__ == "__main__":
    main()

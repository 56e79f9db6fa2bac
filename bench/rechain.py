"""9. New chains: the time a restore of the latest state takes, against the age of the newest snapshot.

A primary holds a dataset of about restore_snapshot bytes; the service backs it up with
SNAPSHOT_INTERVAL_HOURS=0 (new chains only when asked). The load then writes restore_stream bytes of
commands into the first chain. `snapshot-now --wait` begins a second chain without a gap; with nothing
written since, both chains end in the same state, so each round times (A B A B, page cache warm):

- `restore --chain <first>`: the snapshot plus every command since the service started (an old snapshot);
- `restore` of the latest state, which `restore` takes from the new chain: its snapshot and no commands;

each followed by redis-server loading the output (the replay is where the commands cost).

Then the load writes half as much again into the new chain, and the latest restore is timed once more
(a snapshot half an interval old). Each restore is loaded by redis-server and fingerprinted against the
primary (bench/restore.py): a fast restore of the wrong data would count for nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from .datasets import populate
from .lab import SERVICE, Lab, attach, command_env, service_command
from .measure import Stopwatch, run_measured
from .report import Metric, Section, Skip, Target
from .restore import _load, _server, _write_stream, check_available, fingerprint
from .settings import Settings, room_for

OLD = "restore, snapshot as old as the whole stream"
FRESH = "restore latest, fresh snapshot"
RATIO_LIMIT = 0.8  # the fresh chain replays no commands: it must restore faster than the old one


def _restore(lab: Lab, backup_dir: str, *chain: str) -> tuple[float, str]:
    """(seconds of restore --format aof plus redis-server loading its output, the loaded fingerprint):
    the copy costs the same for both chains (about as many bytes), the replay of commands does not."""
    server = _server(lab, aof_dir="appendonlydir")
    try:
        argv = service_command("restore", "--to", str(server.dir), "--backup-dir", backup_dir, *chain)
        done = run_measured(argv, server.dir.parent / "restore-rechain.log", env=command_env(LOG_LEVEL="warning"))
        if done.returncode != 0:
            raise RuntimeError(f"restore failed: {done.tail()}")
        load, found = _load(server)
        return done.wall + load, found
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def _chains(backup_dir: str) -> list[dict[str, object]]:
    out = subprocess.run(service_command("list", "--json", "--backup-dir", backup_dir), env=command_env(),
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return list(json.loads(out.stdout)["chains"])


def run(lab: Lab, settings: Settings) -> list[Section]:
    check_available()
    stream = settings.restore_stream.bytes
    problem = room_for(settings.restore_snapshot.bytes * 3 + stream * 2, lab.root, disk_factor=3.0)
    if problem is not None:
        raise Skip(problem)
    clock = Stopwatch()
    primary = lab.primary()
    section = Section("rechain", rounds=settings.rounds)
    times: dict[str, list[float]] = {OLD: [], FRESH: []}
    wrong: list[str] = []
    try:
        populate(primary, settings.restore_snapshot.bytes)
        with attach(lab, SERVICE, primary) as rep:  # SNAPSHOT_INTERVAL_HOURS default 24: not during the run
            backup_dir = str(rep.dir)
            written = _write_stream(primary, stream, rep.dir)
            primary.wait_replicas_caught_up(timeout=600)
            asked = subprocess.run(service_command("snapshot-now", "--wait", "--timeout", "600"),
                                   env=command_env(BACKUP_DIR=backup_dir), capture_output=True, text=True,
                                   timeout=660, check=False)  # fmt: skip
            if asked.returncode != 0:
                raise RuntimeError(f"snapshot-now failed: {asked.stderr.strip()}")
            primary.wait_replicas_caught_up(timeout=600)
            expected = fingerprint(primary)
            first, second = (str(c["chain"]) for c in _chains(backup_dir)[:2])
            for _ in range(settings.rounds):
                for name, args in ((OLD, ("--chain", first)), (FRESH, ())):
                    seconds, found = _restore(lab, backup_dir, *args)
                    times[name].append(seconds)
                    if found != expected:
                        wrong.append(name)
            more = _write_stream(primary, stream // 2, rep.dir)
            primary.wait_replicas_caught_up(timeout=600)
            expected_half = fingerprint(primary)
            half: list[float] = []
            for _ in range(settings.rounds):
                seconds, found = _restore(lab, backup_dir)
                half.append(seconds)
                if found != expected_half:
                    wrong.append("half")
    finally:
        primary.stop()
    section.add(Metric("restore + load of the latest state: fresh snapshot vs one as old as the stream", "s", FRESH,
                       times[FRESH], OLD, times[OLD], Target("ratio", "<=", RATIO_LIMIT)))  # fmt: skip
    section.add(Metric("restore + load of the latest state: snapshot half as old vs as old as the stream", "s",
                       "restore latest, half the stream since the snapshot", half, OLD, times[OLD]))  # fmt: skip
    if wrong:
        section.metrics[0].note = f"DATA MISMATCH: {', '.join(sorted(set(wrong)))} loaded another dataset"
    section.details = {
        "stream_bytes_first_chain": written,
        "stream_bytes_after_switch": more,
        "chains": [first, second],
        "data_matches_primary": not wrong,
        "rounds": {**times, "half": half},
        "seconds": round(clock.elapsed(), 1),
    }
    return [section]

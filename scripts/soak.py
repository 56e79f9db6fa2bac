"""Soak test, outside CI: the service backs up a primary under constant writes while random faults
hit it for --minutes (30 by default); at the end the backup must load with the primary's DEBUG DIGEST.

    python3 scripts/soak.py --minutes 30          # or: bash scripts/soak --minutes 30

Faults, drawn at random every few seconds: kill -9 of the service (then restart), SIGTERM and restart,
CLIENT KILL of the replica connection on the primary, a stall of the link through a TCP proxy (some
longer than READ_TIMEOUT_SECONDS), a cut of the link now, a cut after a random number of bytes (in the
middle of a command). Writes: a background SET/INCR writer plus the mixed workload of the tests (every
data type, MULTI/EXEC, Lua, binary values, three dbs) with a new seed each round.

Everything runs on loopback in a temporary directory (kept with --keep); a summary is printed and
written to <workdir>/soak-result.json. Exit code 0 when the digest matches and `verify` passes.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.chains import chain_dirs  # noqa: E402
from tests.support.proxy import TcpProxy  # noqa: E402
from tests.support.servers import RedisFactory, RedisServer, wait_until  # noqa: E402
from tests.support.service import ServiceProcess, run_cli, service_env  # noqa: E402
from tests.support.workload import BackgroundWriter, mixed_workload  # noqa: E402

READ_TIMEOUT = 3
FAULTS = ("kill9", "sigterm", "client-kill", "stall-short", "stall-long", "cut-now", "cut-mid-stream")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


class Soak:
    def __init__(self, work: Path, minutes: float, seed: int) -> None:
        self.work = work
        self.deadline = time.monotonic() + minutes * 60
        self.minutes = minutes
        self.rng = random.Random(seed)
        self.seed = seed
        self.redis = RedisFactory(work / "redis")
        self.backup_dir = work / "backups"
        self.faults: collections.Counter[str] = collections.Counter()
        self.recoveries: list[float] = []
        self.problems: list[str] = []
        self.rounds = 0
        self.services = 0
        self.primary: RedisServer | None = None
        self.proxy: TcpProxy | None = None
        self.svc: ServiceProcess | None = None

    def start_service(self) -> ServiceProcess:
        assert self.primary is not None and self.proxy is not None
        self.services += 1
        env = service_env(
            self.primary, self.backup_dir,
            REDIS_HOST=self.proxy.host, REDIS_PORT=self.proxy.port, READ_TIMEOUT_SECONDS=READ_TIMEOUT,
            MAX_RETRIES=0, SEGMENT_MAX_BYTES=1 << 20, SEGMENT_MAX_SECONDS=10,
        )  # fmt: skip
        self.svc = ServiceProcess(env, self.work / f"service-{self.services}")
        return self.svc

    def caught_up(self, timeout: float = 120, *, writes_stopped: bool = False) -> float:
        """Wait until the service acknowledged everything written so far (writes go on meanwhile)."""
        assert self.primary is not None and self.svc is not None
        primary = self.primary
        start = time.monotonic()
        target = primary.master_repl_offset()

        def acked() -> bool:
            return any(r.state == "online" and r.offset >= target for r in primary.replicas())

        try:
            if writes_stopped:
                primary.wait_replicas_caught_up(timeout)
            else:
                wait_until(acked, timeout=timeout, message=f"the service acknowledges offset {target}")
        except AssertionError as e:
            self.problems.append(f"not caught up after {timeout}s: {e}"[:500])
            raise
        if not self.svc.alive():
            self.problems.append(f"service exited {self.svc.returncode}: {self.svc.stderr_text()[-500:]}")
        return time.monotonic() - start

    def fault(self, kind: str) -> None:
        assert self.primary is not None and self.proxy is not None and self.svc is not None
        self.faults[kind] += 1
        if kind == "kill9":
            self.svc.kill9()
            self.start_service()
        elif kind == "sigterm":
            rc = self.svc.stop(timeout=20)
            if rc != 0:
                self.problems.append(f"SIGTERM: exit status {rc}")
            self.start_service()
        elif kind == "client-kill":
            self.primary.execute("CLIENT", "KILL", "TYPE", "replica")
        elif kind == "stall-short":
            self.proxy.stall_for(self.rng.uniform(0.2, READ_TIMEOUT - 1))
        elif kind == "stall-long":
            self.proxy.stall_for(self.rng.uniform(READ_TIMEOUT + 0.5, READ_TIMEOUT + 4))
        elif kind == "cut-now":
            self.proxy.cut(abort=self.rng.random() < 0.5)
        elif kind == "cut-mid-stream":
            self.proxy.cut_after(self.rng.randrange(1, 400_000))

    def run(self) -> dict[str, Any]:
        self.primary = self.redis(extra_args=["--repl-backlog-size", "128mb", "--repl-timeout", "10"])
        self.proxy = TcpProxy(self.primary.host, self.primary.port).start()
        self.start_service()
        wait_until(lambda: chain_dirs(self.backup_dir), timeout=60, message="the first chain")
        writer = BackgroundWriter(self.primary.client(5), interval=0.002).start()  # about 500 pairs a second
        started = time.monotonic()
        try:
            while time.monotonic() < self.deadline:
                self.rounds += 1
                # faults land while the workload runs: the background writer, and the mixed workload
                # when the fault does not block the caller
                kind = self.rng.choice(FAULTS)
                self.fault(kind)
                mixed_workload(self.primary.client, rounds=2, seed=self.seed * 100_000 + self.rounds)
                self.recoveries.append(self.caught_up())
                if self.rounds % 10 == 0:
                    log(f"round {self.rounds}: {dict(self.faults)}, {writer.written} background writes")
        finally:
            written = writer.stop()
        return self.finish(written, time.monotonic() - started)

    def finish(self, written: int, seconds: float) -> dict[str, Any]:
        assert self.primary is not None and self.svc is not None
        self.caught_up(writes_stopped=True)
        rc = self.svc.stop(timeout=30)
        chains = chain_dirs(self.backup_dir)
        digest_ok = False
        if chains:
            restored = self.redis.load_chain(chains[-1])
            digest_ok = restored.digest() == self.primary.digest()
            restored.stop()
            for old in chains[:-1]:  # older chains (after a full resync) must still load
                self.redis.load_chain(old).stop()
        verify = run_cli(["verify", "--backup-dir", str(self.backup_dir)], timeout=600)
        stored = sum(p.stat().st_size for p in self.backup_dir.rglob("*") if p.is_file())
        result = {
            "minutes_asked": self.minutes,
            "seconds": round(seconds, 1),
            "seed": self.seed,
            "rounds": self.rounds,
            "faults": dict(self.faults),
            "background_writes": written,
            "chains": len(chains),
            "stored_bytes": stored,
            "max_catch_up_seconds": round(max(self.recoveries, default=0.0), 2),
            "service_exit_on_sigterm": rc,
            "verify_exit": verify.returncode,
            "verify_output": verify.stdout.strip().splitlines()[-1:] + verify.stderr.strip().splitlines()[-3:],
            "digest_matches": digest_ok,
            "problems": self.problems,
        }
        result["ok"] = bool(digest_ok and verify.returncode == 0 and rc == 0 and not self.problems)
        return result

    def close(self) -> None:
        if self.svc is not None and self.svc.alive():
            self.svc.kill9()
        if self.proxy is not None:
            self.proxy.stop()
        self.redis.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to inject faults (default 30)")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="random seed")
    ap.add_argument("--workdir", type=Path, help="where to run (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="redis-backup-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"soak: {args.minutes:g} minutes, seed {args.seed}, in {work}")
    soak = Soak(work, args.minutes, args.seed)
    try:
        result = soak.run()
    except Exception as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "faults": dict(soak.faults),
                  "problems": soak.problems}  # fmt: skip
    finally:
        soak.close()
    (work / "soak-result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if not args.keep and result.get("ok") and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    log("soak " + ("passed" if result.get("ok") else f"FAILED (kept in {work})"))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

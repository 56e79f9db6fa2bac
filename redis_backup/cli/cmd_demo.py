"""`redis-backup demo`: the whole job on a throwaway primary, in well under a minute, before any setup.

It starts a redis-server in a temporary directory, runs the service against it (a child process, as
`redis-backup run` would be), writes a small mixed workload over three databases in two phases, restores
the second between them and the latest state, and prints the primary's digests beside the restored ones
with every command it ran. Nothing of the user's configuration is used: the children get an environment
without any redis-backup setting, so that a demo never writes to a real bucket or attaches to a real
primary.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from redis_backup.cli import config
from redis_backup.cli.cmd_status import fetch
from redis_backup.cli.config import OPTIONS, Config
from redis_backup.errors import BackupError, ConfigError
from redis_backup.restore.tempserver import ServerBinary, TempRedis, find_redis_server
from redis_backup.times import iso

if TYPE_CHECKING:
    import redis

DBS = (0, 1, 2)
SEED_OPS = 1500  # before the service attaches: these are in the snapshot
PHASE_OPS = 3000  # each phase after it: these are in the incr files
WAIT_SECONDS = 60.0  # for a server to start, the service to attach, an offset to be acknowledged
EXIT_MISMATCH = 1
MIN_SERVER = {"redis": (7, 0, 0), "valkey": (7, 2, 0)}  # the first with multi-part AOF directories
T = TypeVar("T")


class DemoError(BackupError):
    """A step of the demo failed: what failed, and where its log is."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="back up a throwaway redis-server under a small workload and restore it to a second (no setup needed)",
        description="Start a redis-server in a temporary directory, run the service against it, write a mixed "
        "workload over three databases, restore the second in the middle and the latest state, and print "
        "the primary's and the restored digests side by side with the commands it ran (about 15 seconds). "
        "None of your REDIS_*, BACKUP_*, S3_* or AWS_* settings is used but REDIS_SERVER_BIN: the redis-server "
        "(7.0 or newer) it runs as the primary and loads the restores in. Exit 0 when both restores match the "
        "primary, 1 when not.",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (backup, restores, logs)")
    config.add_options(p, ["server", "log"])
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------ the workload


def workload(clients: Sequence[redis.Redis], rng: random.Random, ops: int, phase: str) -> None:
    """`ops` writes of every common type over the databases, in pipelines (some as MULTI/EXEC). Keys carry
    the phase so that each phase adds keys and changes earlier ones: a restore of the wrong second differs."""
    done = 0
    while done < ops:
        client = rng.choice(clients)
        pipe = client.pipeline(transaction=rng.random() < 0.2)
        for _ in range(min(100, ops - done)):
            n = rng.randrange(400)
            kind = rng.randrange(10)
            if kind == 0:
                pipe.set(f"str:{phase}:{n}", rng.randbytes(rng.randrange(1, 300)))
            elif kind == 1:
                pipe.incrby(f"counter:{n % 40}", rng.randrange(1, 1000))
            elif kind == 2:
                pipe.hset(f"hash:{n % 60}", f"f{rng.randrange(50)}", rng.randrange(10**9))
            elif kind == 3:
                pipe.rpush(f"list:{n % 30}", *(f"{phase}-{rng.randrange(10**6)}" for _ in range(3)))
            elif kind == 4:
                pipe.sadd(f"set:{n % 30}", *(rng.randrange(5000) for _ in range(4)))
            elif kind == 5:
                pipe.zadd(f"zset:{n % 30}", {f"m{rng.randrange(500)}": rng.random() * 1000})
            elif kind == 6:
                pipe.xadd(f"stream:{n % 10}", {"phase": phase, "v": rng.randrange(10**6)})
            elif kind == 7:
                pipe.expire(f"str:{phase}:{n}", 86400 + rng.randrange(3600))  # absolute in the stream
            elif kind == 8:
                pipe.append(f"log:{n % 20}", f"{phase}:{n};")
            else:
                pipe.delete(f"str:seed:{n}")
            done += 1
        pipe.execute()


# ---------------------------------------------------------------------------------------- the processes


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (held together while chosen, so never the same twice)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _clean_env(**settings: str) -> dict[str, str]:
    """The user's environment without any setting of ours (or of AWS's), and the demo's settings."""
    ours = {o.env for o in OPTIONS}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("AWS_")}
    env.update(settings)
    return env


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def _poll(
    what: str, check: Callable[[], T | None], alive: Callable[[], str | None], hint: Callable[[], str] = str
) -> T:
    """check() until it returns a value, within WAIT_SECONDS; alive() names a child that exited, hint() says
    what the child being waited for last logged (its log is removed with the directory)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        dead = alive()
        if dead is not None:
            raise DemoError(f"{what}: {dead}")
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            why = hint()
            raise DemoError(f"{what}: not within {WAIT_SECONDS:g} seconds" + (f"; {why}" if why else ""))
        time.sleep(0.05)


@dataclass
class Child:
    """A child process and its log file, stopped with SIGTERM on the way out."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def exited(self) -> str | None:
        rc = self.proc.poll()
        return None if rc is None else f"{self.name} exited with status {rc}: {_tail(self.log)}"

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the demo's process ends, however it ends (kill -9,
    the OOM killer), so that no redis-server or service is left behind. Elsewhere: nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1


@contextmanager
def _child(name: str, argv: Sequence[str], log: Path, env: dict[str, str], cwd: Path) -> Iterator[Child]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            start_new_session=True,  # a Ctrl-C reaches the demo, which stops it
            preexec_fn=_die_with_parent,  # and a demo killed outright takes them along
        )  # fmt: skip
    child = Child(name, proc, log)
    try:
        yield child
    finally:
        child.stop()


def _client(port: int, db: int = 0) -> redis.Redis:
    import redis

    r: redis.Redis = redis.Redis(host="127.0.0.1", port=port, db=db, socket_timeout=10)
    return r


def _digest(client: redis.Redis) -> str:
    command: Callable[..., Any] = client.execute_command
    d = command("DEBUG", "DIGEST")
    return d.decode() if isinstance(d, bytes) else str(d)


def _keys(client: redis.Redis) -> dict[int, int]:
    space = client.info("keyspace")
    return {db: int(space.get(f"db{db}", {}).get("keys", 0)) for db in DBS}


@dataclass(frozen=True)
class State:
    """What a server holds: its digest and the keys of each database."""

    digest: str
    keys: dict[int, int]

    @staticmethod
    def of(client: redis.Redis) -> State:
        return State(_digest(client), _keys(client))

    def render(self) -> str:
        return f"{self.digest[:16]}  " + " ".join(f"db{db}:{n}" for db, n in self.keys.items())


# --------------------------------------------------------------------------------------------- the demo


class Demo:
    def __init__(self, root: Path, server: ServerBinary, out: Callable[[str], None]) -> None:
        self.root = root
        self.server = server
        self.out = out
        self.backup = root / "backup"
        self.port, self.metrics = _free_ports(2)
        self.env = _clean_env(
            BACKUP_DIR=str(self.backup), REDIS_HOST="127.0.0.1", REDIS_PORT=str(self.port),
            METRICS_PORT=str(self.metrics), METRICS_HOST="127.0.0.1", LOG_LEVEL="warning",
            REDIS_SERVER_BIN=server.path,
        )  # fmt: skip
        self.children: list[Child] = []

    def say(self, argv: Sequence[str], env: Sequence[str] = ()) -> None:
        shown = [f"{k}={shlex.quote(self.env[k])}" for k in env]
        self.out("$ " + " ".join([*shown, *(shlex.quote(a) for a in argv)]))

    def note(self, text: str) -> None:
        self.out(f"  {text}")

    def alive(self) -> str | None:
        return next((d for d in (c.exited() for c in self.children) if d is not None), None)

    def hint(self) -> str:
        """The last line the newest child logged (the one waited for), if it logged anything."""
        if not self.children:
            return ""
        child = self.children[-1]
        last = _tail(child.log, 1)
        return "" if last in ("(no log)", "(empty log)") else f"{child.name} last logged: {last}"

    def start_primary(self, stack: ExitStack) -> redis.Redis:
        data = self.root / "primary"
        data.mkdir()
        argv = [
            self.server.path, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--enable-debug-command", "local",
        ]  # fmt: skip
        self.say(["redis-server", *argv[1:]])
        child = stack.enter_context(_child("the primary (redis-server)", argv, self.root / "primary.log",
                                           self.env, data))  # fmt: skip
        self.children.append(child)
        client = _client(self.port)
        import redis

        def up() -> bool | None:
            try:
                pid = int(client.info("server")["process_id"])
            except (redis.ConnectionError, redis.BusyLoadingError):  # not listening (or loading) yet
                return None
            if pid != child.proc.pid:  # the port was free a moment ago: never write to another's server
                raise DemoError(f"starting the primary: 127.0.0.1:{self.port} is another redis-server's (pid {pid}), "
                                "taken since it was chosen: run the demo again")  # fmt: skip
            return True

        _poll("starting the primary", up, self.alive, self.hint)
        self.note(f"primary: {self.server} on 127.0.0.1:{self.port}")
        return client

    def status(self) -> dict[str, Any] | None:
        """The service's shard in its /status, None while it does not answer yet."""
        try:
            shards = fetch(f"http://127.0.0.1:{self.metrics}")["shards"]
        except ConfigError:
            return None
        shard: dict[str, Any] | None = shards[0] if shards else None
        return shard

    def start_service(self, stack: ExitStack) -> Child:
        self.say(["redis-backup", "run"], env=("REDIS_HOST", "REDIS_PORT", "BACKUP_DIR", "METRICS_PORT"))
        argv = [sys.executable, "-m", "redis_backup", "run"]
        child = stack.enter_context(_child("the service (redis-backup run)", argv, self.root / "service.log",
                                           self.env, self.root))  # fmt: skip
        self.children.append(child)

        def attached() -> dict[str, Any] | None:
            s = self.status()
            return s if s and s.get("attached") and (s.get("backup") or {}).get("current") else None

        s = _poll("waiting for the service to take its snapshot and stream", attached, self.alive, self.hint)
        chain = s["backup"]["current"]
        self.note(f"attached: snapshot stored, streaming into chain {chain['chain']} (in {self.backup})")
        return child

    def acknowledged(self, primary: redis.Redis) -> int:
        """Wait until the service has acknowledged (stored and fsync'd) every byte the primary sent."""

        def caught_up() -> int | None:
            offset = int(primary.info("replication")["master_repl_offset"])
            s = self.status()
            return offset if s and s.get("acked_offset") == offset else None

        return _poll("waiting for the service to acknowledge the primary's offset", caught_up, self.alive, self.hint)

    def run_cli(self, args: Sequence[str]) -> str:
        """`redis-backup ARGS` as a user would run it (the same package, a child process)."""
        self.say(["redis-backup", *args])
        r = subprocess.run(
            [sys.executable, "-m", "redis_backup", *args], env=self.env, cwd=self.root, capture_output=True,
            stdin=subprocess.DEVNULL, timeout=300, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            why = r.stderr.decode(errors="replace").strip().splitlines()
            raise DemoError(f"redis-backup {args[0]} exited with status {r.returncode}: {' | '.join(why[-3:])}")
        return r.stdout.decode(errors="replace")

    def restored(self, dest: Path) -> State:
        self.say(["redis-server", "--appendonly", "yes", "--dir", str(dest)])
        with TempRedis(dest, server=self.server, max_db=max(DBS), debug=True) as srv:
            state = State.of(srv.client())
        self.note(f"loaded: {state.render()}")
        return state


def run(args: argparse.Namespace, cfg: Config) -> int:
    server = find_redis_server(cfg.redis_server_bin)
    if server.version < MIN_SERVER.get(server.name, MIN_SERVER["redis"]):
        raise DemoError(
            f"the demo needs redis-server 7.0 or newer (it restores into a Redis 7 multi-part AOF directory); "
            f"{server} is older: install a newer redis-server, or set REDIS_SERVER_BIN to one"
        )
    root = Path(tempfile.mkdtemp(prefix="redis-backup-demo-"))
    try:
        return _run(root, server)
    finally:
        if args.keep:
            print(f"kept {root}: the backup in backup/, the restores in restore-*/, the logs in *.log")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, server: ServerBinary) -> int:
    started = time.monotonic()

    def out(line: str) -> None:
        print(line, flush=True)

    demo = Demo(root, server, out)
    rng = random.Random(20261203)
    out(f"redis-backup demo: a throwaway primary, the service, a workload and two restores, in {root}")
    out("")
    with ExitStack() as stack:
        primary = demo.start_primary(stack)
        clients = [_client(demo.port, db) for db in DBS]
        workload(clients, rng, SEED_OPS, "seed")
        demo.note(f"wrote {SEED_OPS} commands over db {', '.join(map(str, DBS))} (they will be in the snapshot)")
        service = demo.start_service(stack)
        kinds = "strings, counters, hashes, lists, sets, sorted sets, streams, expiries, deletes, MULTI/EXEC"
        workload(clients, rng, PHASE_OPS, "one")
        demo.note(f"wrote {PHASE_OPS} commands ({kinds})")
        offset = demo.acknowledged(primary)
        middle = State.of(primary)
        at = math.floor(time.time())  # every command so far was received by this second
        demo.note(f"the service acknowledged offset {offset}, the primary's: every write is on disk")
        demo.note(f"primary at {iso(at)}: {middle.render()}")
        # the next phase's commands are received from the next second on: `--at` that second excludes them
        _poll("waiting for the next second", lambda: True if time.time() >= at + 1 else None, demo.alive, demo.hint)
        workload(clients, rng, PHASE_OPS, "two")
        demo.note(f"wrote {PHASE_OPS} more commands")
        offset = demo.acknowledged(primary)
        latest = State.of(primary)
        demo.note(f"the service acknowledged offset {offset}; primary now: {latest.render()}")

        def window_caught_up() -> bool | None:  # /status reads the files at most every few seconds
            s = demo.status()
            last = ((s or {}).get("backup") or {}).get("last_restorable_unix")
            return True if isinstance(last, int) and last > at else None

        _poll("waiting for /status to show the new writes restorable", window_caught_up, demo.alive, demo.hint)
        out("")
        status = demo.run_cli(["status", "--url", f"http://127.0.0.1:{demo.metrics}"])
        for line in status.strip().splitlines()[2:]:  # not the "source:" line and the blank after it
            demo.note(line)
        out("")
        mid_dir, latest_dir = root / "restore-at", root / "restore-latest"
        demo.run_cli(["restore", "--at", iso(at), "--to", str(mid_dir)])
        got_middle = demo.restored(mid_dir)
        demo.run_cli(["restore", "--to", str(latest_dir)])
        got_latest = demo.restored(latest_dir)
        out("")
        demo.say(["kill", "-TERM", str(service.proc.pid)])
        rc = service.stop()
        demo.note(f"the service stored what it had and exited with status {rc}")
    rows = [(f"at {iso(at)}", middle, got_middle), ("latest", latest, got_latest)]
    width = max(len(label) for label, _, _ in rows)
    cell = max(len(state.render()) for _, a, b in rows for state in (a, b))
    out("")
    out(f"{'':{width}}  {'primary':{cell}}  restored")
    for label, want, got in rows:
        verdict = "match" if want == got else "DIFFER"
        out(f"{label:{width}}  {want.render():{cell}}  {got.render():{cell}}  {verdict}")
    out("")
    seconds = time.monotonic() - started
    if all(want == got for _, want, got in rows) and rc == 0:
        out(f"demo passed in {seconds:.0f} s: both restores equal the primary (DEBUG DIGEST and keys per db).")
        out("Next: set REDIS_HOST, REDIS_PORT and BACKUP_DIR (README, Configuration) and run `redis-backup run`.")
        return 0
    out("demo FAILED: a restore differs from the primary (or the service did not stop cleanly): please report it "
        "with the output of `redis-backup demo --keep` and the directory it keeps.")  # fmt: skip
    return EXIT_MISMATCH

"""Progress of restore and verify on a terminal: the line's text and throttling as pure functions (an
injected clock, no sleep), then the real commands under a pseudo-terminal on backups the real service
made of a real redis-server; piped or with --json they print no progress at all."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from redis_backup.progress import Phase, Progress, Throttle, clear_line, fit, human_duration, render
from tests.support.chains import chain_dirs
from tests.support.faults import CAUGHT_UP, start_service, wait_for_chain
from tests.support.s3server import s3_env
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, TerminalRun, cli, ok, run_cli, run_cli_on_terminal, service_env

MiB = 1 << 20


# --------------------------------------------------------------------------------------------- the line


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_human_duration() -> None:
    assert [human_duration(s) for s in (0, 59.9, 60, 125, 3600, 3725, -1)] == [
        "0s", "59s", "1m00s", "2m05s", "1h00m", "1h02m", "0s",
    ]  # fmt: skip


def test_render_bytes_files_rate_and_time_left() -> None:
    ph = Phase("copying into appendonlydir", total=40 * MiB, items_total=5, unit="files", done=12 * MiB, items=3)
    assert render("restore", ph, 4.0) == (
        "restore: copying into appendonlydir",
        "3/5 files, 12.0 MiB of 40.0 MiB (30%), 3.0 MiB/s, 9s left",
    )


def test_render_without_totals_or_figures() -> None:
    keys = Phase("copying keys", items_total=None, unit="keys", done=3 * MiB, items=1200)
    assert render("restore", keys, 2.0) == ("restore: copying keys", "1200 keys, 3.0 MiB, 1.5 MiB/s, 2s")
    save = Phase("saving dump.rdb")  # SAVE blocks the server: only the time it takes
    assert render("restore", save, 61.0) == ("restore: saving dump.rdb", "1m01s")
    assert render("snapshot", Phase("", done=2048), 1.0) == ("snapshot", "2.0 KiB, 2.0 KiB/s, 1s")
    # a file that grew after it was listed: never more than 100%
    grown = Phase("", total=100, done=150)
    assert render("verify", grown, 1.0)[1] == "150 B of 150 B (100%), 150 B/s, 1s"


def test_fit_keeps_the_figures_whole() -> None:
    assert fit("restore: reading", "1/2 files", 40) == "restore: reading: 1/2 files"
    line = fit("restore: loading into the scratch redis-server", "10.0 MiB of 20.0 MiB (50%)", 50)
    assert line == "restore: loading in...: 10.0 MiB of 20.0 MiB (50%)"
    assert len(line) == 50
    assert fit("a long description", "figures far too wide for it", 10) == "a long des"


def test_throttle() -> None:
    t = Throttle(0.25)
    assert t.due(0.0)
    t.drawn(0.0)
    assert [t.due(x) for x in (0.1, 0.24, 0.25)] == [False, False, True]
    t.drawn(0.3)
    assert not t.due(0.5)
    t.reset()
    assert t.due(0.5)


def test_progress_draws_at_most_four_times_a_second_and_ends_the_line() -> None:
    clock, out = Clock(), Terminal()
    p = Progress("restore", stream=out, clock=clock)
    with p.phase("copying", total=1000 * 100, items=100):
        drawn = out.getvalue().count("\r")
        assert drawn == 1  # the phase shows at once
        for _ in range(100):  # 100 chunks in 0.2 s: no redraw
            clock.now += 0.002
            p.add(1000)
        assert out.getvalue().count("\r") == drawn
        clock.now += 0.1
        p.add(0, items=100)
        assert out.getvalue().count("\r") == drawn + 1
        assert "100/100 files, 97.7 KiB of 97.7 KiB (100%)" in out.getvalue().rsplit("\r", 1)[1]
    p.finish()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1  # the phase's last line kept, ended once
    assert "\n" not in text[:-1]


def test_kept_phases_one_line_each_and_shorter_lines_padded() -> None:
    clock, out = Clock(), Terminal()
    with Progress("restore", stream=out, clock=clock) as p:
        with p.phase("a long first phase name", total=10):
            p.add(10)
        with p.phase("b"):
            clock.now += 1
    lines = out.getvalue().split("\n")
    assert len(lines) == 3 and lines[2] == ""
    assert lines[0].rsplit("\r", 1)[1].startswith("restore: a long first phase name: 10 B of 10 B (100%)")
    assert lines[1].rsplit("\r", 1)[1] == "restore: b: 1s"


def test_transient_phases_give_back_the_line() -> None:
    """verify: one line; a --deep step overwrites it while it runs, then the outer figures come back."""
    clock, out = Clock(), Terminal()
    with Progress("verify", stream=out, clock=clock, keep=False) as p, p.phase("", total=200, items=2) as ph:
        ph.name = "chain 1/1"
        p.add(100, items=1)
        with p.phase("loading"):
            clock.now += 10  # not counted in the outer phase's rate
            p.update(50, 100)
        clock.now += 1
        p.add(100, items=1)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    last = text.rstrip("\n").rsplit("\r", 1)[1].rstrip()
    assert last == "verify: chain 1/1: 2/2 files, 200 B of 200 B (100%), 200 B/s, 1s"
    assert "verify: loading: 50 B of 100 B (50%)" in text


def test_clear_erases_the_line_for_other_output() -> None:
    clock, out = Clock(), Terminal()
    p = Progress("verify", stream=out, clock=clock)
    p.add(5)
    shown = len(out.getvalue()) - 1
    p.clear()
    assert out.getvalue().endswith("\r" + " " * shown + "\r")
    p.clear()  # nothing shown: nothing written
    assert out.getvalue().endswith("\r" + " " * shown + "\r")
    clock.now = 100.125
    p.add(1)  # drawn again at once, not a quarter of a second later
    assert out.getvalue().endswith("\rverify: 6 B, 48 B/s, 0s")


def test_a_log_line_erases_the_progress_line_first() -> None:
    clock, out = Clock(), Terminal()
    p = Progress("restore", stream=out, clock=clock)
    p.add(5)
    clear_line()  # what the CLI's log handler does before it writes a line
    assert out.getvalue() == "\rrestore: 5 B, 0s\r" + " " * 16 + "\r"
    p.finish()  # drawn again, its last figures, and ended
    assert out.getvalue().endswith(" " * 16 + "\r\rrestore: 5 B, 0s\n")


def test_disabled_writes_nothing_but_counts() -> None:
    out = io.StringIO()  # not a terminal
    p = Progress("restore", stream=out)
    with p.phase("x", total=10, items=1) as ph:
        p.add(10, items=1)
    p.finish()
    assert out.getvalue() == "" and (ph.done, ph.items) == (10, 1)
    forced = Progress("restore", stream=Terminal(), enabled=False)  # --json on a terminal
    forced.add(1)
    forced.finish()
    assert forced.stream.getvalue() == ""  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------- the commands

LINE = re.compile(rb"[^\r\n]+")


def lines(run: TerminalRun) -> list[str]:
    """What the terminal shows at each redraw, and the last state of each line."""
    return [m.group().decode().rstrip() for m in LINE.finditer(run.terminal)]


def has(shown: list[str], pattern: str) -> bool:
    return any(re.search(pattern, line) for line in shown)


FILES = r"(\d+)/\1 files"  # every file done
BYTES = r"\d+\.\d MiB of \d+\.\d MiB \(100%\)"
RATE = r"\d+\.\d [KMG]iB/s"


@pytest.fixture
def backup(primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path) -> RedisServer:
    """A chain of several MiB (a snapshot, then commands in its stream), caught up with the primary."""
    primary.execute("CONFIG", "SET", "rdbcompression", "no")
    primary.execute("DEBUG", "POPULATE", 8000, "base", 1000)
    start_service(service_factory, primary, tmp_backup_dir)
    c = primary.client(2)
    for i in range(300):
        c.set(f"stream:{i}", "s" * 2000)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    return primary


@pytest.mark.slow
def test_restore_to_a_dir_shows_progress_only_on_a_terminal(
    backup: RedisServer, redis_factory: RedisFactory, tmp_backup_dir: Path, tmp_path: Path
) -> None:
    env = {"BACKUP_DIR": str(tmp_backup_dir)}
    run = run_cli_on_terminal(["restore", "--to", str(tmp_path / "tty")], env)
    assert run.returncode == 0, run.terminal[-2000:]
    shown = lines(run)
    assert has(shown, rf"^restore: copying into appendonlydir: {FILES}, {BYTES}, {RATE}"), shown
    assert run.terminal.endswith(b"\r\n")  # the line ended (the terminal's newline) before the command exits
    assert "restored to" in run.stdout and "restore:" not in run.stdout
    restored = redis_factory.load_aof_dir(tmp_path / "tty", strict=True)
    assert restored.digest() == backup.digest()

    piped = ok(cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "piped")))
    assert piped.stderr == ""  # no progress, no carriage return, nothing
    as_json = run_cli_on_terminal(["restore", "--to", str(tmp_path / "json"), "--json"], env)
    assert as_json.returncode == 0 and as_json.terminal == b""  # never with --json, even on a terminal
    assert json.loads(as_json.stdout)["result"]["format"] == "aof"

    rdb = run_cli_on_terminal(["restore", "--to", str(tmp_path / "rdb"), "--format", "rdb"], env)
    assert rdb.returncode == 0, rdb.terminal[-2000:]
    shown = lines(rdb)
    assert has(shown, rf"^restore: copying into appendonlydir: {FILES}, {BYTES}, {RATE}"), shown
    assert has(shown, rf"^restore: loading into the scratch redis-server: {BYTES}, {RATE}"), shown
    assert has(shown, r"^restore: saving and checking dump.rdb: \d+s$"), shown
    assert redis_factory.load_rdb(tmp_path / "rdb" / "dump.rdb").digest() == backup.digest()


@pytest.mark.slow
def test_restore_into_a_server_shows_loading_and_copying_keys(
    backup: RedisServer, redis_factory: RedisFactory, tmp_backup_dir: Path
) -> None:
    target = redis_factory()
    url = f"redis://{target.host}:{target.port}"
    run = run_cli_on_terminal(["restore", "--into", url], {"BACKUP_DIR": str(tmp_backup_dir)})
    assert run.returncode == 0, run.terminal[-2000:]
    shown = lines(run)
    keys = backup.client(0).dbsize() + backup.client(2).dbsize()
    assert has(shown, rf"^restore: copying into appendonlydir: {FILES}, {BYTES}, {RATE}"), shown
    assert has(shown, rf"^restore: loading into the scratch redis-server: {BYTES}, {RATE}"), shown
    assert has(shown, rf"^restore: copying keys into {re.escape(url)}: {keys}/{keys} keys, [\d.]+ MiB, {RATE}"), shown
    assert f"{keys} keys" in run.stdout
    assert target.digest() == backup.digest()

    other = redis_factory()
    piped = ok(cli(tmp_backup_dir, "restore", "--into", f"redis://{other.host}:{other.port}"))
    assert piped.stderr == "" and other.digest() == backup.digest()


@pytest.mark.slow
def test_verify_shows_files_bytes_and_the_deep_load(backup: RedisServer, tmp_backup_dir: Path) -> None:
    env = {"BACKUP_DIR": str(tmp_backup_dir)}
    run = run_cli_on_terminal(["verify"], env)
    assert run.returncode == 0, run.terminal[-2000:]
    shown = lines(run)
    assert has(shown, rf"^verify: chain 1/1: {FILES}, {BYTES}, {RATE}"), shown
    assert run.stdout == "1 chains verified: 1 ok, 0 with problems\n"

    deep = run_cli_on_terminal(["verify", "--deep"], env)
    assert deep.returncode == 0, deep.terminal[-2000:]
    shown = lines(deep)
    assert has(shown, r"^verify: loading into the scratch redis-server: "), shown
    assert has(shown, rf"^verify: chain 1/1: {FILES}, {BYTES}, {RATE}"), shown  # the last state
    assert deep.terminal.count(b"\n") == 1  # one line, rewritten in place
    assert deep.stdout == "1 chains deep-verified: 1 ok, 0 with problems\n"

    piped = ok(cli(tmp_backup_dir, "verify", "--deep"))
    assert piped.stderr == ""
    as_json = run_cli_on_terminal(["verify", "--deep", "--json"], env)
    assert as_json.returncode == 0 and as_json.terminal == b""
    assert json.loads(as_json.stdout)["ok"] is True


@pytest.mark.slow
def test_verify_problems_print_on_lines_of_their_own(backup: RedisServer, tmp_backup_dir: Path) -> None:
    (chain,) = chain_dirs(tmp_backup_dir)
    base = next(chain.glob("*.base.rdb"))
    data = bytearray(base.read_bytes())
    data[len(data) // 2] ^= 0xFF
    base.write_bytes(bytes(data))
    run = run_cli_on_terminal(["verify"], {"BACKUP_DIR": str(tmp_backup_dir)})
    assert run.returncode == 1
    problem = [line for line in run.stdout.splitlines() if base.name in line]
    assert problem and problem[0].startswith(f"{chain.name}/{base.name}: "), run.stdout  # no progress in it
    assert has(lines(run), rf"^verify: chain 1/1: {FILES}"), lines(run)


@pytest.mark.slow
def test_restore_from_the_bucket_says_downloading(
    primary: RedisServer, service_factory: ServiceFactory, redis_factory: RedisFactory, tmp_path: Path,
    s3_endpoint: str, s3_bucket: str,
) -> None:  # fmt: skip
    bucket = {**s3_env(s3_endpoint), "S3_BUCKET": s3_bucket, "S3_PREFIX": "bk/"}
    primary.execute("CONFIG", "SET", "rdbcompression", "no")
    primary.execute("DEBUG", "POPULATE", 4000, "base", 1000)
    bk = tmp_path / "bk"
    svc = service_factory(service_env(primary, bk, **bucket, S3_SYNC_SECONDS=1))
    wait_for_chain(svc, bk)
    for i in range(100):
        primary.client(1).set(f"stream:{i}", "s" * 2000)
    offset = primary.wait_replicas_caught_up(CAUGHT_UP)
    remote = {**bucket, "BACKUP_DIR": str(tmp_path / "none")}

    def in_bucket() -> bool:
        r = run_cli(["list", "--source", "s3", "--json"], remote, timeout=120)
        chains = json.loads(r.stdout)["chains"] if r.returncode == 0 else []
        return bool(chains) and int(chains[-1]["end_offset"]) >= offset

    wait_until(in_bucket, timeout=CAUGHT_UP, message="the bucket has the chain")
    out = tmp_path / "restored"
    run = run_cli_on_terminal(["restore", "--source", "s3", "--to", str(out)], remote)
    assert run.returncode == 0, run.terminal[-2000:]
    assert has(lines(run), rf"^restore: downloading into appendonlydir: {FILES}, {BYTES}, {RATE}"), lines(run)
    assert redis_factory.load_aof_dir(out, strict=True).digest() == primary.digest()

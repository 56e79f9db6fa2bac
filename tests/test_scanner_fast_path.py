"""The C fast path of the stream scanner must agree with the Python reference on every input."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redis_backup.errors import ProtocolError
from redis_backup.wire import resp
from redis_backup.wire.resp import StreamScanner, encode_command

pytestmark = pytest.mark.skipif(resp._fast_scan is None, reason="C fast path not built")


def case(rng: random.Random, word: str) -> str:
    return "".join(c.lower() if rng.random() < 0.5 else c for c in word)


def rising(rng: random.Random) -> Iterator[int]:
    """The numbers a stream's db commands use, each above the ones before: as max_db only shows a new
    highest db, a number counted that should not be (or the reverse) shows at the next chunk's end."""
    n = rng.randrange(50)  # sometimes below the dbs SELECT chose
    while True:
        n += rng.randrange(1, 4)
        yield n


def db_index(rng: random.Random, dbs: Iterator[int]) -> str:
    """Mostly a db index; sometimes what Python reads as one and C does not (it hands those back),
    or what is no integer at all (ignored), or too long to be looked at."""
    if rng.random() < 0.8:
        return str(next(dbs))
    n = next(dbs)
    return rng.choice([f"+{n}", f"0{n}", f" {n}", f"{n}_0", "-1", "", "x", "DB", "9" * 19, "9" * 21, f"{n:<21}"])


def copy_command(rng: random.Random, dbs: Iterator[int]) -> bytes:
    """COPY src dst [DB db] [REPLACE], the options in any order, a DB option perhaps twice; now and
    then a stray number (no db: the primary would not propagate that)."""
    options: list[list[str | bytes]] = []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        k = rng.random()
        options.append(
            [case(rng, "DB"), db_index(rng, dbs)]
            if k < 0.55
            else [case(rng, "REPLACE")]
            if k < 0.85
            else [db_index(rng, dbs)]
        )
    rng.shuffle(options)
    # keys named db or like a number are no option, nor a db
    keys = [rng.choice(["src", "db", "DB", "x" * 25, str(next(dbs))]) for _ in range(2)]
    return encode_command(case(rng, "COPY"), *keys, *[a for o in options for a in o])


def db_command(rng: random.Random, dbs: Iterator[int]) -> bytes:
    """Commands that reach a db without selecting it; now and then with a wrong number of arguments."""
    k = rng.random()
    if k < 0.35:
        key = rng.choice(["key", "x" * 25, str(next(dbs))])
        args: list[str | bytes] = [case(rng, "MOVE"), key, db_index(rng, dbs)]
    elif k < 0.65:
        args = [case(rng, "SWAPDB"), db_index(rng, dbs), db_index(rng, dbs)]
    else:
        return copy_command(rng, dbs)
    if rng.random() < 0.1:
        args = args[: rng.randrange(1, len(args))] if rng.random() < 0.5 else [*args, db_index(rng, dbs)]
    return encode_command(*args)


def command(rng: random.Random, dbs: Iterator[int]) -> bytes:
    if rng.random() < 0.1:
        return db_command(rng, dbs)
    k = rng.random()
    if k < 0.06:
        return encode_command("SELECT", rng.randrange(40))
    if k < 0.10:
        return encode_command(rng.choice(["MULTI", "multi"]))
    if k < 0.14:
        return encode_command(rng.choice(["EXEC", "exec"]))
    if k < 0.17:
        return encode_command("REPLCONF", rng.choice(["GETACK", "getack"]), "*")
    if k < 0.20:
        return encode_command("PING")
    if k < 0.22:
        return encode_command("SELECT", "x" * 30)  # too long to look at: not a db change
    value = rng.randbytes(rng.choice([0, 1, 10, 100, 3000]))
    return encode_command(rng.choice(["SET", "set", "HSET", "XADD", "RPUSHX"]), "key", value)


def results(stream: bytes, cuts: list[int], accelerate: bool) -> list[object]:
    sc = StreamScanner(accelerate=accelerate)
    out: list[object] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        try:
            sc.feed(stream[a:b])
        except ProtocolError as e:
            out.append(("error", str(e)))
            break
        out.append(
            (sc.first_safe, sc.last_safe, sc.last_safe_db, sc.last_boundary, sc.db, sc.in_multi,
             sc.getack, sc.writes, sc.commands, sc.at_boundary, sc.max_db)
        )
    return out


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), ncuts=st.integers(0, 40), garbage=st.binary(max_size=8), where=st.floats(0, 1))
def test_fast_path_matches_python(seed: int, ncuts: int, garbage: bytes, where: float) -> None:
    rng = random.Random(seed)
    dbs = rising(rng)
    commands = [command(rng, dbs) for _ in range(rng.randrange(1, 60))]
    stream = b"".join(commands)
    # One command per chunk (each one whole in the fast path): every max_db shows, none hides another.
    ends = list(itertools.accumulate(len(c) for c in commands))[:-1]
    assert results(stream, ends, True) == results(stream, ends, False)
    if garbage:  # anything may follow; both must then agree, on the error too
        at = int(where * len(stream))
        stream = stream[:at] + garbage + stream[at:]
    cuts = sorted(set(rng.sample(range(1, len(stream)), min(ncuts, len(stream) - 1))))
    assert results(stream, cuts, True) == results(stream, cuts, False)


def test_db_commands_are_in_the_generated_streams() -> None:
    """The generator above makes what the property test must cover."""
    rng = random.Random(1)
    dbs = rising(rng)
    made = [command(rng, dbs) for _ in range(3000)]
    for needed in (b"move", b"swapdb", b"copy", b"replace", b"$2\r\ndb\r\n$2\r\n", b"*3\r\n$4\r\ncopy"):
        assert any(needed in c.lower() for c in made), needed
    assert {b"MOVE", b"move", b"Move"} & {c[8:12] for c in made} == {b"MOVE", b"move", b"Move"}
    assert any(c.startswith(b"*2\r\n$6\r\nSELECT") for c in made) and b"*1\r\n$5\r\nMULTI\r\n" in made
    sc = StreamScanner()
    sc.feed(b"".join(made) + encode_command("SELECT", 7))
    assert sc.max_db > 1000 and sc.db == 7  # MOVE, COPY and SWAPDB raise max_db, only SELECT changes db


def test_fast_path_consumes_plain_db_commands() -> None:
    """MOVE, COPY ... DB and SWAPDB with plain indexes stay on the fast path, counted as there."""
    stream = (
        encode_command("SET", "a", "1")
        + encode_command("move", "a", 25)
        + encode_command("COPY", "a", "b", "REPLACE", "db", 28)
        + encode_command("SwapDB", 1, 30)
        + encode_command("COPY", "a", "c")
    )
    r = resp._fast_scan(stream, 0, 3, False)
    first = len(encode_command("SET", "a", "1"))
    assert r == (len(stream), first, len(stream), 3, len(stream), 3, 0, 0, 1, 5, 30)


def test_fast_path_is_used_and_counts_every_command() -> None:
    stream = b"".join(encode_command("SET", f"k{i}", "v") for i in range(1000))
    sc = StreamScanner()
    sc.feed(stream)
    assert sc.commands == 1000 and sc.last_boundary == len(stream) and sc.writes

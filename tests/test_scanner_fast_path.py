"""The C fast path of the stream scanner must agree with the Python reference on every input."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redis_backup import resp
from redis_backup.errors import ProtocolError
from redis_backup.resp import StreamScanner, encode_command

pytestmark = pytest.mark.skipif(resp._fast_scan is None, reason="C fast path not built")


def command(rng: random.Random) -> bytes:
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
    stream = b"".join(command(rng) for _ in range(rng.randrange(1, 60)))
    if garbage:  # anything may follow; both must then agree, on the error too
        at = int(where * len(stream))
        stream = stream[:at] + garbage + stream[at:]
    cuts = sorted(set(rng.sample(range(1, len(stream)), min(ncuts, len(stream) - 1))))
    assert results(stream, cuts, True) == results(stream, cuts, False)


def test_fast_path_is_used_and_counts_every_command() -> None:
    stream = b"".join(encode_command("SET", f"k{i}", "v") for i in range(1000))
    sc = StreamScanner()
    sc.feed(stream)
    assert sc.commands == 1000 and sc.last_boundary == len(stream) and sc.writes

"""Hypothesis strategies for replication streams (valid ones; the tests damage them themselves)."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.support.reference import encode

MAX_ANNOTATION_LINE = 1024  # a "#..." line of at most this many bytes (CRLF included) is valid

_arg = st.one_of(
    st.binary(max_size=12),
    st.binary(min_size=13, max_size=300),
    st.sampled_from([b"", b"\r\n", b"*1\r\n$4\r\nPING\r\n", b"$", b"\n", b"#TS:1\r\n", b"GETACK", b"EXEC"]),
)


def _not_select(args: list[bytes]) -> list[bytes]:
    """Random arguments never form a SELECT: those are generated well-formed, below."""
    return [b"SET", *args[1:]] if args[0].upper() == b"SELECT" else args


command = st.one_of(
    st.lists(_arg, min_size=1, max_size=5).map(lambda args: encode(*_not_select(args))),
    st.integers(0, 10**6).map(lambda n: encode("SELECT", n)),
    st.sampled_from(
        [
            encode("MULTI"),
            encode("EXEC"),
            encode("multi"),
            encode("exec"),
            encode("REPLCONF", "GETACK", "*"),
            encode("replconf", "getack", "*"),
            encode("PING"),
            encode("ping"),
            encode("SET", "k", "v"),
            encode("select", "2"),
            encode("REPLCONF", "ACK", "1"),
        ]
    ),
)
annotation = st.one_of(
    st.integers(0, 2**40).map(lambda ts: b"#TS:%d\r\n" % ts),
    st.just(b"#comment\r\n"),
    st.integers(0, MAX_ANNOTATION_LINE - 3).map(lambda n: b"#" + b"x" * n + b"\r\n"),
)


@st.composite
def streams(draw: st.DrawFn, annotations: bool = False, max_size: int = 40) -> tuple[bytes, int, bool]:
    """(stream bytes, db before it, in_multi before it)."""
    parts = draw(st.lists(command | annotation if annotations else command, max_size=max_size))
    return b"".join(parts), draw(st.integers(0, 15)), draw(st.booleans())


@st.composite
def cuts_for(draw: st.DrawFn, n: int) -> list[int]:
    """Sorted cut points in 0..n (repeats allowed: empty chunks)."""
    return sorted(draw(st.lists(st.integers(0, n), max_size=12)))


hex40 = st.text("0123456789abcdef", min_size=40, max_size=40)

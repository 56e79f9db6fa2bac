"""Where to split recorded byte streams in the split tests."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator


def split_positions(
    n: int,
    *,
    skip: Iterable[tuple[int, int]] = (),
    sample: int = 300,
    seed: int | str = 0,
) -> list[int]:
    """Every position 0..n except those strictly inside the ``skip`` ranges (the middles of big
    opaque payloads, where every position behaves alike), plus ``sample`` random ones from inside them.
    """
    ranges = sorted((lo, hi) for lo, hi in skip if hi > lo)
    rng = random.Random(seed)
    out: set[int] = set()
    pos = 0
    for lo, hi in ranges:
        out.update(range(pos, min(lo, n) + 1))
        pos = max(pos, hi)
    out.update(range(pos, n + 1))
    inner = [(lo, hi) for lo, hi in ranges if hi - lo > 1]
    for _ in range(sample if inner else 0):
        lo, hi = rng.choice(inner)
        out.add(rng.randrange(lo + 1, hi))
    return sorted(p for p in out if 0 <= p <= n)


def random_pieces(n: int, rng: random.Random, max_piece: int = 4096) -> list[int]:
    """Cut points splitting 0..n into pieces of 0..max_piece bytes (log-uniform, empty pieces too)."""
    cuts: list[int] = []
    pos = 0
    while pos < n:
        size = 0 if rng.random() < 0.03 else int(2 ** rng.uniform(0, max_piece.bit_length() - 1))
        pos = min(n, pos + size)
        cuts.append(pos)
    return cuts


def pieces(data: bytes, cuts: Iterable[int]) -> Iterator[tuple[int, bytes]]:
    """(start, chunk) for the chunks between sorted cut points; the last chunk ends at len(data)."""
    a = 0
    for b in cuts:
        yield a, data[a:b]
        a = b
    yield a, data[a:]

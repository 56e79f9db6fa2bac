"""The storage contract: every backend of `Store` passes the same tests (as restic's and borgstore's
backends do). A new backend joins by adding a factory to BACKENDS."""

from __future__ import annotations

import os
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from redis_backup.store.base import InvalidName, NotFound, Store, StoreError, read_all
from redis_backup.store.local import LocalStore
from redis_backup.store.s3 import MIN_PART, S3Settings, S3Store


def s3_store(request: pytest.FixtureRequest) -> S3Store:
    """On the session's moto server, in a fresh bucket; the smallest part size S3 allows, so that the
    64 MiB stream below goes as a multipart upload."""
    bucket, endpoint = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_endpoint")
    settings = S3Settings(bucket=bucket, endpoint_url=endpoint)
    return S3Store(settings, part_size=MIN_PART)


# name -> factory(request, tmp_path); a factory may ask for fixtures of its own (an endpoint, a bucket)
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Store]] = {
    "local": lambda request, tmp: LocalStore(tmp / "store"),
    "s3": lambda request, tmp: s3_store(request),
}
# what a 64 MiB object may cost in Python memory while streamed: S3 holds a part being uploaded and the
# next being filled (about 2 x 5 MiB), a local file only buffers
MEMORY_BOUND = {"local": 8 << 20, "s3": 16 << 20}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture
def memory_bound(request: pytest.FixtureRequest) -> int:
    return MEMORY_BOUND[request.node.callspec.params["store"]]


def names(store: Store, prefix: str = "") -> list[str]:
    return [o.name for o in store.list(prefix)]


def read(store: Store, name: str, start: int = 0, length: int | None = None) -> bytes:
    with store.open(name, start, length) as f:
        return f.read()


def test_what_is_written_reads_back_and_lists_with_its_size(store: Store) -> None:
    info = store.write("c1/a.bin", [b"hello ", memoryview(b"world")])
    assert (info.name, info.size) == ("c1/a.bin", 11)
    assert read(store, "c1/a.bin") == b"hello world"
    assert store.stat("c1/a.bin").size == 11
    assert [(o.name, o.size) for o in store.list()] == [("c1/a.bin", 11)]
    assert read_all(store, "c1/a.bin", 11) == b"hello world"
    with pytest.raises(StoreError, match="larger than 10 bytes"):
        read_all(store, "c1/a.bin", 10)


def test_an_empty_object_exists(store: Store) -> None:
    store.write("empty", [])
    assert store.stat("empty").size == 0
    assert read(store, "empty") == b""
    assert names(store) == ["empty"]


def test_listing_is_in_byte_order_of_the_names_across_levels(store: Store) -> None:
    for n in ["b", "a/z", "a-b", "a/b/c", "A", "a0", "a/b-"]:
        store.write(n, [n.encode()])
    assert names(store) == sorted(["b", "a/z", "a-b", "a/b/c", "A", "a0", "a/b-"], key=str.encode)


def test_listing_by_prefix_takes_partial_components(store: Store) -> None:
    for n in ["chain-1/f.1", "chain-1/f.2", "chain-10/f.1", "chain-2/f.1", "other"]:
        store.write(n, [b"x"])
    assert names(store, "chain-1/") == ["chain-1/f.1", "chain-1/f.2"]
    assert names(store, "chain-1") == ["chain-1/f.1", "chain-1/f.2", "chain-10/f.1"]
    assert names(store, "chain-1/f.") == ["chain-1/f.1", "chain-1/f.2"]
    assert names(store, "nothing/") == []
    assert names(store, "") == names(store)


def test_prefixes_are_the_next_level_once_each_in_byte_order(store: Store) -> None:
    for n in ["c-2/f", "c/x", "c/sub/y", "c/sub/z", "c-10/f", "top", "d/e/f"]:
        store.write(n, [b"x"])
    assert list(store.prefixes()) == sorted(["c-10/", "c-2/", "c/", "d/"], key=str.encode)
    assert list(store.prefixes("c/")) == ["c/sub/"]
    assert list(store.prefixes("c/sub/")) == [] and list(store.prefixes("nothing/")) == []
    store.delete("d/e/f")
    assert "d/" not in list(store.prefixes())  # a prefix lives as long as an object under it
    for bad in ["c", "c//", "../", ".x/", "/"]:
        with pytest.raises(InvalidName):
            list(store.prefixes(bad))


def test_ranges_read_the_asked_bytes_and_stop_at_the_end(store: Store) -> None:
    data = bytes(range(256)) * 40
    store.write("r", [data])
    assert read(store, "r", 0, 10) == data[:10]
    assert read(store, "r", 100) == data[100:]
    assert read(store, "r", 100, 1000) == data[100:1100]
    assert read(store, "r", len(data) - 5, 100) == data[-5:]
    assert read(store, "r", len(data) + 10) == b""
    assert read(store, "r", 7, 0) == b""


def test_a_missing_object_is_not_found_and_deleting_it_is_no_error(store: Store) -> None:
    with pytest.raises(NotFound):
        store.stat("nope")
    with pytest.raises(NotFound), store.open("nope"):
        pass
    store.delete("nope")
    store.write("x/y", [b"1"])
    store.delete("x/y")
    assert names(store) == []
    with pytest.raises(NotFound):
        store.stat("x/y")
    assert NotFound("n").retryable is False


@pytest.mark.parametrize(
    "bad",
    ["", "/abs", "a//b", "a/", "../up", "a/../b", "a/./b", ".hidden", "a/.tmp", "sp ace", "new\nline",
     "tab\t", "back\\slash", "nul\0", "é", "a" * 256, "/".join(["a"] * 600), "a:b", "*", "q?"],
)  # fmt: skip
def test_odd_names_are_refused_by_every_call(store: Store, bad: str) -> None:
    with pytest.raises(InvalidName):
        store.write(bad, [b"x"])
    with pytest.raises(InvalidName):
        store.stat(bad)
    with pytest.raises(InvalidName), store.open(bad):
        pass
    with pytest.raises(InvalidName):
        store.delete(bad)
    assert names(store) == []


def test_odd_prefixes_are_refused(store: Store) -> None:
    for bad in ["../", "a//", ".x", "a/.x", "a b"]:
        with pytest.raises(InvalidName):
            list(store.list(bad))


def test_a_write_that_fails_midway_leaves_no_object_and_the_old_one_intact(store: Store) -> None:
    store.write("obj", [b"old content"])

    def chunks() -> Iterator[bytes]:
        yield b"new "
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError):
        store.write("obj", chunks())
    with pytest.raises(RuntimeError):
        store.write("fresh", chunks())
    assert read(store, "obj") == b"old content"
    assert names(store) == ["obj"]


def test_a_reader_never_sees_a_half_written_object(store: Store) -> None:
    """While one thread rewrites an object in many chunks, every read and every listing shows one whole
    version: the old or the new, of its own full size."""
    size = 1 << 20
    versions = [bytes([v]) * size for v in range(2, 8)]
    store.write("atom", [versions[0]])
    gate = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for v in versions[1:]:
                def slow(v: bytes = v) -> Iterator[bytes]:
                    for i in range(0, size, 64 << 10):
                        gate.set()
                        yield v[i : i + (64 << 10)]
                store.write("atom", slow())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    gate.wait(10)
    seen = set()
    while t.is_alive():
        data = read(store, "atom")
        assert len(data) == size and data == data[:1] * size, "a torn object was read"
        seen.add(data[0])
        assert [(o.name, o.size) for o in store.list()] == [("atom", size)]
    t.join()
    assert not errors
    assert read(store, "atom") == versions[-1]
    assert seen  # at least one read ran while the writer did


def test_objects_stream_in_both_directions_in_bounded_memory(store: Store, memory_bound: int) -> None:
    chunk = os.urandom(1 << 16)
    total = 64 << 20
    tracemalloc.start()
    try:
        store.write("big", (chunk for _ in range(total // len(chunk))))
        with store.open("big") as f:
            got = 0
            while block := f.read(1 << 20):
                got += len(block)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == total == store.stat("big").size
    assert peak < memory_bound, f"peak Python memory {peak} bytes for a {total}-byte object"


def test_overwriting_replaces_the_whole_object(store: Store) -> None:
    store.write("o", [b"a much longer first version"])
    store.write("o", [b"short"])
    assert read(store, "o") == b"short"
    assert store.stat("o").size == 5


# ------------------------------------------------------------------------------- local backend only


def test_local_temporary_files_and_links_are_not_objects(tmp_path: Path) -> None:
    s = LocalStore(tmp_path)
    s.write("c/f", [b"data"])
    (tmp_path / "c" / ".f.1234.tmp").write_bytes(b"half")
    (tmp_path / ".redis-backup.lock").write_text("1 host")
    secret = tmp_path.parent / f"{tmp_path.name}-secret"
    secret.write_bytes(b"not yours")
    (tmp_path / "c" / "link").symlink_to(secret)
    (tmp_path / "dirlink").symlink_to(tmp_path / "c")
    assert names(s) == ["c/f"]
    with pytest.raises(StoreError), s.open("c/link"):
        pass
    with pytest.raises(NotFound):
        s.stat("c/link")


def test_local_delete_removes_directories_left_empty(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "root")
    s.write("chain/a", [b"1"])
    s.write("chain/b", [b"2"])
    s.delete("chain/a")
    assert (tmp_path / "root" / "chain").is_dir()
    s.delete("chain/b")
    assert not (tmp_path / "root" / "chain").exists()
    assert (tmp_path / "root").is_dir()

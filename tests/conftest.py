"""Fixtures shared by every test: real redis-servers, the service as a process, TLS material."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.faults import mount_tmpfs
from tests.support.s3server import REAL_AWS_VARS, MotoServer, isolated_aws_env, make_bucket
from tests.support.servers import RedisFactory, RedisServer, TlsMaterial, kill_all_children, make_tls_material
from tests.support.service import ServiceFactory
from tests.support.versions import MATRIX, ServerVersion, find_version


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """``redis_factory(**RedisServer kwargs) -> RedisServer``; also ``.replica_of(primary)``,
    ``.load_chain(dir)``, ``.load_rdb(path)``, ``.load_aof_dir(dir)``.  All stopped at teardown."""
    factory = RedisFactory(tmp_path / "redis")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(params=MATRIX, ids=MATRIX)
def server_version(request: pytest.FixtureRequest) -> ServerVersion:
    """Each server of the version matrix in turn (tests/support/versions.py): the system's redis-server,
    then the builds in ../shared/redis-versions ($REDIS_VERSIONS_DIR); a missing one is skipped, saying why."""
    found = find_version(request.param)
    if isinstance(found, str):
        pytest.skip(f"version matrix: {found}")
    return found


@pytest.fixture
def version_factory(server_version: ServerVersion, tmp_path: Path) -> Iterator[RedisFactory]:
    """Like ``redis_factory``, but every server it starts (primaries, replicas, the loads that check a chain)
    runs ``server_version``'s binary."""
    factory = RedisFactory(tmp_path / "redis-matrix", binary=server_version.binary)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def primary(redis_factory: RedisFactory) -> RedisServer:
    """One plain redis-server (no TLS, no password) on a free port."""
    return redis_factory()


@pytest.fixture
def tmp_backup_dir(tmp_path: Path) -> Path:
    path = tmp_path / "backups"
    path.mkdir()
    return path


@pytest.fixture
def service_factory(tmp_path: Path, redis_factory: RedisFactory) -> Iterator[ServiceFactory]:
    """``service_factory(env, args=("run",)) -> ServiceProcess``; survivors are SIGKILLed at teardown
    (before the redis servers stop, since this fixture depends on ``redis_factory``)."""
    factory = ServiceFactory(tmp_path / "services")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """CA, server, client, rogue-CA and wrong-host certificates (made once per session)."""
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session", autouse=True)
def _no_orphans() -> Iterator[None]:
    """Whatever a test leaked (servers, services) is killed when the session ends."""
    yield
    kill_all_children()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of one moto S3 server for the session (started on first use). The process's AWS
    environment is replaced by fake credentials first, so no test can reach real AWS as this machine."""
    mp = pytest.MonkeyPatch()
    for var in REAL_AWS_VARS:
        mp.delenv(var, raising=False)
    for var, value in isolated_aws_env(tmp_path_factory.mktemp("aws-home")).items():
        mp.setenv(var, value)
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server.endpoint
    finally:
        server.stop()
        mp.undo()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the session's moto server."""
    return make_bucket(s3_endpoint)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_fs("4m")``: a tmpfs of that size, unmounted at teardown; skips where mount is not allowed."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        dir = tmp_path / f"fs{len(mounted)}"
        dir.mkdir()
        done = mount_tmpfs(dir, size)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(dir)
        return dir

    yield mount
    for dir in mounted:
        subprocess.run(["umount", "-l", str(dir)], capture_output=True, check=False)

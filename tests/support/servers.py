"""Real redis-server processes for tests: start, wait, inspect, stop.

Every server runs in its own directory with its config on the command line, on a port picked by
:func:`free_port`.  Nothing here sleeps for a fixed time: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"

DEFAULT_STARTUP_TIMEOUT = 20.0
TlsAuthClients = Literal["no", "optional", "yes"]
ServerIdentity = Literal["good", "rogue", "wronghost"]


# --------------------------------------------------------------------------------------------- waiting


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition not met",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises AssertionError with ``message``, the last value and the last ignored exception once
    ``timeout`` seconds have passed.  Exceptions of the types in ``ignore`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = predicate()
            last_exc = None
            if last:
                return last
        except ignore as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f"; last value: {last!r}"
            if last_exc is not None:
                detail += f"; last exception: {last_exc!r}"
            raise AssertionError(f"timed out after {timeout:.1f}s: {message}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_ports_given: set[int] = set()
_PORT_LOW, _PORT_HIGH = 20000, 32000  # below Linux's default ephemeral range (32768-60999)


def _port_is_free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, port))
        except OSError as exc:
            if family == socket.AF_INET6 and not socket.has_ipv6:
                continue
            if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 on this host
                continue
            return False
    return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 (and ::1), never handed out twice by this process.

    Ports are drawn at random below the kernel's ephemeral range, so outgoing connections of the tests
    themselves cannot take a port between the check and the server's bind.
    """
    rng = random.Random()
    with _ports_lock:
        for _ in range(1000):
            port = rng.randrange(_PORT_LOW, _PORT_HIGH)
            if port in _ports_given:
                continue
            if _port_is_free(port):
                _ports_given.add(port)
                return port
    raise RuntimeError("no free TCP port found")


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------------------------- processes

_live_processes: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.DEVNULL,
    stdin: Any = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start a child that is SIGKILLed if this (main) thread's process dies, and tracked for cleanup."""
    in_main = threading.current_thread() is threading.main_thread()
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=_die_with_parent if in_main else None,
        start_new_session=True,
    )
    with _live_lock:
        _live_processes.add(proc)
    return proc


def reap(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Wait for ``proc``; SIGKILL it if it does not exit in time.  Returns its exit status."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        rc = proc.wait(timeout=10)
    with _live_lock:
        _live_processes.discard(proc)
    return rc


def kill_all_children() -> None:
    """Last-resort cleanup: SIGKILL every process started with :func:`spawn` that is still running."""
    with _live_lock:
        procs = list(_live_processes)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with _live_lock:
            _live_processes.discard(proc)


atexit.register(kill_all_children)


# --------------------------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsMaterial:
    """Certificates for TLS tests; every key is unencrypted PEM, every cert PEM.

    ``server_*`` and ``client_*`` are signed by ``ca_*``.  ``rogue_*`` are signed by a second CA that
    the servers and clients do not trust.  ``wronghost_server_*`` is signed by the good CA but names
    only ``wrong.invalid``, for hostname-verification tests.
    """

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_ca_key: Path
    rogue_server_cert: Path
    rogue_server_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    wronghost_server_cert: Path
    wronghost_server_key: Path

    def server_identity(self, identity: ServerIdentity) -> tuple[Path, Path, Path]:
        """(cert, key, CA that signed it) of the server certificate called ``identity``."""
        if identity == "good":
            return self.server_cert, self.server_key, self.ca_cert
        if identity == "rogue":
            return self.rogue_server_cert, self.rogue_server_key, self.rogue_ca_cert
        return self.wronghost_server_cert, self.wronghost_server_key, self.ca_cert


def make_tls_material(tmp: Path) -> TlsMaterial:
    """Create a CA, server and client certificates, and a rogue CA with its own server/client certs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tmp.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(days=1)
    not_after = now + datetime.timedelta(days=30)

    def write_key(name: str, key: ec.EllipticCurvePrivateKey) -> Path:
        path = tmp / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def write_cert(name: str, cert: x509.Certificate) -> Path:
        path = tmp / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def make_leaf(
        common_name: str,
        ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        ca_cert, ca_key = ca
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server_sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    server_usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    client_usage = [ExtendedKeyUsageOID.CLIENT_AUTH]

    ca = make_ca("redis-backup test CA")
    rogue = make_ca("redis-backup ROGUE CA")
    server = make_leaf("localhost", ca, server_sans, server_usage)
    client = make_leaf("redis-backup client", ca, [], client_usage)
    rogue_server = make_leaf("localhost", rogue, server_sans, server_usage)
    rogue_client = make_leaf("rogue client", rogue, [], client_usage)
    wronghost = make_leaf("wrong.invalid", ca, [x509.DNSName("wrong.invalid")], server_usage)

    return TlsMaterial(
        dir=tmp,
        ca_cert=write_cert("ca.crt", ca[0]),
        ca_key=write_key("ca.key", ca[1]),
        server_cert=write_cert("server.crt", server[0]),
        server_key=write_key("server.key", server[1]),
        client_cert=write_cert("client.crt", client[0]),
        client_key=write_key("client.key", client[1]),
        rogue_ca_cert=write_cert("rogue-ca.crt", rogue[0]),
        rogue_ca_key=write_key("rogue-ca.key", rogue[1]),
        rogue_server_cert=write_cert("rogue-server.crt", rogue_server[0]),
        rogue_server_key=write_key("rogue-server.key", rogue_server[1]),
        rogue_client_cert=write_cert("rogue-client.crt", rogue_client[0]),
        rogue_client_key=write_key("rogue-client.key", rogue_client[1]),
        wronghost_server_cert=write_cert("wronghost-server.crt", wronghost[0]),
        wronghost_server_key=write_key("wronghost-server.key", wronghost[1]),
    )


# --------------------------------------------------------------------------------------------- servers


class RedisStartError(RuntimeError):
    """redis-server exited or never became ready; ``log`` holds its log file."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n--- redis.log (tail) ---\n{log[-4000:]}")
        self.log = log


@dataclass(frozen=True)
class ReplicaInfo:
    ip: str
    port: int
    state: str
    offset: int
    lag: int


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` text to a flat dict of strings (``# Section`` headers and blank lines dropped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key] = value
    return out


def parse_replica_line(value: str) -> ReplicaInfo:
    """``ip=127.0.0.1,port=1234,state=online,offset=42,lag=0`` to a :class:`ReplicaInfo`."""
    fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    return ReplicaInfo(
        ip=fields.get("ip", ""),
        port=int(fields.get("port", "0")),
        state=fields.get("state", ""),
        offset=int(fields.get("offset", "-1")),
        lag=int(fields.get("lag", "-1")),
    )


def _raw_response(response: Any, **_options: Any) -> Any:
    return response


class RedisServer:
    """One redis-server child process.

    Base command line: ``--port P --bind <bind> --dir <dir> --save "" --appendonly no
    --enable-debug-command yes --daemonize no --logfile <dir>/redis.log --repl-diskless-sync-delay 0``
    followed by the TLS options, ``--requirepass``, ``--user`` rules and ``extra_args`` (a later
    option overrides an earlier one, so ``extra_args`` may override any default).

    ``requirepass`` / ``admin_username`` + ``admin_password`` are the credentials :meth:`client`
    uses by default.  ``acl_users`` are ACL rules such as ``"backup on >secret ~* &* +@all"``.
    With ``tls`` the server listens on TLS only (``--port 0 --tls-port P``); ``server_identity``
    picks which certificate it presents ("rogue": signed by the untrusted CA; "wronghost": names
    only wrong.invalid).  ``binary`` is the redis-server executable to run (default: the one on PATH),
    e.g. another version's build for the version matrix (tests/support/versions.py).
    """

    def __init__(
        self,
        dir: Path,
        *,
        port: int | None = None,
        bind: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        tls: TlsMaterial | None = None,
        tls_auth_clients: TlsAuthClients = "optional",
        server_identity: ServerIdentity = "good",
        requirepass: str | None = None,
        acl_users: Sequence[str] = (),
        admin_username: str | None = None,
        admin_password: str | None = None,
        appendonly: bool = False,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        start: bool = True,
        binary: str | Path | None = None,
    ) -> None:
        self.dir = Path(dir)
        self.binary = str(binary) if binary is not None else REDIS_SERVER
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.bind = bind
        self.extra_args = list(extra_args)
        self.tls = tls
        self.tls_auth_clients: TlsAuthClients = tls_auth_clients
        self.server_identity: ServerIdentity = server_identity
        self.requirepass = requirepass
        self.acl_users = list(acl_users)
        self.username = admin_username
        self.password = admin_password if admin_password is not None else requirepass
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self.logfile = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: list[redis.Redis] = []
        self._admin: redis.Redis | None = None
        self._paused = False
        if start:
            self.start()

    # ----------------------------------------------------------------------------------- addresses

    @property
    def host(self) -> str:
        """Address clients connect to: the first ``bind`` address (``-`` prefix stripped)."""
        first = self.bind.split()[0].lstrip("-")
        return "127.0.0.1" if first in ("*", "0.0.0.0") else ("::1" if first == "::" else first)

    @property
    def ca_cert(self) -> Path | None:
        """The CA that signed the certificate this server presents (None without TLS)."""
        if self.tls is None:
            return None
        return self.tls.server_identity(self.server_identity)[2]

    def argv(self) -> list[str]:
        args = [
            self.binary,
            "--bind", *self.bind.split(),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--enable-debug-command", "yes",
            "--daemonize", "no",
            "--logfile", str(self.logfile),
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            cert, key, _ = self.tls.server_identity(self.server_identity)
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(cert),
                "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(self.tls.ca_cert),
                "--tls-auth-clients", self.tls_auth_clients,
            ]  # fmt: skip
        if self.requirepass is not None:
            args += ["--requirepass", self.requirepass]
        for rule in self.acl_users:
            args += ["--user", *rule.split()]
        return args + self.extra_args

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the process and wait until it answers PING and has finished loading."""
        if self.alive():
            raise RuntimeError("server already running")
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            log_start = self.logfile.stat().st_size if self.logfile.exists() else 0
            self.proc = spawn(self.argv(), cwd=self.dir)
            try:
                self._wait_ready()
                return
            except RedisStartError as exc:
                self._discard_process()
                new_log = exc.log[log_start:] if len(exc.log) > log_start else exc.log
                if "Address already in use" in new_log and attempt + 1 < attempts:
                    self.port = free_port()
                    continue
                raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        admin = self.client(socket_timeout=2.0, socket_connect_timeout=2.0, track=False)
        try:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RedisStartError(
                        f"redis-server exited with status {self.proc.returncode}", self.log_text()
                    )
                try:
                    if admin.ping():
                        persistence = self._info_from(admin, "persistence")
                        if persistence.get("loading") == "0" and persistence.get("async_loading", "0") == "0":
                            return
                except redis.BusyLoadingError:
                    pass
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() >= deadline:
                    self._discard_process()
                    raise RedisStartError(
                        f"redis-server on port {self.port} not ready after {self.startup_timeout}s",
                        self.log_text(),
                    )
                time.sleep(0.01)
        finally:
            admin.close()

    def _discard_process(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            reap(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _close_clients(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
        self._admin = None

    def stop(self, timeout: float = 10.0) -> int | None:
        """``SHUTDOWN NOSAVE NOW FORCE`` (SIGTERM / SIGKILL as fallbacks); returns the exit status."""
        self._close_clients()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.resume()
            refused = False
            try:
                c = self.client(socket_timeout=2.0, socket_connect_timeout=2.0, track=False)
                try:
                    cast(Any, c).execute_command("SHUTDOWN", "NOSAVE", "NOW", "FORCE")
                finally:
                    c.close()
            except (redis.AuthenticationError, redis.ResponseError, redis.TimeoutError):
                refused = True
            except redis.ConnectionError:
                pass  # the expected outcome: the server closed the connection on exit
            if refused:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.terminate()
                return reap(self.proc, timeout=3.0)
        return reap(self.proc, timeout=timeout)

    def pause(self) -> None:
        """SIGSTOP the server (it keeps its sockets but answers nothing) until :meth:`resume`."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._paused and self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self._paused = False

    def kill(self) -> int | None:
        """SIGKILL the server and wait for it."""
        self._close_clients()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self._paused = False
        return reap(self.proc)

    def restart(self) -> None:
        """Stop (if running) and start again with the same port, directory and arguments."""
        if self.alive():
            self.stop()
        self._fixed_port = True  # clients and replicas know this port: keep it
        self.start()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, dir={str(self.dir)!r}, alive={self.alive()})"

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ----------------------------------------------------------------------------------- clients

    def client_kwargs(self, db: int = 0) -> dict[str, Any]:
        """The keyword arguments :meth:`client` passes to ``redis.Redis`` (before overrides)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "db": db,
            "decode_responses": False,
            "socket_timeout": 30.0,
            "socket_connect_timeout": 5.0,
            "username": self.username,
            "password": self.password,
            # Fail fast: redis-py would otherwise retry connection errors with backoff for seconds.
            "retry": Retry(NoBackoff(), 0),
        }
        if self.tls is not None:
            kwargs.update(
                ssl=True,
                ssl_ca_certs=str(self.ca_cert),
                ssl_certfile=str(self.tls.client_cert),
                ssl_keyfile=str(self.tls.client_key),
                ssl_check_hostname=self.server_identity != "wronghost",
            )
        return kwargs

    def client(self, db: int = 0, *, track: bool = True, **overrides: Any) -> redis.Redis:
        """A redis-py client (bytes responses; TLS and admin credentials filled in; no retries).

        ``overrides`` replace any keyword (e.g. ``password=None``, ``ssl_ca_certs=...``).  Tracked
        clients are closed by :meth:`stop`/:meth:`kill`.
        """
        kwargs = self.client_kwargs(db)
        kwargs.update(overrides)
        c = redis.Redis(**kwargs)
        if track:
            self._clients.append(c)
        return c

    def _admin_client(self) -> redis.Redis:
        if self._admin is None:
            self._admin = self.client()
            self._admin.set_response_callback("INFO", _raw_response)
        return self._admin

    def execute(self, *args: Any) -> Any:
        """Run one command on the shared admin connection."""
        return cast(Any, self._admin_client()).execute_command(*args)

    # ----------------------------------------------------------------------------------- inspection

    @staticmethod
    def _info_from(client: redis.Redis, section: str) -> dict[str, str]:
        raw = cast(Any, client).execute_command("INFO", section)
        if isinstance(raw, dict):  # a client with redis-py's INFO parser
            return {k: str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return parse_info(text)

    def info_text(self, section: str = "default") -> str:
        raw = cast(Any, self._admin_client()).execute_command("INFO", section)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def info(self, section: str = "default") -> dict[str, str]:
        """``INFO section`` as a flat dict of strings."""
        return parse_info(self.info_text(section))

    def digest(self) -> str:
        """``DEBUG DIGEST``: a hash of the whole dataset (all dbs), 40 hex digits."""
        value = self.execute("DEBUG", "DIGEST")
        return value.decode() if isinstance(value, bytes) else str(value)

    def keyspace(self) -> dict[int, int]:
        """Number of keys per non-empty db."""
        out: dict[int, int] = {}
        for key, value in self.info("keyspace").items():
            if key.startswith("db"):
                fields = dict(part.split("=", 1) for part in value.split(","))
                out[int(key[2:])] = int(fields["keys"])
        return out

    def master_repl_offset(self) -> int:
        return int(self.info("replication")["master_repl_offset"])

    def replid(self) -> str:
        return self.info("replication")["master_replid"]

    def replicas(self) -> list[ReplicaInfo]:
        """The ``slaveN:`` lines of ``INFO replication``."""
        return self._replicas_from(self.info("replication"))

    @staticmethod
    def _replicas_from(info: dict[str, str]) -> list[ReplicaInfo]:
        found = [
            (int(k[5:]), parse_replica_line(v))
            for k, v in info.items()
            if k.startswith("slave") and k[5:].isdigit()
        ]
        return [r for _, r in sorted(found)]

    def replica_offsets(self) -> list[int]:
        return [r.offset for r in self.replicas()]

    def wait_replicas_caught_up(self, timeout: float = 10.0, min_replicas: int = 1) -> int:
        """Wait until >= ``min_replicas`` replicas are online and each has acknowledged
        ``master_repl_offset``; returns that offset.

        Replicas acknowledge about once a second, so this can take up to ~1 s after the last write.
        """

        last: dict[str, str] = {}

        def caught_up() -> tuple[int] | None:
            info = self.info("replication")
            last.clear()
            last.update(info)
            offset = int(info["master_repl_offset"])
            reps = self._replicas_from(info)
            if len(reps) >= min_replicas and all(r.state == "online" and r.offset == offset for r in reps):
                return (offset,)
            return None

        try:
            (offset,) = wait_until(caught_up, timeout=timeout, interval=0.02)
        except AssertionError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for >= {min_replicas} replica(s) of :{self.port} "
                f"to catch up; last INFO replication: {last}"
            ) from None
        return offset

    def wait_replicas(self, count: int = 1, timeout: float = 10.0, state: str | None = "online") -> None:
        """Wait until at least ``count`` replicas are connected (in ``state``, if given)."""
        wait_until(
            lambda: len([r for r in self.replicas() if state is None or r.state == state]) >= count,
            timeout=timeout,
            message=f"{count} replica(s) of :{self.port} in state {state}",
        )

    def wait_no_replicas(self, timeout: float = 10.0) -> None:
        wait_until(lambda: not self.replicas(), timeout=timeout, message=f"no replicas of :{self.port}")

    def wait_synced_with_primary(self, timeout: float = 10.0) -> None:
        """On a replica: wait until the link to its primary is up and no sync is in progress."""

        def synced() -> bool:
            info = self.info("replication")
            return info.get("master_link_status") == "up" and info.get("master_sync_in_progress") == "0"

        wait_until(synced, timeout=timeout, message=f"replica :{self.port} synced with its primary")

    def dump_rdb(self, dest: Path, timeout: float = 30.0) -> Path:
        """Fetch an RDB snapshot with ``redis-cli --rdb`` (a full sync, as a replica gets it)."""
        argv = [REDIS_CLI, "-h", self.host, "-p", str(self.port)]
        if self.tls is not None:
            argv += [
                "--tls",
                "--cacert", str(self.ca_cert),
                "--cert", str(self.tls.client_cert),
                "--key", str(self.tls.client_key),
            ]  # fmt: skip
        if self.username is not None:
            argv += ["--user", self.username]
        env = dict(os.environ)
        if self.password is not None:
            env["REDISCLI_AUTH"] = self.password
        argv += ["--rdb", str(dest)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --rdb failed ({done.returncode}): {done.stdout}{done.stderr}")
        return dest


# --------------------------------------------------------------------------------------------- loading


def _fresh_dir(tmp: Path, prefix: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))


def load_chain(
    chain_dir: Path,
    tmp: Path,
    *,
    appendfilename: str = "appendonly.aof",
    strict: bool = False,
    **server_kwargs: Any,
) -> RedisServer:
    """Copy a backup chain directory to a fresh dir under ``tmp`` and start Redis on it as its
    multi-part AOF dir (``--appendonly yes --appenddirname <chain name>``).

    Returns the running server once loading has finished; raises :class:`RedisStartError` if Redis
    refuses the files.  ``strict=True`` sets ``aof-load-truncated no`` (a truncated tail is an error
    instead of being cut off).  The caller stops the server (or uses it as a context manager).
    """
    chain_dir = Path(chain_dir)
    manifest = chain_dir / f"{appendfilename}.manifest"
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest {manifest}: Redis would start empty instead of loading")
    parent = _fresh_dir(tmp, "load-chain-")
    # The service may be writing beside us: its ".name.tmp" files come and go (renamed into place).
    shutil.copytree(chain_dir, parent / chain_dir.name, ignore=shutil.ignore_patterns(".*"))
    extra = [
        "--appenddirname", chain_dir.name,
        "--appendfilename", appendfilename,
        "--aof-load-truncated", "no" if strict else "yes",
    ]  # fmt: skip
    server_kwargs["extra_args"] = extra + list(server_kwargs.get("extra_args", ()))
    return RedisServer(parent, appendonly=True, **server_kwargs)


def load_rdb(rdb_path: Path, tmp: Path, **server_kwargs: Any) -> RedisServer:
    """Copy an RDB file to ``dump.rdb`` in a fresh dir under ``tmp`` and start Redis on it."""
    work = _fresh_dir(tmp, "load-rdb-")
    shutil.copyfile(rdb_path, work / "dump.rdb")
    server_kwargs["extra_args"] = ["--dbfilename", "dump.rdb", *server_kwargs.get("extra_args", ())]
    return RedisServer(work, appendonly=False, **server_kwargs)


def load_aof_dir(
    dir_containing_appendonlydir: Path,
    tmp: Path,
    *,
    appenddirname: str = "appendonlydir",
    appendfilename: str = "appendonly.aof",
    strict: bool = False,
    **server_kwargs: Any,
) -> RedisServer:
    """Copy ``<dir>/<appenddirname>`` to a fresh dir under ``tmp`` and start Redis with appendonly on it."""
    src = Path(dir_containing_appendonlydir) / appenddirname
    if not (src / f"{appendfilename}.manifest").is_file():
        raise FileNotFoundError(f"no manifest in {src}")
    parent = _fresh_dir(tmp, "load-aof-")
    shutil.copytree(src, parent / appenddirname)
    extra = [
        "--appenddirname", appenddirname,
        "--appendfilename", appendfilename,
        "--aof-load-truncated", "no" if strict else "yes",
    ]  # fmt: skip
    server_kwargs["extra_args"] = extra + list(server_kwargs.get("extra_args", ()))
    return RedisServer(parent, appendonly=True, **server_kwargs)


# --------------------------------------------------------------------------------------------- factory


class RedisFactory:
    """Creates servers in numbered subdirs of ``base`` and stops all of them in :meth:`close`.

    With ``binary`` every server it starts (primaries, replicas, and the servers that load a chain, an RDB
    or an AOF dir: a load needs a server at least as new as the primary) runs that redis-server unless a
    call passes its own ``binary=``."""

    def __init__(self, base: Path, *, binary: str | Path | None = None) -> None:
        self.base = Path(base)
        self.binary = str(binary) if binary is not None else None
        self.servers: list[RedisServer] = []
        self._n = 0

    def _subdir(self, prefix: str) -> Path:
        self._n += 1
        path = self.base / f"{prefix}-{self._n}"
        path.mkdir(parents=True, exist_ok=False)
        return path

    def _track(self, server: RedisServer) -> RedisServer:
        self.servers.append(server)
        return server

    def __call__(self, **kwargs: Any) -> RedisServer:
        """A new :class:`RedisServer` (same keyword arguments, minus ``dir``)."""
        start = kwargs.pop("start", True)
        self._default_binary(kwargs)
        server = RedisServer(self._subdir("redis"), start=False, **kwargs)
        self._track(server)
        if start:
            server.start()
        return server

    def replica_of(self, primary: RedisServer, *, wait: bool = True, **kwargs: Any) -> RedisServer:
        """A real Redis replica of ``primary`` (TLS material and credentials copied from it)."""
        extra = ["--replicaof", primary.host, str(primary.port)]
        if primary.password is not None:
            extra += ["--masterauth", primary.password]
        if primary.username is not None:
            extra += ["--masteruser", primary.username]
        if primary.tls is not None:
            extra += ["--tls-replication", "yes"]
            kwargs.setdefault("tls", primary.tls)
        kwargs["extra_args"] = extra + list(kwargs.get("extra_args", ()))
        replica = self(**kwargs)
        if wait:
            replica.wait_synced_with_primary()
        return replica

    def _default_binary(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.binary is not None:
            kwargs.setdefault("binary", self.binary)
        return kwargs

    def load_chain(self, chain_dir: Path, **kwargs: Any) -> RedisServer:
        self._default_binary(kwargs)
        return self._track(load_chain(chain_dir, self._subdir("load"), **kwargs))

    def load_rdb(self, rdb_path: Path, **kwargs: Any) -> RedisServer:
        self._default_binary(kwargs)
        return self._track(load_rdb(rdb_path, self._subdir("load"), **kwargs))

    def load_aof_dir(self, dir_containing_appendonlydir: Path, **kwargs: Any) -> RedisServer:
        self._default_binary(kwargs)
        return self._track(load_aof_dir(dir_containing_appendonlydir, self._subdir("load"), **kwargs))

    def close(self) -> None:
        errors: list[BaseException] = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
                with contextlib.suppress(Exception):
                    server.kill()
        self.servers.clear()
        if errors:
            raise errors[0]

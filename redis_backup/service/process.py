"""The service process: claims the backup directory, runs the shard's tasks under the supervisor, and
turns SIGTERM/SIGINT into a clean stop (signals belong to the process, not to a shard)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import NoReturn

from redis_backup.restore.tempserver import kill_all
from redis_backup.service.endpoints import Endpoints, Service
from redis_backup.service.metrics import Metrics
from redis_backup.service.settings import ServiceSettings
from redis_backup.service.shard import Shard
from redis_backup.service.supervisor import Policy, Supervisor, TaskSpec

log = logging.getLogger(__name__)


def tasks_for(shard: Shard) -> list[TaskSpec]:
    """The named tasks of one shard: its capture (whose end is the service's), new chains on a schedule
    or on request, retention, and the periodic deep verify where asked for (restarted after an
    unexpected error, never silently lost)."""
    specs = [TaskSpec("capture", shard.capture, Policy.FATAL, essential=True),
             TaskSpec("rechain", shard.rechain.run, Policy.RESTART, restart_delay=60.0, max_restart_delay=3600.0)]
    if shard.uploader is not None:
        # failures are the uploader's own to retry; an unexpected error restarts it from the backlog
        specs.append(TaskSpec("upload", shard.uploader.run, Policy.RESTART, restart_delay=5.0, max_restart_delay=300.0))
        specs.append(TaskSpec("lease", shard.keep_lease, Policy.FATAL))
    specs.append(TaskSpec("prune", shard.pruner.run, Policy.RESTART, restart_delay=60.0, max_restart_delay=600.0))
    if shard.settings.verify_interval_hours > 0:
        specs.append(TaskSpec("verify", shard.verify_periodically, Policy.RESTART, restart_delay=60.0,
                              max_restart_delay=max(60.0, shard.settings.verify_interval_hours * 3600)))  # fmt: skip
    return specs


def _exit_now(code: int, message: str, **fields: object) -> NoReturn:
    """One line, then out without waiting for anything (worker threads in a request included): what is
    on disk is crash-safe, the next start recovers it and ships what the bucket lacks."""
    log.warning(message, extra=fields)
    kill_all()  # a deep verify's scratch server would outlive us
    for handler in logging.getLogger("redis_backup").handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(code)


async def _idle_by(executor: ThreadPoolExecutor, deadline: float) -> bool:
    """Shut the event loop's default executor down, waiting at most until deadline (time.monotonic()):
    False when a call on it (a request to the bucket that does not answer, say) still runs then. asyncio.run
    would wait for it without a limit, and so would the interpreter's exit."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def shut() -> None:
        executor.shutdown(wait=True)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(finished)

    threading.Thread(target=shut, name="executor-shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(done, max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return False
    return True


async def _beat(service: Service) -> None:
    """The event loop's heartbeat, for /healthz: a loop stuck for long is not healthy."""
    while True:
        service.beat()
        await asyncio.sleep(1.0)


async def run_service(settings: ServiceSettings) -> int:
    """0 after SIGTERM/SIGINT (capture stopped and stored, pending uploads shipped within
    SHUTDOWN_TIMEOUT_SECONDS); a second signal exits at once with 128 + its number; a BackupError
    (raised) when the service cannot go on."""
    loop = asyncio.get_running_loop()
    # our own, so that a stop can bound the wait for what still runs on it (_idle_by)
    executor = ThreadPoolExecutor(thread_name_prefix="asyncio")
    loop.set_default_executor(executor)
    main = asyncio.current_task()
    assert main is not None
    stopping = False
    deadline = 0.0

    def stop(sig: signal.Signals) -> None:
        nonlocal stopping, deadline
        if not stopping:
            stopping = True
            deadline = time.monotonic() + settings.shutdown_timeout_seconds
            log.info("stopping", extra={"signal": sig.name, "timeout_seconds": settings.shutdown_timeout_seconds})
            main.cancel()
        else:
            _exit_now(128 + sig, "stopped at once by a second signal: what the bucket lacks stays in the local "
                      "backlog, shipped at the next start", signal=sig.name)  # fmt: skip

    metrics = Metrics()
    shard = Shard(settings, metrics.shard(settings.connection.address))
    service = Service(metrics, [shard], settings.ready_max_upload_lag_seconds)

    def dispatch(signum: int) -> None:
        if signum != signal.SIGUSR1:
            stop(signal.Signals(signum))
        elif not stopping:
            shard.rechain.request()  # a new chain now (snapshot-now)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Handlers of the process, not loop.add_signal_handler: the loop learns of those through a pipe
        # of one byte per signal, and a flood of SIGUSR1 (snapshot-now from a cron job) that fills it
        # dropped the SIGTERM with the rest, and the service never stopped. A callback handed over here is
        # never lost (a full pipe wakes the loop anyway), and SIGUSR1 is never at its default action,
        # which would end the process.
        with contextlib.suppress(RuntimeError):  # the loop closed: the process is on its way out
            loop.call_soon_threadsafe(dispatch, signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    before = {sig: signal.getsignal(sig) for sig in handled}
    for sig in handled:
        signal.signal(sig, on_signal)
    heartbeat = asyncio.create_task(_beat(service), name="heartbeat")
    endpoints: Endpoints | None = None
    try:
        if settings.metrics_port:
            # bound before anything else: a port in use is a configuration error, before the primary is asked
            endpoints = Endpoints(settings.metrics_host, settings.metrics_port, service)
            endpoints.start()
            log.info("serving metrics", extra={"address": f"{settings.metrics_host}:{endpoints.port}"})
        await asyncio.to_thread(shard.claim_dir)  # the bucket's checks are requests: off the event loop
        service.supervisor = Supervisor(tasks_for(shard), on_restart=metrics.task_restarted)
        return await service.supervisor.run()
    except asyncio.CancelledError:
        if not stopping:
            raise
        return 0
    finally:
        heartbeat.cancel()
        if endpoints is not None:
            await asyncio.to_thread(endpoints.stop)
        left = await shard.close(deadline if stopping else None)  # SIGTERM/SIGINT stay ours: a second one exits
        if left is not None:
            # a request may still hang on a worker thread: not waited for
            _exit_now(0, "stopped at the shutdown timeout: what the bucket lacks stays in the local backlog, "
                      "shipped at the next start", left=left,
                      timeout_seconds=settings.shutdown_timeout_seconds)  # fmt: skip
        if stopping and not await _idle_by(executor, deadline):
            # e.g. the bucket's checks at the start, cancelled by the signal but still waiting for an answer
            _exit_now(0, "stopped at the shutdown timeout: a request still waits for an answer and is not "
                      "waited for", timeout_seconds=settings.shutdown_timeout_seconds)  # fmt: skip
        # SIGTERM/SIGINT stayed ours until here (a second one exits at once); a request for a new chain
        # from now on is ignored, never the end of the process with a signal instead of status 0
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, before[sig] or signal.SIG_DFL)
        if stopping:
            log.info("stopped")

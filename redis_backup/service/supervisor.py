"""Named tasks with a restart policy each, so that no background task dies unread.

A task that fails with an unexpected error is logged with its name, then restarted after a backoff
(`RESTART`) or ends the whole service with that error (`FATAL`). A task that returns ends quietly
(`RESTART` and `FATAL` alike: it decided it has nothing more to do), except one marked `essential`,
whose end is the end of the service (the capture of a shard). Not a TaskGroup: before CPython 3.11.4
(Debian 12 has 3.11.2) its cancellation and `except*` handling leak into the next await.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis_backup.errors import BackupError

log = logging.getLogger(__name__)


class Policy(enum.Enum):
    RESTART = "restart"
    FATAL = "fatal"


@dataclass
class TaskSpec:
    name: str
    run: Callable[[], Awaitable[object]]
    policy: Policy = Policy.FATAL
    essential: bool = False  # its return ends the service (with the value it returns as exit code)
    restart_delay: float = 5.0
    max_restart_delay: float = 300.0
    failures: int = field(default=0, init=False)


class TaskFailed(BackupError):
    """A FATAL task failed with an error that is not one of ours: a bug, named by its task."""

    def __init__(self, name: str, error: BaseException) -> None:
        super().__init__(f"task {name} failed: {type(error).__name__}: {error}")
        self.task = name
        self.error = error


def backoff_delay(failures: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Exponential backoff with jitter: the n-th consecutive failure waits between half and all of
    min(cap, base * 2**(n-1)), so that many services restarting together do not retry in step."""
    delay = min(cap, base * 2.0 ** max(failures - 1, 0))
    r: random.Random = rand or random.Random()
    return delay / 2 + r.random() * delay / 2


async def first_failure(tasks: list[asyncio.Task[None]]) -> BaseException | None:
    """Wait until one of the tasks fails (or all have ended); cancel and reap the rest; the first error,
    if any (in the order given, so that the one that matters most comes first), else None."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        if not t.cancelled() and (e := t.exception()) is not None:
            return e
    return None


class Supervisor:
    def __init__(self, specs: list[TaskSpec], on_restart: Callable[[str], None] | None = None) -> None:
        self.specs = specs
        self.started_at: dict[str, float] = {}
        self.on_restart = on_restart  # a task is restarted after an error (metrics)
        # for /healthz (read from the HTTP thread): each task's state, and whether run() is running
        self.state: dict[str, str] = {spec.name: "pending" for spec in specs}
        self.running = False

    def health(self) -> list[str]:
        """Why the service is not healthy, one line each: it is not running, or an essential task is not."""
        if not self.running:
            return ["the service's tasks are not running"]
        return [f"task {spec.name} is {self.state.get(spec.name)}" for spec in self.specs
                if spec.essential and self.state.get(spec.name) != "running"]  # fmt: skip

    async def run(self) -> int:
        """Until an essential task returns (its int is the exit code) or a FATAL task fails (raised)."""
        by_task: dict[asyncio.Task[object], TaskSpec] = {}
        for spec in self.specs:
            by_task[self._start(spec)] = spec
        self.running = True
        try:
            while by_task:
                done, _ = await asyncio.wait(by_task, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    spec = by_task.pop(task)
                    self.state[spec.name] = "ended"
                    if task.cancelled():
                        continue
                    error = task.exception()
                    if error is None:
                        if spec.essential:
                            result = task.result()
                            return result if isinstance(result, int) else 0
                        log.info("task ended", extra={"task": spec.name})
                        continue
                    # a task that ran well for longer than its longest delay starts its backoff afresh
                    ran = time.time() - self.started_at.get(spec.name, time.time())
                    spec.failures = 1 if ran > spec.max_restart_delay else spec.failures + 1
                    if spec.policy is Policy.FATAL:
                        if isinstance(error, BackupError):
                            raise error
                        log.error("task failed", extra={"task": spec.name}, exc_info=error)
                        raise TaskFailed(spec.name, error) from error
                    delay = backoff_delay(spec.failures, spec.restart_delay, spec.max_restart_delay)
                    log.error("task failed: restarting it", extra={"task": spec.name, "error": f"{error}",
                              "attempt": spec.failures, "in_seconds": round(delay, 2)}, exc_info=error)  # fmt: skip
                    by_task[self._start(spec, delay)] = spec
                    self.state[spec.name] = "restarting"
                    if self.on_restart is not None:
                        self.on_restart(spec.name)
            return 0
        finally:
            self.running = False
            for task in by_task:
                task.cancel()
            await asyncio.gather(*by_task, return_exceptions=True)

    def _start(self, spec: TaskSpec, delay: float = 0.0) -> asyncio.Task[object]:
        async def body() -> object:
            if delay:
                await asyncio.sleep(delay)
            self.started_at[spec.name] = time.time()
            self.state[spec.name] = "running"
            return await spec.run()

        return asyncio.create_task(body(), name=spec.name)

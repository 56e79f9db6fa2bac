"""The supervisor's restart policies, as plain asyncio: no server, no sleeping beyond tiny backoffs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from redis_backup.errors import BackupError
from redis_backup.service.supervisor import Policy, Supervisor, TaskFailed, TaskSpec, first_failure


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_an_essential_task_ends_the_service_with_its_exit_code_and_the_others_are_cancelled() -> None:
    cancelled: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append("side")
            raise

    async def main() -> int:
        await asyncio.sleep(0.01)
        return 3

    sup = Supervisor([TaskSpec("side", forever, Policy.RESTART), TaskSpec("main", main, essential=True)])
    assert run(sup.run()) == 3
    assert cancelled == ["side"]


def test_a_failing_restart_task_is_logged_by_name_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError(f"bug number {calls}")

    async def main() -> int:
        while calls < 3:
            await asyncio.sleep(0.005)
        return 0

    async def go() -> int:
        spec = TaskSpec("verify", flaky, Policy.RESTART, restart_delay=0.001, max_restart_delay=0.002)
        return await Supervisor([spec, TaskSpec("capture", main, essential=True)]).run()

    with caplog.at_level(logging.INFO, logger="redis_backup.service.supervisor"):
        assert run(go()) == 0
    assert calls == 3
    failed = [r for r in caplog.records if r.getMessage() == "task failed: restarting it"]
    assert [r.task for r in failed] == ["verify", "verify"]  # type: ignore[attr-defined]
    assert [r.error for r in failed] == ["bug number 1", "bug number 2"]  # type: ignore[attr-defined]
    assert failed[0].exc_info is not None


def test_a_fatal_task_with_an_unexpected_error_ends_the_service_naming_the_task() -> None:
    async def broken() -> None:
        raise KeyError("oops")

    async def forever() -> int:
        await asyncio.sleep(3600)
        return 0

    sup = Supervisor([TaskSpec("capture", forever, essential=True), TaskSpec("metrics", broken, Policy.FATAL)])
    with pytest.raises(TaskFailed, match=r"task metrics failed: KeyError: 'oops'") as info:
        run(sup.run())
    assert info.value.task == "metrics"
    assert isinstance(info.value, BackupError)


def test_a_fatal_task_with_one_of_our_errors_passes_it_on_unchanged() -> None:
    async def gives_up() -> int:
        raise BackupError("giving up after 5 failed attempts")

    with pytest.raises(BackupError, match=r"^giving up after 5 failed attempts$"):
        run(Supervisor([TaskSpec("capture", gives_up, essential=True)]).run())


def test_first_failure_returns_the_first_error_in_the_given_order_and_reaps_the_rest() -> None:
    async def go() -> tuple[BaseException | None, list[bool]]:
        async def fail(msg: str, delay: float) -> None:
            await asyncio.sleep(delay)
            raise ValueError(msg)

        async def slow() -> None:
            await asyncio.sleep(3600)

        tasks = [asyncio.create_task(slow()), asyncio.create_task(fail("b", 0)), asyncio.create_task(slow())]
        err = await first_failure(tasks)
        return err, [t.done() for t in tasks]

    err, done = run(go())  # type: ignore[misc]
    assert isinstance(err, ValueError) and str(err) == "b"
    assert done == [True, True, True]


def test_first_failure_waits_for_failures_not_for_a_task_that_returns() -> None:
    """A session's offset watcher may end on its own (no INFO permission): the stream goes on."""

    async def go() -> str:
        async def returns() -> None:
            return None

        async def fails_later() -> None:
            await asyncio.sleep(0.02)
            raise ValueError("later")

        err = await first_failure([asyncio.create_task(returns()), asyncio.create_task(fails_later())])
        return str(err)

    assert run(go()) == "later"

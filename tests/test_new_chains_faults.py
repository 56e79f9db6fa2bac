"""New chains under hostile conditions: signals at the wrong moment."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.faults import start_service
from tests.support.servers import RedisServer
from tests.support.service import ServiceFactory

pytestmark = pytest.mark.slow


def test_a_stop_among_requests_for_new_chains_stops_the_service(
    primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    """SIGTERM, then SIGUSR1 over and over (snapshot-now from a cron job as the service is stopped): a
    request that wakes the rechain task as it is cancelled must not swallow the cancel (Python 3.11's
    wait_for), or the service never stops; and one after the handler is gone must not kill it (SIGUSR1's
    default action), so that it ends with status 0."""
    svc = start_service(service_factory, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0)
    svc.signal(signal.SIGTERM)
    until = time.monotonic() + 0.5  # how long the requests go on, not a wait for a condition
    while time.monotonic() < until:
        try:
            os.kill(svc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            break
    assert svc.wait(20) == 0, svc.stderr_text()[-3000:]  # wait raises TimeoutExpired when the service hangs

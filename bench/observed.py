"""The cost of being watched: the service's CPU per GiB of stream while /metrics, /readyz and
/status are each read every second (Prometheus scrapes every 10-15 s; a Kubernetes probe every 10 s),
against the same service with METRICS_PORT=0, in alternating rounds of the ingestion load.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable
from dataclasses import asdict

from tests.support.servers import free_port

from .lab import SERVICE, Lab, attach
from .measure import MIB
from .report import Metric, Section, Target
from .settings import Settings
from .stream import Round, measure

SCRAPED = "redis-backup scraped every 1 s"
QUIET = "redis-backup with METRICS_PORT=0"
PATHS = ("/metrics", "/readyz", "/status")
EVERY = 1.0


class Scraper(threading.Thread):
    """Reads every path once a second until stopped; counts the reads and the failures."""

    def __init__(self, port: int) -> None:
        super().__init__(name="scraper", daemon=True)
        self.base = f"http://127.0.0.1:{port}"
        self.reads = 0
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(EVERY):
            for path in PATHS:
                try:
                    with urllib.request.urlopen(self.base + path, timeout=5) as r:
                        r.read()
                    self.reads += 1
                except OSError as e:  # /readyz answers 503 while not ready: an HTTPError, counted too
                    self.failures.append(f"{path}: {e}")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def _round(lab: Lab, settings: Settings, scraped: bool) -> tuple[Round, int, list[str]]:
    primary = lab.primary()
    port = free_port()
    env = {"METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1"} if scraped else {"METRICS_PORT": "0"}
    try:
        with attach(lab, SERVICE, primary, **env) as rep:
            scraper = Scraper(port) if scraped else None
            if scraper is not None:
                scraper.start()
            try:
                r = measure(settings, primary, rep)
            finally:
                if scraper is not None:
                    scraper.stop()
            return r, scraper.reads if scraper else 0, scraper.failures if scraper else []
    finally:
        primary.stop()


def run(lab: Lab, settings: Settings) -> list[Section]:
    rounds: dict[str, list[Round]] = {SCRAPED: [], QUIET: []}
    reads: list[int] = []
    failures: list[str] = []
    for i in range(settings.rounds):
        for name, scraped in ((SCRAPED, True), (QUIET, False)):
            r, n, failed = _round(lab, settings, scraped)
            rounds[name].append(r)
            if scraped:
                reads.append(n)
                failures += failed
            print(f"  observed round {i + 1} {name}: {r.stream_bytes / MIB:.0f} MiB, cpu {r.cpu:.2f}s, "
                  f"{r.rps:,.0f} req/s" + (f", {n} reads" if scraped else ""), flush=True)  # fmt: skip

    def vs(name: str, unit: str, value: Callable[[Round], float], target: Target | None) -> Metric:
        return Metric(name, unit, SCRAPED, [value(r) for r in rounds[SCRAPED]], QUIET,
                      [value(r) for r in rounds[QUIET]], target)  # fmt: skip

    section = Section("observed", rounds=settings.rounds)
    section.metrics += [
        vs("CPU per GiB of stream", "s/GiB", lambda r: r.cpu_per_gib, Target("ratio", "<=", 1.1)),
        vs("primary throughput", "req/s", lambda r: r.rps, Target("ratio", ">=", 0.95)),
        vs("lag to zero after the load", "s", lambda r: r.caught_up_after, None),
        vs("peak RSS", "MiB", lambda r: r.peak_rss / MIB, None),
    ]
    section.add(Metric("endpoint reads that failed", "count", SCRAPED, [float(len(failures))], None, None,
                       Target("a", "==", 0), note="; ".join(failures[:3])))  # fmt: skip
    section.details = {
        "paths": list(PATHS), "every_seconds": EVERY, "reads_per_round": reads,
        "rounds": {name: [asdict(r) for r in rs] for name, rs in rounds.items()},
    }  # fmt: skip
    return [section]

"""``python -m bench.run [--quick] [--only SECTION,...] [--rounds N] [--out FILE]``

Runs the benchmarks of docs/PERFORMANCE.md, prints a table of medians, ratios and targets per section,
and writes the same as JSON (bench/results/<date>.json by default). Exit status 1 if a section failed.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any

from . import into, latency, metadata, observed, rechain, restore, s3, snapshot, stream
from .lab import Lab
from .measure import Stopwatch
from .report import Section, Skip, machine_info, render, render_section, write_json
from .settings import SECTIONS, Settings, Size

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results"

Runner = Callable[[Lab, Settings], list[Section]]
# Each runner produces the sections it names (stream's rounds also give the memory figures).
RUNNERS: tuple[tuple[tuple[str, ...], Runner], ...] = (
    (("snapshot",), snapshot.run),
    (("stream", "memory"), stream.run),
    (("wait",), latency.run),
    (("rotation",), latency.run_rotation),
    (("restore",), restore.run),
    (("into",), into.run),
    (("metadata",), metadata.run),
    (("s3",), s3.run),
    (("rechain",), rechain.run),
    (("observed",), observed.run),
)
# settings.SECTIONS plus the sections added since (each runs by default and may be named in --only)
ALL_SECTIONS: tuple[str, ...] = (*SECTIONS, *(n for names, _ in RUNNERS for n in names if n not in SECTIONS))


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(ALL_SECTIONS)}")
    return names


def _sizes(text: str) -> tuple[Size, ...]:
    try:
        return tuple(Size.parse(s) for s in text.split(",") if s.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 round: checks that the suite works")
    p.add_argument("--only", type=_sections, metavar="LIST", help=f"some of {','.join(ALL_SECTIONS)}")
    p.add_argument("--rounds", type=_positive, metavar="N", help="rounds per contender (default 3, quick 1)")
    p.add_argument("--out", type=Path, metavar="FILE", help="JSON results (default bench/results/<date>.json)")
    p.add_argument("--sizes", type=_sizes, metavar="LIST", help="snapshot dataset sizes (default 100M,800M,2G)")
    p.add_argument("--requests", type=_positive, metavar="N", help="redis-benchmark requests per ingestion round")
    p.add_argument("--wait-iterations", type=_positive, metavar="N", help="SET + WAIT pairs per round")
    p.add_argument(
        "--restore-size",
        type=_sizes,
        metavar="SNAPSHOT,STREAM",
        help="restore chain: RDB and commands (1G,1G)",
    )
    p.add_argument("--into-keys", type=_positive, metavar="N", help="keys restored --into (default 1000000)")
    p.add_argument("--tmp", type=Path, metavar="DIR", help="where the temporary files go (default TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (for debugging)")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings.defaults(args.quick)
    changes: dict[str, Any] = {"sections": ALL_SECTIONS}
    if args.only:
        changes["sections"] = args.only
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.sizes:
        changes["snapshot_sizes"] = args.sizes
    if args.requests:
        changes["requests"] = args.requests
    if args.wait_iterations:
        changes["wait_iterations"] = args.wait_iterations
    if args.into_keys:
        changes["into_keys"] = args.into_keys
    if args.restore_size:
        if len(args.restore_size) != 2:
            raise SystemExit("--restore-size wants two sizes: SNAPSHOT,STREAM (e.g. 1G,1G)")
        changes["restore_snapshot"], changes["restore_stream"] = args.restore_size
    return replace(s, **changes)


def run_runner(names: Sequence[str], runner: Runner, lab: Lab, settings: Settings) -> list[Section]:
    """Run one runner; a Skip or a failure becomes a section that says so, and nothing is left running."""
    clock = Stopwatch()
    try:
        sections = runner(lab, settings)
    except Skip as e:
        sections = [Section(n, skipped=str(e)) for n in names]
    except Exception as e:
        traceback.print_exc()
        sections = [Section(n, error=f"{type(e).__name__}: {e}") for n in names]
    finally:
        lab.close()
    for s in sections:
        s.seconds = clock.elapsed()
    return sections


def document(
    argv: Sequence[str], settings: Settings, machine: dict[str, Any], sections: list[Section]
) -> dict[str, Any]:
    return {
        "format": 1,
        "command": " ".join(["python -m bench.run", *argv]),
        "settings": asdict(settings),
        "machine": machine,
        "sections": {s.name: s.to_dict() for s in sections},
    }


def default_out(settings: Settings) -> Path:
    date = datetime.date.today().isoformat()
    return RESULTS / (f"quick-{date}.json" if settings.quick else f"{date}.json")


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"bench: stopped by signal {signum}")  # so that every finally block cleans up


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    out = args.out or default_out(settings)
    root = Path(tempfile.mkdtemp(prefix="redis-backup-bench-", dir=args.tmp))
    lab = Lab(root)
    machine = machine_info(REPO_ROOT, root)
    print(
        f"bench: {settings.rounds} round(s), sections {','.join(settings.sections)}, files in {root}",
        flush=True,
    )
    sections: list[Section] = []
    try:
        for names, runner in RUNNERS:
            wanted = [n for n in names if settings.wants(n)]
            if not wanted:
                continue
            print(f"bench: running {', '.join(wanted)} ...", flush=True)
            for section in run_runner(wanted, runner, lab, settings):
                sections.append(section)
                print(render_section(section), flush=True)
            write_json(out, document(argv, settings, machine, sections))
    finally:
        lab.close()
        if not args.keep:
            lab.remove()
    print("\n" + render(sections))
    print(f"\nbench: results written to {out}")
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Retention as data: chain summaries, a time and a policy in; one decision per chain and place, with its
reason, and the window that remains, out. Each row is a scenario; chains are written as
`name: hours ago it began .. hours ago its last second was`, oldest first."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from redis_backup.chain.retention import ChainSummary, Policy, Unreadable, Where, decide, ordinal
from redis_backup.times import iso

NOW = 1_800_000_000
H = 3600


def at(hours_ago: float) -> int:
    return int(NOW - hours_ago * H)


def chain(
    name: str, began: float, last: float, *, open: bool = False, where: str = "local", uploaded: bool = False
) -> ChainSummary:
    """A chain that began `began` hours ago and whose last second was `last` hours ago; where: local,
    bucket or both."""
    return ChainSummary(name, at(began), not open, at(began), at(last), ((at(began), at(last)),),
                        local=where in ("local", "both"), bucket=where in ("bucket", "both"),
                        uploaded=uploaded)  # fmt: skip


@dataclass(frozen=True)
class Row:
    scenario: str
    chains: list[ChainSummary]
    policy: Policy
    expect: dict[tuple[str, Where], str]  # (chain, place) -> "keep: <part of the reason>" / "delete: ..."
    bucket: bool = False
    unreadable: tuple[Unreadable, ...] = ()


ROWS = [
    Row("nothing old and under the count: everything stays",
        [chain("a", 10, 9), chain("b", 9, 5), chain("c", 5, 0, open=True)], Policy(24, 10),
        {("a", "local"): "keep: needed for seconds after",
         ("b", "local"): "keep: the newest closed chain",
         ("c", "local"): "keep: the open chain"}),
    Row("five chains within 24 h, BACKUP_MAX_FILES=2: exactly the newest two remain",
        [chain("a", 10, 8), chain("b", 8, 6), chain("c", 6, 4), chain("d", 4, 2), chain("e", 2, 0, open=True)],
        Policy(24, 2),
        {("a", "local"): "delete: beyond BACKUP_MAX_FILES=2: the 5th newest",
         ("b", "local"): "delete: beyond BACKUP_MAX_FILES=2: the 4th newest",
         ("c", "local"): "delete: beyond BACKUP_MAX_FILES=2: the 3rd newest",
         ("d", "local"): "keep: the newest closed chain",
         ("e", "local"): "keep: the open chain"}),
    Row("older than BACKUP_RETENTION_HOURS goes; the newest closed chain stays however old",
        [chain("a", 100, 90), chain("b", 90, 30), chain("c", 30, 0, open=True)], Policy(24, 10),
        {("a", "local"): f"delete: older than BACKUP_RETENTION_HOURS=24: its last second {iso(at(90))} is "
                         f"before {iso(at(24))}",
         ("b", "local"): "keep: the newest closed chain, kept whatever the settings say (older than",
         ("c", "local"): "keep: the open chain"}),
    Row("a chain whose last second is inside the window is needed for it",
        [chain("a", 40, 23.5), chain("b", 23.5, 1), chain("c", 1, 0, open=True)], Policy(24, 10),
        {("a", "local"): f"keep: needed for seconds after {iso(at(24))}",
         ("b", "local"): "keep: the newest closed chain",
         ("c", "local"): "keep: the open chain"}),
    Row("fractional hours: 0.001 h is 3.6 s",
        [chain("a", 0.01, 0.005), chain("b", 0.005, 0.002), chain("c", 0.002, 0, open=True)], Policy(0.001, 10),
        {("a", "local"): "delete: older than BACKUP_RETENTION_HOURS=0.001",
         ("b", "local"): "keep: the newest closed chain",
         ("c", "local"): "keep: the open chain"}),
    Row("BACKUP_MAX_FILES=0: no count limit",
        [chain(f"c{i:02d}", 12 - i, 11 - i) for i in range(11)] + [chain("c99", 1, 0, open=True)], Policy(24, 0),
        {**{(f"c{i:02d}", "local"): "keep: needed for seconds after" for i in range(10)},
         ("c10", "local"): "keep: the newest closed chain", ("c99", "local"): "keep: the open chain"}),
    Row("BACKUP_MAX_FILES=1 still keeps the open chain and the newest closed one",
        [chain("a", 3, 2), chain("b", 2, 1), chain("c", 1, 0, open=True)], Policy(24, 1),
        {("a", "local"): "delete: beyond BACKUP_MAX_FILES=1: the 3rd newest",
         ("b", "local"): "keep: the newest closed chain, kept whatever the settings say (beyond BACKUP_MAX_FILES=1",
         ("c", "local"): "keep: the open chain"}),
    Row("beyond the count and older than the window: both reasons",
        [chain("a", 50, 40), chain("b", 3, 2), chain("c", 2, 1), chain("d", 1, 0, open=True)], Policy(24, 3),
        {("a", "local"): "delete: beyond BACKUP_MAX_FILES=3: the 4th newest; older than BACKUP_RETENTION_HOURS=24",
         ("b", "local"): "keep: needed", ("c", "local"): "keep: the newest closed chain",
         ("d", "local"): "keep: the open chain"}),
    Row("an open chain newer than the newest closed one is kept: the service is closing it",
        [chain("a", 50, 40), chain("b", 40, 30, open=True), chain("c", 30, 0, open=True)], Policy(24, 1),
        {("a", "local"): "keep: the newest closed chain",
         ("b", "local"): "keep: open and newer than the newest closed chain",
         ("c", "local"): "keep: the open chain"}),
    Row("an open chain older than a closed one (left open by a crash) is judged like any other",
        [chain("a", 50, 40, open=True), chain("b", 40, 30), chain("c", 30, 0, open=True)], Policy(24, 10),
        {("a", "local"): "delete: older than BACKUP_RETENTION_HOURS=24",
         ("b", "local"): "keep: the newest closed chain", ("c", "local"): "keep: the open chain"}),
    Row("a chain whose metadata cannot be read is never deleted, and does not count",
        [chain("b", 3, 2), chain("c", 2, 1), chain("d", 1, 0, open=True)], Policy(0.5, 2),
        {("a", "local"): "keep: cannot be read (damaged metadata): never deleted automatically",
         ("b", "local"): "delete: beyond BACKUP_MAX_FILES=2: the 3rd newest",
         ("c", "local"): "keep: the newest closed chain", ("d", "local"): "keep: the open chain"},
        unreadable=(Unreadable("a", "local", "damaged metadata"),)),
    Row("LOCAL_RETENTION_HOURS keeps less locally, once a chain is completely in the bucket",
        [chain("a", 10, 8, where="both", uploaded=True), chain("b", 8, 6, where="both"),
         chain("c", 6, 0.5, where="both", uploaded=True), chain("d", 0.5, 0, open=True, where="both")],
        Policy(24, 10, local_retention_hours=1), bucket=True,
        expect={("a", "local"): "delete: older than LOCAL_RETENTION_HOURS=1: its last second "
                         f"{iso(at(8))} is before {iso(at(1))}, and the bucket holds it completely",
         ("a", "bucket"): "keep: needed for seconds after",
         ("b", "local"): "keep: older than LOCAL_RETENTION_HOURS=1: its last second "
                         f"{iso(at(6))} is before {iso(at(1))}, but not yet in the bucket",
         ("b", "bucket"): "keep: needed",
         ("c", "local"): "keep: the newest closed chain", ("c", "bucket"): "keep: the newest closed chain",
         ("d", "local"): "keep: the open chain", ("d", "bucket"): "keep: the open chain"}),
    Row("past BACKUP_RETENTION_HOURS a chain goes everywhere, uploaded or not",
        [chain("a", 50, 40, where="both"), chain("b", 40, 30, where="local"), chain("c", 30, 20, where="both"),
         chain("d", 20, 0, open=True, where="both")], Policy(24, 10, local_retention_hours=1), bucket=True,
        expect={("a", "local"): "delete: older than BACKUP_RETENTION_HOURS=24",
         ("a", "bucket"): "delete: older than BACKUP_RETENTION_HOURS=24",
         ("b", "local"): "delete: older than BACKUP_RETENTION_HOURS=24",
         ("c", "local"): "keep: the newest closed chain", ("c", "bucket"): "keep: the newest closed chain",
         ("d", "local"): "keep: the open chain", ("d", "bucket"): "keep: the open chain"}),
    Row("a chain only in the bucket follows BACKUP_RETENTION_HOURS and BACKUP_MAX_FILES",
        [chain("a", 50, 40, where="bucket"), chain("b", 10, 9, where="bucket"), chain("c", 9, 8, where="bucket"),
         chain("d", 8, 0, where="both"), chain("e", 1, 0, open=True, where="both")],
        Policy(24, 3, local_retention_hours=1), bucket=True,
        expect={("a", "bucket"): "delete: beyond BACKUP_MAX_FILES=3: the 5th newest; older than",
         ("b", "bucket"): "delete: beyond BACKUP_MAX_FILES=3: the 4th newest",
         ("c", "bucket"): "keep: needed for seconds after",
         ("d", "local"): "keep: the newest closed chain", ("d", "bucket"): "keep: the newest closed chain",
         ("e", "local"): "keep: the open chain", ("e", "bucket"): "keep: the open chain"}),
    Row("without a bucket LOCAL_RETENTION_HOURS does not apply: BACKUP_RETENTION_HOURS does",
        [chain("a", 10, 8), chain("b", 8, 6), chain("c", 6, 0, open=True)], Policy(24, 10, local_retention_hours=1),
        {("a", "local"): "keep: needed for seconds after", ("b", "local"): "keep: the newest closed chain",
         ("c", "local"): "keep: the open chain"}),
    Row("only an open chain", [chain("a", 100, 90, open=True)], Policy(1, 1),
        {("a", "local"): "keep: the open chain, kept whatever the settings say (older than"}),
    Row("no chains at all", [], Policy(24, 10), {}),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.scenario for r in ROWS])
def test_decisions(row: Row) -> None:
    out = decide(row.chains, NOW, row.policy, bucket=row.bucket, unreadable=row.unreadable)
    got = {(d.chain, d.where): f"{d.action}: {d.reason}" for d in out.decisions}
    assert set(got) == set(row.expect), got
    for key, want in row.expect.items():
        assert got[key].startswith(want), (key, got[key], want)
    assert [(d.chain, d.where) for d in out.decisions] == sorted(got, key=lambda k: (k[0], k[1] != "local"))


WINDOW_ROWS = [
    ("what remains locally and in the bucket, after pruning",
     [chain("a", 50, 40, where="both"), chain("b", 10, 8, where="both", uploaded=True),
      chain("c", 8, 1, where="both", uploaded=True), chain("d", 1, 0, open=True, where="both")],
     Policy(24, 10, local_retention_hours=2), True,
     {"local": [(at(8), at(1)), (at(1), at(0))], "bucket": [(at(10), at(8)), (at(8), at(1)), (at(1), at(0))]}),
    ("chains that touch merge into one window",
     [chain("a", 3, 2), ChainSummary("b", at(2) + 1, False, at(2) + 1, at(0), ((at(2) + 1, at(0)),))],
     Policy(24, 10), False, {"local": [(at(3), at(0))]}),
    ("nothing left is no window", [], Policy(24, 10), True, {"local": [], "bucket": []}),
]


@pytest.mark.parametrize(("scenario", "chains", "policy", "bucket", "windows"), WINDOW_ROWS,
                         ids=[r[0] for r in WINDOW_ROWS])  # fmt: skip
def test_windows_after_pruning(
    scenario: str, chains: list[ChainSummary], policy: Policy, bucket: bool, windows: dict[str, list[tuple[int, int]]]
) -> None:
    out = decide(chains, NOW, policy, bucket=bucket)
    merged = {w: _merge(v) for w, v in windows.items()}
    assert out.windows == merged


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def test_the_window_is_stated_in_words_and_as_data() -> None:
    out = decide([chain("a", 50, 40), chain("b", 2, 1), chain("c", 1, 0, open=True)], NOW, Policy(24, 10))
    assert out.window_lines() == [f"local: after pruning, restorable window: {iso(at(2))} .. {iso(at(0))}"]
    data = out.to_dict()
    assert data["windows"] == {"local": [{"from": iso(at(2)), "to": iso(at(0)), "from_unix": at(2), "to_unix": at(0)}]}
    assert [(d["chain"], d["action"]) for d in data["decisions"]] == [("a", "delete"), ("b", "keep"), ("c", "keep")]
    assert data["cutoff_unix"] == at(24)


@pytest.mark.parametrize(("n", "text"), [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"),
                                         (13, "13th"), (21, "21st"), (22, "22nd"), (101, "101st"), (111, "111th")])
def test_ordinals(n: int, text: str) -> None:
    assert ordinal(n) == text


def test_a_chain_is_judged_by_its_last_second_not_its_first() -> None:
    # began long before the window, still written into it: every second of the window needs it
    out = decide([chain("a", 100, 10), chain("b", 10, 5), chain("c", 5, 0, open=True)], NOW, Policy(24, 10))
    assert out.find("a", "local") is not None and not out.find("a", "local").delete  # type: ignore[union-attr]


@pytest.mark.parametrize("hours", [1e308, 1e12, 1e6])
def test_a_huge_retention_keeps_everything_and_states_its_cutoff(hours: float) -> None:
    # the config takes any finite number: a cutoff before the epoch (or past a float) keeps every chain
    chains = [chain("a", 50, 40), chain("b", 2, 1), chain("c", 1, 0, open=True)]
    out = decide(chains, NOW, Policy(hours, 10, hours), bucket=True)
    assert [d.delete for d in out.decisions] == [False, False, False]
    assert out.cutoff == out.local_cutoff == 0 and out.to_dict()["cutoff"] == "1970-01-01T00:00:00Z"


def test_the_open_chain_is_kept_when_a_clock_that_went_back_sorts_it_before_a_closed_one() -> None:
    # the host's clock was a week ahead when "future" began (and closed); corrected, the service began
    # "now", still written: it sorts first by its time, yet it alone holds the latest state
    chains = [chain("now", 1, 0, open=True), chain("future", -7 * 24, -7 * 24 - 1)]
    for policy in (Policy(24, 1), Policy(0.5, 1)):
        out = decide(chains, NOW, policy, bucket=True)
        kept = out.find("now", "local")
        assert kept is not None and not kept.delete and kept.reason.startswith("the newest open chain"), kept
        assert (at(1), at(0)) in out.windows["local"]

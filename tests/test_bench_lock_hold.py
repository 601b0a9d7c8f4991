"""benchmarks/lock_hold.py: its measurements run, clean up, and its check can fail.

Smoke tests on tiny files: no timing is asserted (the machine is shared), only
that each measurement returns sane figures, leaves nothing behind, and that the
under-traffic correctness check passes on a real run and fails on a lost op.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scripts import load_script

from rmtabtool import format_entry

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "lock_hold.py"


bench = load_script("benchmarks/lock_hold.py", "rmtab_bench_lock_hold")


def is_duration(value: object) -> bool:
    return isinstance(value, float) and value >= 0.0


def test_in_place_dedupe_of_a_bloated_file_reports_its_hold(tmp_path: Path) -> None:
    source = ROOT / "examples" / "bloated-rmtab"  # copied, never modified
    run = bench.dedupe_in_place(source, tmp_path, interval=0.001)
    assert run.changed
    assert 0 < run.entries_out < run.lines_in
    assert is_duration(run.hold)
    assert is_duration(run.wait)
    assert is_duration(run.wall)
    assert run.probe.attempts >= 1
    assert is_duration(run.probe.max_wait)
    assert list(tmp_path.iterdir()) == []  # its state directory is gone
    assert "| seed-like 192K |" in bench.in_place_table("t", [("seed-like 192K", source, [run])])


def test_clean_recheck_changes_nothing(tmp_path: Path) -> None:
    source = bench.clean_rmtab(tmp_path / "clean", 50)
    run = bench.dedupe_in_place(source, tmp_path, interval=0.001)
    assert not run.changed
    assert run.lines_in == run.entries_out == 50
    assert is_duration(run.hold)


@pytest.mark.slow
def test_rewrites_under_mountd_like_traffic_lose_no_op(tmp_path: Path) -> None:
    result = bench.measure_traffic(tmp_path, lines=200, workers=2, rate=30, rounds=3, gap=0.05)
    assert result.correct, result.problems
    assert result.ops > 0
    assert len(result.holds) == len(result.rereads) == 3
    assert all(is_duration(h) for h in result.holds)
    assert all(n >= 1 for n in result.acquisitions)
    assert list(tmp_path.iterdir()) == []  # statedir and stop file removed
    assert "| yes |" in bench.traffic_table(200, [result])


def test_the_correctness_check_sees_a_lost_mountd_op(tmp_path: Path) -> None:
    kept = bench.static_entries(10)
    rmtab = tmp_path / "rmtab"
    rmtab.write_bytes(b"".join(format_entry(e) for e in kept))  # worker 0's ops are lost
    problems: list[str] = []
    bench.check_final(rmtab, kept, [20], 7, problems)
    assert any("missing" in p for p in problems)
    problems = []
    bench.check_final(rmtab, kept, [0], 7, problems)
    assert problems == []

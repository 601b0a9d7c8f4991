"""Progress reports while big files are read: every command, the live rmtab included.

The library reports ``progress(name, bytes_done, bytes_total)``; the CLI turns it
into a progress bar on stderr, only at a terminal and only for big inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cliutil import run_in_a_terminal

from rmtabtool import operations
from rmtabtool.cli import PROGRESS_MIN_BYTES
from rmtabtool.operations import Live
from rmtabtool.safefile import VERIFY_MAX

EXPORT = b"/srv/nfs/home"
# Over VERIFY_MAX, so that the live rmtab is streamed, not read in one go.
LINES = [b"10.0.%d.%d:%s/u%d:0x%08x\n" % (i % 50, i % 7, EXPORT, i % 300, i % 3) for i in range(60)]
BLOAT = b"".join(LINES) * (VERIFY_MAX // len(b"".join(LINES)) + 200)

Calls = list[tuple[str, int, int]]


@pytest.fixture
def live(tmp_path: Path) -> Live:
    statedir = tmp_path / "nfs"
    statedir.mkdir()
    (statedir / "rmtab").write_bytes(BLOAT)
    return Live.from_env(statedir / "rmtab")


def _check(calls: Calls, name: str, size: int) -> None:
    """Reports for ``name`` start at 0, never go back within one read, end at ``size``."""
    mine = [(done, total) for n, done, total in calls if n == name]
    assert mine, calls[:5]
    assert mine[0] == (0, size)
    assert mine[-1] == (size, size)
    assert all(total == size for _, total in mine)
    assert len(mine) > 3, "the big file was read in one go, not streamed"
    dones = [done for done, _ in mine]
    assert dones == sorted(dones)


def test_stats_of_the_live_rmtab_reports_progress(live: Live) -> None:
    calls: Calls = []
    operations.stats(None, live, progress=lambda *a: calls.append(a))
    _check(calls, os.fspath(live.path), len(BLOAT))


def test_in_place_dedupe_reports_progress(live: Live) -> None:
    calls: Calls = []
    result = operations.dedupe(None, live, progress=lambda *a: calls.append(a))
    assert result.changed
    _check(calls, os.fspath(live.path), len(BLOAT))


def test_in_place_dedupe_of_another_file_reports_progress(tmp_path: Path, live: Live) -> None:
    other = tmp_path / "copy"
    other.write_bytes(BLOAT)
    calls: Calls = []
    operations.dedupe(os.fspath(other), live, progress=lambda *a: calls.append(a))
    _check(calls, os.fspath(other), len(BLOAT))


def test_merge_into_reports_every_input_and_the_target(tmp_path: Path, live: Live) -> None:
    source = tmp_path / "node2-rmtab"
    source.write_bytes(BLOAT[: len(BLOAT) // 2])
    calls: Calls = []
    operations.merge(
        [os.fspath(source)], live, into=os.fspath(live.path), progress=lambda *a: calls.append(a)
    )
    _check(calls, os.fspath(source), len(BLOAT) // 2)
    _check(calls, os.fspath(live.path), len(BLOAT))


def test_restore_forget_and_backup_report_progress(tmp_path: Path, live: Live) -> None:
    export = tmp_path / "export"
    export.mkdir()
    backup_file = tmp_path / "backup"
    backup_file.write_bytes(b"10.9.9.9:%s:0x00000001\n" % os.fsencode(export))
    name = os.fspath(live.path)

    calls: Calls = []
    operations.restore(
        os.fspath(export), live, from_=os.fspath(backup_file), progress=lambda *a: calls.append(a)
    )
    _check(calls, name, len(BLOAT))
    size = live.path.stat().st_size  # restore deduplicated the live rmtab too

    calls = []
    operations.backup(
        os.fspath(export), live, to=tmp_path / "saved", progress=lambda *a: calls.append(a)
    )
    assert calls[0] == (name, 0, size)
    assert calls[-1] == (name, size, size)

    calls = []
    result = operations.forget(live, clients=[b"10.9.9.9"], progress=lambda *a: calls.append(a))
    assert [e.client for e in result.removed] == [b"10.9.9.9"]
    assert calls[0] == (name, 0, size)
    assert calls[-1] == (name, size, size)


def test_a_reread_after_a_change_starts_again_from_zero(live: Live) -> None:
    """mountd changed the file between our read and the rename: read it again."""
    calls: Calls = []
    changed: list[bool] = []

    def progress(name: str, done: int, total: int) -> None:
        calls.append((name, done, total))
        if done == total and not changed:  # first read complete: mountd appends a line
            changed.append(True)
            with open(live.path, "ab") as f:
                f.write(b"10.1.1.1:/srv/new:0x00000001\n")

    result = operations.dedupe(None, live, progress=progress)
    assert b"10.1.1.1:/srv/new:0x00000001\n" in live.path.read_bytes()
    assert result.changed
    starts = [i for i, (_, done, _) in enumerate(calls) if done == 0]
    assert len(starts) >= 2, "the changed file was not read again"
    _check(calls[starts[-1] :], os.fspath(live.path), len(BLOAT) + 29)


def _rmtabtool() -> list[str]:
    exe = Path(sys.executable).with_name("rmtabtool")
    return [os.fspath(exe)] if exe.exists() else [sys.executable, "-m", "rmtabtool"]


@pytest.mark.slow
def test_in_place_dedupe_at_a_terminal_shows_a_progress_bar(tmp_path: Path) -> None:
    statedir = tmp_path / "nfs"
    statedir.mkdir()
    rmtab = statedir / "rmtab"
    with open(rmtab, "wb") as f:
        while f.tell() <= PROGRESS_MIN_BYTES:
            f.write(BLOAT)
    cmd = _rmtabtool()
    if len(cmd) > 1:
        pytest.skip("needs the installed rmtabtool script")
    code, out = run_in_a_terminal([*cmd, "dedupe", "--rmtab", os.fspath(rmtab)])
    assert code == 0, out[-2000:]
    assert f"reading {rmtab}".encode() in out.replace(b"\r\n", b""), out[-2000:]
    assert rmtab.stat().st_size < len(BLOAT)

    # The same command with its output piped: no bar, nothing decorative.
    with open(rmtab, "ab") as f:
        f.write(BLOAT * (PROGRESS_MIN_BYTES // len(BLOAT) + 1))
    res = subprocess.run(
        [*cmd, "dedupe", "--rmtab", os.fspath(rmtab)], capture_output=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert b"reading" not in res.stderr


def test_the_progress_bar_starts_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh thread would keep `--jobs` reads in one process (no fork while
    other threads run): the bar is redrawn from the reader's calls instead."""
    import threading

    from rmtabtool.cli import _ProgressBar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    before = threading.active_count()
    with _ProgressBar(quiet=False) as bar:
        bar("big-rmtab", 0, PROGRESS_MIN_BYTES)
        assert bar._bar is not None, "the bar was not shown"
        bar("big-rmtab", PROGRESS_MIN_BYTES // 2, PROGRESS_MIN_BYTES)
        assert threading.active_count() == before

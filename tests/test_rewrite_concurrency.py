"""rmtabtool rewrites racing a mountd-like writer: no MNT or UMNT is ever lost.

The writer processes (tests/mountd_like.py) follow mountd's protocol exactly:
POSIX lock on .rmtab.lock, in-place count bumps, appends, and UMNT rewrites that
rename rmtab.tmp into place BEFORE writing its last buffer. Each worker owns its
own keys and runs a fixed op sequence, so the final file can be compared with a
model, key by key.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import pytest
from mountd_like import command, model, plan

from rmtabtool import operations
from rmtabtool import safefile as sf
from rmtabtool.entry import Entry, format_entry
from rmtabtool.locking import MountdLock
from rmtabtool.safefile import read_snapshot, rewrite_file
from rmtabtool.table import ReadResult, read_bytes, read_table

SEED = 4242
STATIC = [
    Entry(b"172.16.%d.%d" % (i // 200, i % 200), b"/srv/static", 1 + i % 3) for i in range(300)
]
STATIC_BYTES = b"".join(format_entry(e) for e in STATIC)


def counts(result: ReadResult) -> dict[tuple[bytes, bytes], int]:
    return {(e.client, e.path): e.count for e in result.table}


def marker(name: bytes) -> tuple[bytes, bytes]:
    return (b"rmtabtool-" + name, b"/marker")


def rewriter_build(
    name: bytes, iteration: int
) -> Callable[[Optional[ReadResult]], Iterator[bytes]]:
    """Reverse the entry order (so every rewrite really rewrites) and set our marker.

    (A snapshot may be torn -- read while mountd was writing --; what is built
    from it must then never be written: the final checks see to that.)
    """

    def build(snapshot: Optional[ReadResult]) -> Iterator[bytes]:
        assert snapshot is not None
        key = marker(name)
        entries = [e for e in snapshot.table if e.key != key]
        for e in reversed(entries):
            yield format_entry(e)
        yield format_entry(Entry(key[0], key[1], iteration))

    return build


def check_complete(result: ReadResult) -> None:
    """A snapshot of a whole version: every static entry there, nothing torn."""
    assert not result.missing_final_newline
    assert not result.rejected
    assert result.mountd_stops_at_line is None
    have = counts(result)
    for e in STATIC:
        assert have.get(e.key) == e.count, f"{e!r} missing: a torn read"


@pytest.fixture
def statedir(tmp_path: Path) -> Path:
    d = tmp_path / "nfs"
    d.mkdir()
    (d / "rmtab").write_bytes(STATIC_BYTES)
    return d


class Workers:
    """mountd-like worker processes that run until told to stop.

    They have all started writing before the test's rewrites begin and stop only
    after those are done, so every rewrite runs while they write; each reports
    how many ops it did, so the model is exact.
    """

    MAX_OPS = 100_000

    def __init__(self, statedir: Path, n: int, *, gap: float) -> None:
        self.stop = statedir.parent / "stop-workers"
        self.procs = [
            subprocess.Popen(
                command(
                    "worker",
                    str(statedir),
                    str(w),
                    str(SEED),
                    str(self.MAX_OPS),
                    "--gap",
                    str(gap),
                    "--pause",
                    "0.01",
                    "--stop",
                    str(self.stop),
                ),
                stdout=subprocess.PIPE,
            )
            for w in range(n)
        ]

        for p in self.procs:  # overlap by construction: all are writing already
            assert p.stdout is not None
            assert p.stdout.readline() == b"started\n"

    def finish(self) -> list[int]:
        """Stop them; the number of ops each did."""
        self.stop.touch()
        done = []
        for p in self.procs:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0
            done.append(int(out))
        return done

    def expected(self, done: list[int]) -> dict[tuple[bytes, bytes], int]:
        expected = {e.key: e.count for e in STATIC}
        for w, n in enumerate(done):
            assert n < self.MAX_OPS
            expected.update(model({}, plan(w, SEED, n)))
        return expected


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.0, 0.003], ids=["plain", "late-tail"])
def test_mountd_writers_and_a_rewrite_loop_lose_nothing(statedir: Path, gap: float) -> None:
    rmtab = statedir / "rmtab"
    rounds = 15
    workers = Workers(statedir, 3, gap=gap)
    try:
        for i in range(1, rounds + 1):
            report = rewrite_file(
                rmtab, rewriter_build(b"a", i), mountd_statedir=statedir, timeout=30
            )
            assert report.changed
            result, _ = read_snapshot(rmtab, mountd_statedir=statedir, timeout=30)
            check_complete(result)
    finally:
        done = workers.finish()
    assert all(n > 0 for n in done)

    final = read_table(rmtab)
    check_complete(final)
    expected = workers.expected(done)
    expected[marker(b"a")] = rounds
    assert counts(final) == expected
    assert final.lines == len(expected)  # canonical: one line per entry


@pytest.mark.slow
def test_two_rewriters_and_mountd_writers_lose_nothing(statedir: Path) -> None:
    rmtab = statedir / "rmtab"
    rounds = 10
    workers = Workers(statedir, 2, gap=0.001)
    try:
        rewriters = []
        for name in (b"x", b"y"):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    for i in range(1, rounds + 1):
                        rewrite_file(
                            rmtab, rewriter_build(name, i), mountd_statedir=statedir, timeout=30
                        )
                    code = 0
                finally:
                    os._exit(code)
            rewriters.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in rewriters]
    finally:
        done = workers.finish()
    assert codes == [0, 0]

    expected = workers.expected(done)
    expected[marker(b"x")] = rounds
    expected[marker(b"y")] = rounds
    assert counts(read_table(rmtab)) == expected


def _umnt_with_late_tail(statedir: Path, gap: float) -> subprocess.Popen[bytes]:
    """Start a UMNT that renames rmtab.tmp into place and writes its tail ``gap`` later;
    return once the rename has happened (the file is then visibly incomplete)."""
    rmtab = statedir / "rmtab"
    rmtab.write_bytes(b"10.9.9.9:/srv/gone:0x00000001\n" + STATIC_BYTES)
    old_ino = os.stat(rmtab).st_ino
    proc = subprocess.Popen(
        command("umnt", str(statedir), "10.9.9.9", "/srv/gone", "--gap", str(gap))
    )
    deadline = time.monotonic() + 30
    while os.stat(rmtab).st_ino == old_ino:
        assert time.monotonic() < deadline, "the UMNT never renamed its temp file"
        time.sleep(0.001)
    return proc


def test_reads_never_see_a_file_mountd_renamed_but_has_not_finished(statedir: Path) -> None:
    rmtab = statedir / "rmtab"
    proc = _umnt_with_late_tail(statedir, gap=1.0)
    try:
        torn = read_bytes(rmtab.read_bytes())  # what a naive reader sees right now
        result, _ = read_snapshot(rmtab, mountd_statedir=statedir, timeout=30)
    finally:
        proc.wait(timeout=30)
    assert torn.bytes_read < len(STATIC_BYTES)  # the hazard is real...
    check_complete(result)  # ...and the consistent read waited it out
    assert counts(result).get((b"10.9.9.9", b"/srv/gone")) is None


def test_rewrite_started_in_mountds_rename_window_folds_in_the_whole_file(statedir: Path) -> None:
    rmtab = statedir / "rmtab"
    proc = _umnt_with_late_tail(statedir, gap=0.3)
    try:
        report = rewrite_file(rmtab, rewriter_build(b"a", 1), mountd_statedir=statedir, timeout=30)
    finally:
        proc.wait(timeout=30)
    assert report.rereads >= 1  # the torn snapshot was not trusted
    final = read_table(rmtab)
    check_complete(final)
    expected = {e.key: e.count for e in STATIC}
    expected[marker(b"a")] = 1
    assert counts(final) == expected


GONE = b"10.9.9.9:/srv/gone:0x00000001\n"


def torn_by_umnt(static: bytes) -> bytes:
    """``GONE`` + a filler line + ``static``, the filler sized so that once a UMNT of
    GONE has written only its whole 4096-byte stdio buffers (mountd_like, like
    mountd), the file ends inside a client name: a piece with no colon, a line
    rmtabtool rejects."""
    for pad in range(64):
        filler = b"10.0.0.1:/srv/" + b"p" * pad + b":0x00000001\n"
        after = filler + static
        torn = after[: len(after) - len(after) % 4096]
        last = torn[torn.rfind(b"\n") + 1 :]
        if last and b":" not in last:
            return GONE + after
    raise AssertionError("no filler puts the cut inside a client name")


@contextmanager
def umnt_held_in_its_window(statedir: Path) -> Iterator[Callable[[], None]]:
    """A mountd-like UMNT of GONE, stopped between its rename of rmtab.tmp into
    place and the write of its last stdio buffer (holding mountd's lock). Yields
    ``release``, which lets it finish; it must then succeed."""
    proc = subprocess.Popen(
        command("umnt", str(statedir), "10.9.9.9", "/srv/gone", "--hold"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None
    assert stdout is not None

    def release() -> None:
        if not stdin.closed:
            stdin.close()  # only now may the UMNT write its tail

    try:
        assert stdout.readline() == b"renamed\n"
        yield release
    finally:
        release()
        proc.wait(timeout=60)
        stdout.close()
    assert proc.returncode == 0


def test_strict_refusal_is_decided_on_a_complete_file_not_on_mountds_rename_window(
    statedir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mountd's UMNT renames rmtab.tmp into place BEFORE writing its last buffer. A
    --strict rewrite that reads the file in that window sees a cut last line; it
    must not refuse (exit 65) on that read but on one confirmed complete, like a
    pure read's (under the shared lock, which mountd holds until it has written).

    Deterministic: the UMNT holds the window open until this test's first read of
    the file has happened (no sleeps, no timing)."""
    rmtab = statedir / "rmtab"
    rmtab.write_bytes(torn_by_umnt(STATIC_BYTES * 2))  # twice: dedupe has work to do
    reads: list[Optional[ReadResult]] = []
    real_read_once = sf._read_once

    with umnt_held_in_its_window(statedir) as release:

        def read_then_let_mountd_finish(
            path: Path, *, settle: bool = False, reading: sf._Reading = sf._PLAIN
        ) -> Optional[sf._Snapshot]:
            snap = real_read_once(path, settle=settle, reading=reading)
            reads.append(snap.result if snap is not None else None)
            release()
            return snap

        assert read_bytes(rmtab.read_bytes()).rejected  # the hazard is real
        monkeypatch.setattr(sf, "_read_once", read_then_let_mountd_finish)
        result = operations.dedupe(rmtab, operations.Live(rmtab, lock_timeout=60), strict=True)
    first = reads[0]
    assert first is not None
    assert first.rejected, "the rewrite's first read was not the torn one"
    assert result.rejected == 0
    assert result.changed
    final = read_table(rmtab)
    check_complete(final)
    assert (b"10.9.9.9", b"/srv/gone") not in counts(final)
    assert not Path(f"{rmtab}.rejects").exists()


FLAP = Entry(b"10.8.8.8", b"/srv/flap", 1)


def torn_at_a_line_end(static: bytes, last: bytes) -> bytes:
    """``GONE`` + a filler line + ``static`` + ``last``, the filler sized so that
    once a UMNT of GONE has written only its whole 4096-byte stdio buffers, the
    file ends exactly at a line end, before ``last``: a torn file that is still a
    clean, canonical rmtab."""
    for pad in range(128):
        filler = b"10.0.0.1:/srv/" + b"p" * pad + b":0x00000001\n"
        after = filler + static + last
        cut = len(after) - len(after) % 4096
        if after[cut - 1 : cut] == b"\n" and cut <= len(after) - len(last):
            return GONE + after
    raise AssertionError("no filler puts the cut at a line end")


def test_a_no_op_is_decided_on_a_complete_file_not_on_mountds_rename_window(
    statedir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torn read that ends at a line end is a clean rmtab: ``forget`` of an entry
    in the missing tail finds nothing to do, and the file as it is at that moment
    holds exactly that. Deciding "unchanged" there reported success with the entry
    still in the file (seen in CI, with the real rpc.mountd). The no-op must be
    confirmed like a pure read: under the shared lock, which mountd holds until it
    has written its last buffer.

    Deterministic: the UMNT holds its window open until rmtabtool first asks for
    mountd's lock (shared or exclusive); without that request the test fails."""
    rmtab = statedir / "rmtab"
    rmtab.write_bytes(torn_at_a_line_end(STATIC_BYTES, format_entry(FLAP)))
    real_acquire = MountdLock.acquire

    with umnt_held_in_its_window(statedir) as release:

        def let_mountd_finish_first(lock: MountdLock) -> None:
            release()
            real_acquire(lock)

        torn = read_table(rmtab)
        assert not torn.rejected  # the torn file is clean...
        assert not torn.missing_final_newline
        assert FLAP.key not in counts(torn)  # ...and lacks the entry to forget
        monkeypatch.setattr(MountdLock, "acquire", let_mountd_finish_first)
        result = operations.forget(operations.Live(rmtab, lock_timeout=60), clients=[b"10.8.8.8"])
    assert result.changed
    assert [e.key for e in result.removed] == [FLAP.key]
    final = read_table(rmtab)
    check_complete(final)
    assert FLAP.key not in counts(final)
    assert (b"10.9.9.9", b"/srv/gone") not in counts(final)

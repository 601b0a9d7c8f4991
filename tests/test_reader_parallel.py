"""read_table's fast paths give the same figures as the plain specification.

Two things are checked against a naive reader (split the whole file, parse every
line, first-seen order) and against each other:

* the repeat path (anchor lines, remembered segments, predictions checked in
  place), driven through small inputs by lowering the reader's thresholds;
* the parallel path (``jobs`` > 1: the file split at line starts across forked
  workers, partial results merged in order): identical to ``jobs=1`` on
  generated seed-like files, with every malformed line the generator makes, on
  lines that straddle the split points, and on a missing final newline.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reader_oracle import figures
from reader_oracle import naive_read as naive
from scripts import load_script

from rmtabtool import ReadResult
from rmtabtool import table as table_mod
from rmtabtool.table import PARALLEL_THRESHOLD, auto_jobs, read_table

ROOT = Path(__file__).resolve().parent.parent
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORK = "fork" in __import__("multiprocessing").get_all_start_methods()
needs_fork = pytest.mark.skipif(not FORK, reason="no fork start method [ci-ok]")


generate = load_script("benchmarks/generate.py", "rmtab_generate")


def generated(size: int, seed: int) -> bytes:
    out = io.BytesIO()
    generate.generate(out, size, seed)
    return out.getvalue()


# ---------------------------------------------------------------- the specification


#: thresholds small enough that a few-KB input takes the repeat path
EAGER = {
    "SAMPLE_LINES": 8,
    "SEGMENT_TARGET": 96,
    "SEGMENT_MIN": 8,
    "SEGMENT_WAIT": 512,
    "CHECK_BYTES": 4096,
    "CHECK_SEGMENTS": 64,
    "RETRY_BLOCKS": 2,
    "PREFIX": 12,
}


@contextmanager
def eager_repeats() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in EAGER.items():
            assert hasattr(table_mod._Reader, name), name
            mp.setattr(table_mod._Reader, name, value)
        yield


# ---------------------------------------------------------------- inputs

BLOCK = [
    b"10.0.0.1:/srv/a:0x00000001",
    b"10.0.0.2:/srv/a:0x00000002",
    b"fe80;;1%eth0:/srv/b:0x00000001",
    b"host.example:/srv/\xe9t\xe9:0x00000001",
    b"10.0.0.3:/srv/a/sub:0x00000001",
    b"10.0.0.1:/srv/a:0x00000003",
]
MALFORMED = [
    b"",  # blank: mountd stops here
    b"#10.0.0.9:/srv/a:0x00000001",
    b"10.0.0.7:/srv/b:0x1",
    b"10.0.0.8:/srv/a:0x0000010.0.0.2:/srv/a:0x00000001",  # glued
    b"garbage",
    b"h:/" + b"x" * 2043,  # exactly MAX_LINE with its newline: a lone-newline piece
]
line_st = st.sampled_from(BLOCK + MALFORMED)


@st.composite
def bloated(draw: st.DrawFn) -> bytes:
    """A base of lines, doubled by restores with edits in between, maybe torn at the end."""
    lines = draw(st.lists(line_st, min_size=1, max_size=12))
    for _ in range(draw(st.integers(0, 6))):
        extra = draw(st.lists(line_st, max_size=3))
        at = draw(st.integers(0, len(lines)))
        lines = lines[:at] + extra + lines[at:] + lines  # edit, then cat backup >> rmtab
    data = b"".join(line + b"\n" for line in lines)
    cut = draw(st.integers(0, 40))
    if cut and len(data) > cut:
        data = data[:-cut]
    return data


# ---------------------------------------------------------------- the repeat path


@PROPS
@given(bloated(), st.sampled_from([7, 64, 300, 4096]))
@example(b"a:/p\n" * 50 + b"b:/q\n" * 50 + b"\n" + b"a:/p\n" * 50, 64)
@example((b"a:/p\nb:/q\n#c:/r\n" * 40)[:-3], 33)
def test_repeat_path_reports_what_the_naive_reader_does(data: bytes, chunk_size: int) -> None:
    with eager_repeats():
        got = read_table(io.BytesIO(data), chunk_size=chunk_size)
    assert figures(got) == figures(naive(data))


def test_repeat_path_is_taken_on_a_generated_file() -> None:
    """Guard against a silently dead fast path: it must carry most of the bytes."""
    data = generated(4 * 1024 * 1024, seed=5)
    reader = table_mod._Reader()
    total = reader.consume(io.BytesIO(data).read, table_mod.CHUNK_SIZE)
    assert total == len(data)
    assert reader.repeat_bytes > len(data) // 2
    assert figures(reader.finish(total)) == figures(naive(data))


@pytest.mark.parametrize("chunk_size", [4096, 65536])
def test_eager_repeat_path_on_a_generated_file(chunk_size: int) -> None:
    data = generated(256 * 1024, seed=5)
    with eager_repeats():
        got = read_table(io.BytesIO(data), chunk_size=chunk_size)
    assert figures(got) == figures(naive(data))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_default_reader_on_generated_files_equals_the_naive_reader(seed: int) -> None:
    data = generated(3 * 1024 * 1024 + seed, seed)
    assert figures(read_table(io.BytesIO(data))) == figures(naive(data))


# ---------------------------------------------------------------- the parallel path


def write(tmp_path: Path, data: bytes, name: str = "rmtab") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def parallel_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the ``jobs`` of every parallel read from now on: proof that the
    parallel path really ran."""
    calls: list[int] = []
    real = table_mod._read_parallel

    def spy(fd: int, start: int, stop: int, jobs: int, chunk_size: int) -> ReadResult:
        calls.append(jobs)
        return real(fd, start, stop, jobs, chunk_size)

    monkeypatch.setattr(table_mod, "_read_parallel", spy)
    return calls


@needs_fork
@pytest.mark.parametrize(("size", "seed"), [(2 * 1024 * 1024, 1), (5 * 1024 * 1024 + 17, 2)])
def test_jobs_give_identical_results_on_generated_files(
    tmp_path: Path, size: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = parallel_reads(monkeypatch)
    data = generated(size, seed)
    path = write(tmp_path, data)
    one = read_table(path)
    assert figures(one) == figures(naive(data))
    # the generator's malformed lines are all there, and torn at the end
    reasons = {r.reason.value for r in one.rejected}
    assert {"blank", "comment", "bad-count"} <= reasons
    assert one.missing_final_newline
    for jobs in (2, 3, 4):
        assert figures(read_table(path, jobs=jobs)) == figures(one), jobs
    assert calls == [2, 3, 4], "the parallel path really ran"


@needs_fork
@PROPS
@given(bloated(), st.integers(2, 5))
def test_jobs_equal_one_job_wherever_the_splits_fall(data: bytes, jobs: int) -> None:
    fd_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rmtab-par-{os.getpid()}"
    try:
        fd_path.write_bytes(data)
        assert figures(read_table(fd_path, jobs=jobs)) == figures(naive(data))
    finally:
        fd_path.unlink()


@needs_fork
@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2])
def test_a_line_straddling_the_split_point_is_read_once(tmp_path: Path, offset: int) -> None:
    """The midpoint falls just before, on, and just after a line start."""
    head = b"10.0.0.1:/srv/a:0x00000001\n" * 2000
    middle = b"#10.0.0.9:/srv/a:0x00000001\n"
    tail = b"10.0.0.2:/srv/a:0x00000001\n" * 2000 + b"10.0.0.3:/srv/a"
    # a filler line sized so that the 2-way midpoint is ``offset`` bytes into ``middle``
    filler = len(middle) + len(tail) - len(head) - 2 * offset - len(b"10.0.0.4:/srv/:0x00000001\n")
    data = head + b"10.0.0.4:/srv/" + b"p" * filler + b":0x00000001\n" + middle + tail
    assert len(data) // 2 - len(head + b"10.0.0.4:/srv/:0x00000001\n") - filler == offset
    path = write(tmp_path, data)
    with open(path, "rb") as f:
        ranges = table_mod._split(f.fileno(), 0, len(data), 2)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == len(data)
    assert ranges[0][1] == ranges[1][0]
    assert data[ranges[1][0] - 1 : ranges[1][0]] == b"\n"
    assert figures(read_table(path, jobs=2)) == figures(naive(data))


@needs_fork
def test_a_line_longer_than_the_search_window_straddles_the_split(tmp_path: Path) -> None:
    huge = b"h:/" + b"y" * 300_000 + b":0x00000001\n"  # rejected: path too long
    data = b"a:/p:0x00000001\n" * 10 + huge + b"b:/q:0x00000001\n" * 10 + huge
    path = write(tmp_path, data)
    for jobs in (2, 3, 7):
        assert figures(read_table(path, jobs=jobs)) == figures(naive(data))


@needs_fork
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"a",
        b"\n",
        b"a:/p:0x00000001\n",
        b"a:/p:0x00000001\nb:/q",
        b"\n\n\n",
        b"a:/p\n" * 3 + b"a:/p",
    ],
)
def test_tiny_files_with_many_jobs(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, data)
    for jobs in (2, 5, 16):
        assert figures(read_table(path, jobs=jobs)) == figures(naive(data))


@needs_fork
def test_a_file_object_is_read_from_its_position_to_the_end(tmp_path: Path) -> None:
    data = generated(1024 * 1024, seed=4)
    path = write(tmp_path, b"skipped:/x:0x00000001\n" + data)
    with open(path, "rb") as f:
        f.seek(len(b"skipped:/x:0x00000001\n"))
        got = read_table(f, jobs=2)
        assert f.tell() == len(data) + len(b"skipped:/x:0x00000001\n")
    assert figures(got) == figures(naive(data))


@needs_fork
def test_jobs_zero_is_automatic_and_pipes_are_read_by_one_process(tmp_path: Path) -> None:
    data = generated(256 * 1024, seed=6)
    path = write(tmp_path, data)
    assert figures(read_table(path, jobs=0)) == figures(naive(data))
    r, w = os.pipe()
    os.write(w, data[:60000])
    os.close(w)
    with open(r, "rb", buffering=0) as pipe:
        assert figures(read_table(pipe, jobs=2)) == figures(naive(data[:60000]))


@needs_fork
def test_a_failing_worker_fails_the_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = os.getpid()
    real = table_mod._read_range

    def flaky(fd: int, start: int, stop: int, chunk_size: int) -> Any:
        if os.getpid() != parent:
            raise OSError(5, "Input/output error")
        return real(fd, start, stop, chunk_size)

    monkeypatch.setattr(table_mod, "_read_range", flaky)
    path = write(tmp_path, b"a:/p:0x00000001\n" * 1000)
    with pytest.raises(OSError, match="Input/output error"):
        read_table(path, jobs=2)


@needs_fork
def test_a_worker_that_dies_fails_the_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = os.getpid()
    real = table_mod._read_range

    def dying(fd: int, start: int, stop: int, chunk_size: int) -> Any:
        if os.getpid() != parent:
            os._exit(3)
        return real(fd, start, stop, chunk_size)

    monkeypatch.setattr(table_mod, "_read_range", dying)
    path = write(tmp_path, b"a:/p:0x00000001\n" * 1000)
    with pytest.raises(OSError, match="died"):
        read_table(path, jobs=2)


@needs_fork
def test_other_threads_keep_the_read_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forking while another thread holds a lock could hang the child: no fork then."""

    def no_fork(*args: object) -> Any:
        raise AssertionError("forked with another thread running")

    data = generated(512 * 1024, seed=2)
    path = write(tmp_path, data)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        monkeypatch.setattr(table_mod, "_read_parallel", no_fork)
        assert figures(read_table(path, jobs=2)) == figures(naive(data))
    finally:
        stop.set()
        other.join()


def test_negative_jobs_are_refused() -> None:
    with pytest.raises(ValueError, match="jobs"):
        read_table(io.BytesIO(b""), jobs=-1)


def test_auto_jobs_uses_one_process_below_the_threshold() -> None:
    assert auto_jobs(0) == 1
    assert auto_jobs(PARALLEL_THRESHOLD - 1) == 1
    cpus = table_mod._cpus()
    assert auto_jobs(PARALLEL_THRESHOLD) == min(2, cpus)
    assert 1 <= auto_jobs(1 << 40) <= cpus


def test_auto_mode_reads_a_mostly_distinct_file_in_one_process(tmp_path: Path) -> None:
    distinct = write(
        tmp_path,
        b"".join(b"10.0.%d.%d:/srv/a:0x00000001\n" % divmod(i, 256) for i in range(20000)),
        "distinct",
    )
    bloated = write(tmp_path, generated(1024 * 1024, seed=1), "bloated")
    with open(distinct, "rb") as f:
        assert table_mod._mostly_distinct(f.fileno(), 0, distinct.stat().st_size)
    with open(bloated, "rb") as f:
        assert not table_mod._mostly_distinct(f.fileno(), 0, bloated.stat().st_size)


def test_results_pickle_small_for_bloated_files() -> None:
    """A worker sends back distinct lines, not lines: a few KB for a seed-like range."""
    import pickle

    data = generated(2 * 1024 * 1024, seed=1)
    reader = table_mod._Reader()
    reader.consume(io.BytesIO(data).read, 65536)
    assert len(pickle.dumps(reader.partial(len(data)))) < 64 * 1024


@needs_fork
def test_the_live_rmtab_is_read_and_rewritten_with_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stats`, `dedupe` and `dedupe --dry-run` of the live rmtab (read through
    the consistent-read path, not read_table(path)) honour `jobs`, with results
    identical to one process."""
    from rmtabtool import operations

    calls = parallel_reads(monkeypatch)
    data = generated(3 * 1024 * 1024, 3)  # over the 1 MiB read-into-memory size
    statedir = tmp_path / "nfs"
    statedir.mkdir()
    rmtab = write(statedir, data)
    live = operations.Live(rmtab, lock_timeout=10)

    one = operations.stats(None, live, jobs=1)
    two = operations.stats(None, live, jobs=2)
    assert calls == [2]
    assert two == one
    dry = operations.dedupe(None, live, dry_run=True, jobs=2)
    assert calls == [2, 2]
    assert dry.changed
    done = operations.dedupe(None, live, jobs=2)
    assert calls == [2, 2, 2]
    assert done.changed
    clean = operations.dedupe(str(write(tmp_path, data, "copy")), live, output=os.devnull)
    assert rmtab.read_bytes() == read_table(tmp_path / "copy").table.to_bytes()
    assert (done.entries_out, done.lines_in) == (clean.entries_out, clean.lines_in)

"""The commands as library functions: stats, dedupe, merge, backup, restore, forget.

Each function takes paths and options, does its work through the table,
safefile and locking modules, and returns a result record saying what changed.
Nothing here prints or exits: the CLI renders results and maps the exceptions
of :mod:`rmtabtool.errors` to exit codes.

Rejected lines: a command that rewrites a file IN PLACE removes that file's
rejected lines from it and appends them, byte-exact, to ``<file>.rejects`` (or
the ``rejects`` path given), each distinct line once, before the rename: if the
rename then fails, the original still holds them, so nothing is ever lost.
Read-only sources are never modified; their rejected lines are only reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

from . import errors
from ._record import FrozenRecord, Record
from .entry import Entry
from .safefile import (
    CountingReader,
    FileState,
    ReadProgress,
    RewriteReport,
    is_same_file,
    open_append,
    read_snapshot,
    rewrite_file,
)
from .table import ReadResult, RejectedLine, Table, auto_jobs, path_in_export, read_table

__all__ = [
    "DEFAULT_RMTAB",
    "RMTAB_ENV",
    "Live",
    "StatsResult",
    "WriteResult",
    "backup",
    "dedupe",
    "forget",
    "merge",
    "restore",
    "stats",
]

DEFAULT_RMTAB = "/var/lib/nfs/rmtab"
RMTAB_ENV = "RMTABTOOL_RMTAB"
STDIO = "-"

PathArg = Union[str, "os.PathLike[str]"]
#: progress(name, bytes_done, bytes_total): called while an input is read
Progress = Callable[[str, int, int], None]


def _named(name: str, progress: Optional[Progress]) -> Optional[ReadProgress]:
    """The library's ``progress(done, total)`` for one file, reported under ``name``."""
    if progress is None:
        return None
    tell = progress
    return lambda done, total: tell(name, done, total)


class Live(FrozenRecord):
    """The live rmtab as configured: rpc.mountd's statedir is its directory.

    The statedir is taken from the path as given (where mountd looks), not from
    a symlink's target, because that is where mountd's ``.rmtab.lock`` lives.
    """

    __slots__ = ("path", "lock_timeout")

    path: Path
    lock_timeout: float

    def __init__(self, path: Path, lock_timeout: float = 10.0) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "lock_timeout", lock_timeout)

    @classmethod
    def from_env(cls, path: Optional[PathArg] = None, lock_timeout: float = 10.0) -> Live:
        chosen = path if path is not None else os.environ.get(RMTAB_ENV) or DEFAULT_RMTAB
        return cls(Path(os.path.abspath(os.fspath(chosen))), lock_timeout)

    @property
    def statedir(self) -> Path:
        return self.path.parent

    def statedir_for(self, target: PathArg) -> Optional[Path]:
        """mountd's statedir when ``target`` is the live rmtab, else None."""
        target_abs = os.path.abspath(os.fspath(target))
        if target_abs == os.fspath(self.path) or is_same_file(target_abs, self.path):
            return self.statedir
        return None


# ---------------------------------------------------------------- results


class WriteResult(Record):
    """What a writing command did (or, under dry_run, would do)."""

    __slots__ = (
        "command",
        "file",
        "changed",
        "dry_run",
        "created",
        "lines_in",
        "entries_out",
        "duplicates_removed",
        "zero_dropped",
        "rejected",
        "rejected_moved",
        "rejects_file",
        "rejected_lines",
        "removed",
        "ignored_outside_export",
        "lock_wait_seconds",
        "lock_hold_seconds",
        "skipped",
        "warnings",
        "content",
    )

    def __init__(
        self,
        command: str,
        file: str,
        changed: bool = False,
        dry_run: bool = False,
        created: bool = False,
        lines_in: int = 0,
        entries_out: int = 0,
        duplicates_removed: int = 0,
        zero_dropped: int = 0,
        rejected: int = 0,
        rejected_moved: int = 0,
        rejects_file: Optional[str] = None,
        rejected_lines: Optional[list[RejectedLine]] = None,
        removed: Optional[list[Entry]] = None,
        ignored_outside_export: int = 0,
        lock_wait_seconds: float = 0.0,
        lock_hold_seconds: float = 0.0,
        skipped: Optional[str] = None,
        warnings: Optional[list[str]] = None,
        content: Optional[Iterable[bytes]] = None,
    ) -> None:
        self.command = command
        self.file = file
        self.changed = changed
        self.dry_run = dry_run
        self.created = created
        self.lines_in = lines_in
        self.entries_out = entries_out
        self.duplicates_removed = duplicates_removed
        self.zero_dropped = zero_dropped
        #: rejected lines read (occurrences), from every input
        self.rejected = rejected
        #: of those, the ones removed from the rewritten file and kept in ``rejects_file``
        self.rejected_moved = rejected_moved
        self.rejects_file = rejects_file
        self.rejected_lines: list[RejectedLine] = [] if rejected_lines is None else rejected_lines
        self.removed: list[Entry] = [] if removed is None else removed
        self.ignored_outside_export = ignored_outside_export
        self.lock_wait_seconds = lock_wait_seconds
        self.lock_hold_seconds = lock_hold_seconds
        self.skipped = skipped
        self.warnings: list[str] = [] if warnings is None else warnings
        #: canonical lines, when the output is a stream the caller writes (``-o -``)
        self.content = content

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "file": show_path(self.file),
            "changed": self.changed,
            "dry_run": self.dry_run,
            "created": self.created,
            "lines_in": self.lines_in,
            "entries_out": self.entries_out,
            "duplicates_removed": self.duplicates_removed,
            "zero_dropped": self.zero_dropped,
            "rejected": self.rejected,
            "rejected_moved": self.rejected_moved,
            "rejected_by_reason": _by_reason(self.rejected_lines),
            "rejects_file": show_path(self.rejects_file) if self.rejects_file else None,
            "removed": [_entry_json(e) for e in self.removed],
            "ignored_outside_export": self.ignored_outside_export,
            "lock_wait_seconds": round(self.lock_wait_seconds, 6),
            "lock_hold_seconds": round(self.lock_hold_seconds, 6),
            "skipped": self.skipped,
            "warnings": list(self.warnings),
        }


class PathStats(Record):
    """One exported path in :class:`StatsResult`: how many clients, how many mounts."""

    __slots__ = ("path", "clients", "mounts")

    def __init__(self, path: bytes, clients: int, mounts: int) -> None:
        self.path = path
        self.clients = clients
        self.mounts = mounts


class ClientStats(Record):
    """One client in :class:`StatsResult`: how many paths, how many mounts."""

    __slots__ = ("client", "paths", "mounts")

    def __init__(self, client: bytes, paths: int, mounts: int) -> None:
        self.client = client
        self.paths = paths
        self.mounts = mounts


class StatsResult(Record):
    """What :func:`stats` found in one file (see the CLI's ``stats --json`` keys)."""

    __slots__ = (
        "file",
        "bytes",
        "lines",
        "entries",
        "duplicate_lines",
        "bloat",
        "rejected",
        "rejected_by_reason",
        "rejected_lines",
        "mountd_stops_at_line",
        "mountd_hidden_lines",
        "zero_count_entries",
        "clients",
        "paths",
        "top_clients",
        "size_after_dedupe",
        "missing_final_newline",
    )

    def __init__(
        self,
        file: str,
        bytes: int,
        lines: int,
        entries: int,
        duplicate_lines: int,
        bloat: float,
        rejected: int,
        rejected_by_reason: dict[str, int],
        rejected_lines: list[RejectedLine],
        mountd_stops_at_line: Optional[int],
        mountd_hidden_lines: int,
        zero_count_entries: int,
        clients: int,
        paths: list[PathStats],
        top_clients: list[ClientStats],
        size_after_dedupe: int,
        missing_final_newline: bool,
    ) -> None:
        self.file = file
        self.bytes = bytes
        self.lines = lines
        self.entries = entries
        self.duplicate_lines = duplicate_lines
        self.bloat = bloat
        self.rejected = rejected
        self.rejected_by_reason = rejected_by_reason
        self.rejected_lines = rejected_lines
        self.mountd_stops_at_line = mountd_stops_at_line
        self.mountd_hidden_lines = mountd_hidden_lines
        self.zero_count_entries = zero_count_entries
        self.clients = clients
        self.paths = paths
        self.top_clients = top_clients
        self.size_after_dedupe = size_after_dedupe
        self.missing_final_newline = missing_final_newline

    def to_json(self) -> dict[str, Any]:
        return {
            "file": show_path(self.file),
            "bytes": self.bytes,
            "lines": self.lines,
            "entries": self.entries,
            "duplicate_lines": self.duplicate_lines,
            "bloat": round(self.bloat, 4),
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "mountd_stops_at_line": self.mountd_stops_at_line,
            "mountd_hidden_lines": self.mountd_hidden_lines,
            "zero_count_entries": self.zero_count_entries,
            "clients": self.clients,
            "paths": [
                {"path": show_bytes(p.path), "clients": p.clients, "mounts": p.mounts}
                for p in self.paths
            ],
            "top_clients": [
                {"client": show_bytes(c.client), "paths": c.paths, "mounts": c.mounts}
                for c in self.top_clients
            ],
            "size_after_dedupe": self.size_after_dedupe,
            "missing_final_newline": self.missing_final_newline,
        }


def show_bytes(data: bytes) -> str:
    """Text for a client or path: UTF-8 where it is, undecodable bytes as \\xNN."""
    return data.decode("utf-8", "backslashreplace")


def show_path(name: str) -> str:
    """Text for a file name (as ``os.fsdecode`` gives it): undecodable bytes as \\xNN.

    A name that is not UTF-8 comes back from the OS with lone surrogates, which
    JSON encoders and strict terminals refuse or mangle.
    """
    try:
        return show_bytes(os.fsencode(name))
    except UnicodeError:  # a lone surrogate fsdecode never produces
        return name.encode("utf-8", "backslashreplace").decode("ascii")


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "client": show_bytes(entry.client),
        "path": show_bytes(entry.path),
        "count": entry.count,
    }


def _by_reason(rejected: Iterable[RejectedLine]) -> dict[str, int]:
    result: dict[str, int] = {}
    for rej in rejected:
        result[rej.reason.value] = result.get(rej.reason.value, 0) + rej.occurrences
    return result


# ---------------------------------------------------------------- reading


def _read_source(
    source: PathArg,
    live: Live,
    *,
    stdin: Optional[BinaryIO] = None,
    jobs: int = 1,
    progress: Optional[Progress] = None,
) -> ReadResult:
    """Read an input file (``-`` is stdin); the live rmtab is read consistently."""
    name = os.fspath(source)
    if name == STDIO:
        if stdin is None:
            raise errors.UsageError("'-' (standard input) is not available here")
        try:
            return read_table(stdin)
        except OSError as exc:
            raise errors.from_oserror(exc, "<stdin>", "read", reading=True) from exc
    statedir = live.statedir_for(name)
    if statedir is not None:
        _check_regular_input(name)
        result, _state = read_snapshot(
            name,
            mountd_statedir=statedir,
            timeout=live.lock_timeout,
            progress=_named(name, progress),
            jobs=jobs,
        )
        return result
    # an explicit source may be a pipe (`merge <(ssh node2 cat rmtab)`); never a device
    stream = _open_input(name, streams_ok=True)
    try:
        st = os.fstat(stream.fileno())
        parallel = jobs > 1 or (jobs == 0 and auto_jobs(st.st_size) > 1)
        if parallel and stat.S_ISREG(st.st_mode):
            if progress is not None:
                progress(name, 0, st.st_size)
            result = read_table(name, jobs=jobs)
            if progress is not None:
                progress(name, st.st_size, st.st_size)
            return result
        named = _named(name, progress)
        if named is not None:
            named(0, st.st_size)
            return read_table(CountingReader(stream, st.st_size, named))  # type: ignore[arg-type]
        return read_table(stream)
    except OSError as exc:
        raise errors.from_oserror(exc, name, "read", reading=True) from exc
    finally:
        stream.close()


def _check_regular_input(name: str, *, streams_ok: bool = False) -> None:
    """Refuse (exit 66) a missing input, a directory, a device, and unless
    ``streams_ok`` a FIFO: a planted FIFO would hang a resource agent's start,
    a link to /dev/zero would read one endless line."""
    try:
        st = os.stat(name)
    except OSError as exc:
        raise errors.from_oserror(exc, name, "read", reading=True) from exc
    _check_mode(name, st.st_mode, streams_ok=streams_ok)


def _check_mode(name: str, mode: int, *, streams_ok: bool) -> None:
    if stat.S_ISDIR(mode):
        raise errors.InputMissing(f"cannot read {name}: it is a directory, not an rmtab file")
    if not (stat.S_ISREG(mode) or (streams_ok and stat.S_ISFIFO(mode))):
        raise errors.InputMissing(f"cannot read {name}: not a regular file")


def _open_input(name: str, *, streams_ok: bool = False) -> BinaryIO:
    """Open an input without blocking on a FIFO swapped in after a check."""
    _check_regular_input(name, streams_ok=streams_ok)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise errors.from_oserror(exc, name, "read", reading=True) from exc
    try:
        _check_mode(name, os.fstat(fd).st_mode, streams_ok=streams_ok)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering=0)


def _strict_check(strict: bool, results: Iterable[tuple[str, Optional[ReadResult]]]) -> None:
    if not strict:
        return
    for name, result in results:
        if result is not None and result.rejected:
            first = result.rejected[0]
            raise errors.RejectedLinesError(
                f"{name}: {result.rejected_lines} rejected line(s), first at line "
                f"{first.first_line} ({first.reason.description}); nothing written (--strict)"
            )


def _drop_zero(table: Table) -> tuple[Table, int]:
    kept = table.filter(e.count != 0 for e in table)
    return kept, len(table) - len(kept)


def _rejects_path(target: Path, rejects: Optional[PathArg]) -> Path:
    return Path(os.fspath(rejects)) if rejects is not None else Path(f"{target}.rejects")


def append_rejects(path: Path, rejected: Sequence[RejectedLine]) -> None:
    """Append each distinct rejected line once, byte-exact, newline-terminated; fsync.

    ``path`` is opened like any output (:func:`~rmtabtool.safefile.open_append`).
    """
    if not rejected:
        return
    data = b"".join(r.line + b"\n" for r in rejected)
    # links by other users, FIFOs, devices and foreign hard links are refused
    fd, path = open_append(path)
    start = -1
    try:
        start = os.fstat(fd).st_size
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError as exc:
        # never leave a torn last line: the next append would glue onto it
        if start >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
        raise errors.from_oserror(exc, path, "write rejects file") from exc
    finally:
        os.close(fd)


# ---------------------------------------------------------------- rewriting


class _Plan(Record):
    """The outcome of one build over one snapshot, kept for the result record."""

    __slots__ = ("table", "lines_in", "merged_entries", "zero_dropped", "removed", "own_rejected")

    def __init__(self) -> None:
        self.table = Table()
        self.lines_in = 0
        self.merged_entries = 0
        self.zero_dropped = 0
        self.removed: list[Entry] = []
        self.own_rejected: list[RejectedLine] = []


def _rewrite_in_place(
    command: str,
    target: PathArg,
    live: Live,
    compose: Callable[[Optional[ReadResult], _Plan], Table],
    *,
    dry_run: bool,
    strict: bool,
    rejects: Optional[PathArg],
    source_rejected: Sequence[RejectedLine] = (),
    progress: Optional[Progress] = None,
    jobs: int = 1,
) -> tuple[WriteResult, _Plan]:
    """Rewrite ``target`` from its own snapshot via ``compose``, safely.

    ``compose(snapshot, plan)`` returns the new table and fills ``plan``; it may be
    called again when rpc.mountd changed the file under us.
    """
    target_path = Path(os.path.abspath(os.fspath(target)))
    statedir = live.statedir_for(target_path)
    plan_box: list[_Plan] = []

    def build(snapshot: Optional[ReadResult]) -> Iterator[bytes]:
        _strict_check(strict, [(os.fspath(target_path), snapshot)])
        plan = _Plan()
        if snapshot is not None:
            plan.own_rejected = list(snapshot.rejected)
        plan.table = compose(snapshot, plan)
        plan_box[:] = [plan]
        return plan.table.lines()

    rejects_path = _rejects_path(target_path, rejects)

    def before_commit(snapshot: Optional[ReadResult]) -> None:
        if snapshot is not None:
            append_rejects(rejects_path, snapshot.rejected)

    report: RewriteReport = rewrite_file(
        target_path,
        build,
        mountd_statedir=statedir,
        timeout=live.lock_timeout,
        dry_run=dry_run,
        before_commit=before_commit,
        progress=_named(os.fspath(target_path), progress),
        jobs=jobs,
    )
    plan = plan_box[-1]
    own = plan.own_rejected
    result = WriteResult(
        command=command,
        file=os.fspath(target_path),
        changed=report.changed,
        dry_run=dry_run,
        created=report.created,
        lines_in=plan.lines_in,
        entries_out=len(plan.table),
        duplicates_removed=max(
            plan.lines_in - _count_rejected(own, source_rejected) - plan.merged_entries, 0
        ),
        zero_dropped=plan.zero_dropped,
        rejected=_count_rejected(own, source_rejected),
        rejected_moved=_count_rejected(own),
        rejects_file=os.fspath(rejects_path) if own else None,
        rejected_lines=list(own) + list(source_rejected),
        removed=plan.removed,
        lock_wait_seconds=report.lock_wait_seconds,
        lock_hold_seconds=report.lock_hold_seconds,
    )
    return result, plan


def _count_rejected(*groups: Iterable[RejectedLine]) -> int:
    return sum(r.occurrences for group in groups for r in group)


def write_device(path: PathArg, chunks: Iterable[bytes]) -> None:
    """Write straight to a character device such as /dev/null (benchmarks, dry
    checks): there is nothing to replace atomically, and no temp or lock file
    belongs in /dev."""
    try:
        with open(path, "wb") as sink:
            sink.writelines(chunks)
    except OSError as exc:
        raise errors.from_oserror(exc, path, "write") from exc


def _write_output(
    command: str,
    output: PathArg,
    table: Table,
    live: Live,
    *,
    dry_run: bool,
) -> WriteResult:
    """Write ``table`` to ``output`` (a file, atomically; ``-``: returned as content)."""
    name = os.fspath(output)
    if name == STDIO:
        return WriteResult(
            command=command,
            file=STDIO,
            changed=True,
            dry_run=dry_run,
            content=None if dry_run else table.lines(),
        )
    out_path = Path(os.path.abspath(name))
    if out_path.is_dir():
        raise errors.OutputError(f"cannot write {name}: it is a directory")
    if out_path.is_char_device():
        if not dry_run:
            write_device(out_path, table.lines())
        return WriteResult(command=command, file=os.fspath(out_path), changed=True, dry_run=dry_run)
    report = rewrite_file(
        out_path,
        lambda _snapshot: table.lines(),
        mountd_statedir=live.statedir_for(out_path),
        timeout=live.lock_timeout,
        dry_run=dry_run,
    )
    return WriteResult(
        command=command,
        file=os.fspath(out_path),
        changed=report.changed,
        dry_run=dry_run,
        created=report.created,
        lock_wait_seconds=report.lock_wait_seconds,
        lock_hold_seconds=report.lock_hold_seconds,
    )


# ---------------------------------------------------------------- commands


def stats(
    source: Optional[PathArg],
    live: Live,
    *,
    stdin: Optional[BinaryIO] = None,
    top: int = 10,
    jobs: int = 1,
    progress: Optional[Progress] = None,
) -> StatsResult:
    """Describe an rmtab (default: the live one) without changing anything."""
    name = os.fspath(source) if source is not None else os.fspath(live.path)
    result = _read_source(name, live, stdin=stdin, jobs=jobs, progress=progress)
    table = result.table
    counts = table.counts()
    # (entries, mounts) per path and per client; plain dicts of ints: this loop
    # runs once per distinct entry (millions on an all-distinct file)
    path_entries: dict[bytes, int] = {}
    path_mounts: dict[bytes, int] = {}
    client_entries: dict[bytes, int] = {}
    client_mounts: dict[bytes, int] = {}
    zero = 0
    size_after = 13 * len(counts)  # ':' + ':0x' + 8 digits + '\n' per line
    for (client, path), count in counts.items():
        size_after += len(client) + len(path)
        if not count:
            zero += 1
        path_entries[path] = path_entries.get(path, 0) + 1
        path_mounts[path] = path_mounts.get(path, 0) + count
        client_entries[client] = client_entries.get(client, 0) + 1
        client_mounts[client] = client_mounts.get(client, 0) + count
    paths = [PathStats(p, path_entries[p], path_mounts[p]) for p in sorted(path_entries)]
    busiest = heapq.nsmallest(
        top, client_entries, key=lambda c: (-client_mounts[c], -client_entries[c], c)
    )
    top_clients = [ClientStats(c, client_entries[c], client_mounts[c]) for c in busiest]
    stop = result.mountd_stops_at_line
    return StatsResult(
        file=name,
        bytes=result.bytes_read,
        lines=result.lines,
        entries=len(table),
        duplicate_lines=result.duplicate_lines,
        bloat=result.lines / max(len(table), 1),
        rejected=result.rejected_lines,
        rejected_by_reason=result.rejected_by_reason(),
        rejected_lines=list(result.rejected),
        mountd_stops_at_line=stop,
        mountd_hidden_lines=0 if stop is None else result.lines - stop,
        zero_count_entries=zero,
        clients=len(client_entries),
        paths=paths,
        top_clients=top_clients,
        size_after_dedupe=size_after,
        missing_final_newline=result.missing_final_newline,
    )


def dedupe(
    file: Optional[PathArg],
    live: Live,
    *,
    output: Optional[PathArg] = None,
    dry_run: bool = False,
    drop_zero: bool = False,
    strict: bool = False,
    rejects: Optional[PathArg] = None,
    stdin: Optional[BinaryIO] = None,
    jobs: int = 1,
    progress: Optional[Progress] = None,
) -> WriteResult:
    """One canonical line per (client, path), max count, first-seen order."""
    name = os.fspath(file) if file is not None else os.fspath(live.path)
    if output is not None and _same_file(output, name):
        output = None  # `dedupe F -o F` is an in-place dedupe: F's rejects go to F.rejects
    if output is None:
        if name == STDIO:
            raise errors.UsageError("dedupe of standard input needs -o/--output")
        _check_regular_input(name)

        def compose(snapshot: Optional[ReadResult], plan: _Plan) -> Table:
            if snapshot is None:
                raise errors.InputMissing(f"cannot read {name}: No such file or directory")
            plan.lines_in = snapshot.lines
            plan.merged_entries = len(snapshot.table)
            table, plan.zero_dropped = (
                _drop_zero(snapshot.table) if drop_zero else (snapshot.table, 0)
            )
            return table

        result, _plan = _rewrite_in_place(
            "dedupe",
            name,
            live,
            compose,
            dry_run=dry_run,
            strict=strict,
            rejects=rejects,
            progress=progress,
            jobs=jobs,
        )
        return result

    source = _read_source(name, live, stdin=stdin, jobs=jobs, progress=progress)
    _strict_check(strict, [(name, source)])
    table, zero_dropped = _drop_zero(source.table) if drop_zero else (source.table, 0)
    result = _write_output("dedupe", output, table, live, dry_run=dry_run)
    _fill_counts(result, [source], table, zero_dropped)
    return result


def _fill_counts(
    result: WriteResult, sources: Sequence[ReadResult], table: Table, zero_dropped: int
) -> None:
    result.lines_in = sum(s.lines for s in sources)
    result.entries_out = len(table)
    result.zero_dropped = zero_dropped
    result.rejected_lines = [r for s in sources for r in s.rejected]
    result.rejected = _count_rejected(result.rejected_lines)
    valid = sum(s.valid_lines for s in sources)
    result.duplicates_removed = max(valid - (len(table) + zero_dropped), 0)


def merge(
    sources: Sequence[PathArg],
    live: Live,
    *,
    into: Optional[PathArg] = None,
    output: Optional[PathArg] = None,
    dry_run: bool = False,
    drop_zero: bool = False,
    strict: bool = False,
    rejects: Optional[PathArg] = None,
    stdin: Optional[BinaryIO] = None,
    jobs: int = 1,
    progress: Optional[Progress] = None,
) -> WriteResult:
    """Union of the sources under the merge law (max count, first-seen order).

    ``into``: merged into that file in place (its own entries first; created if
    missing). ``output``: written there (``-`` or None: returned as content).
    """
    if into is not None and output is not None:
        raise errors.UsageError("--into and -o/--output exclude each other")
    if not sources:
        raise errors.UsageError("merge needs at least one SOURCE")
    if sum(1 for s in sources if os.fspath(s) == STDIO) > 1:
        raise errors.UsageError("standard input ('-') can be read only once")
    if output is not None and any(_same_file(output, s) for s in sources):
        # `merge A F -o F` is `merge A --into F`: F's own rejected lines must go to
        # F.rejects, not vanish with the rewrite.
        into, output = output, None
    if into is not None:
        # the --into file is read once, as the file being rewritten, not also as a source
        target = into
        sources = [s for s in sources if not _same_file(target, s)]
    read = [
        (os.fspath(s), _read_source(s, live, stdin=stdin, jobs=jobs, progress=progress))
        for s in sources
    ]
    _strict_check(strict, read)
    incoming = Table()
    for _name, res in read:
        incoming.update(res.table)
    source_rejected = [r for _name, res in read for r in res.rejected]

    if into is not None:
        into_name = os.fspath(into)

        def compose(snapshot: Optional[ReadResult], plan: _Plan) -> Table:
            own = snapshot.table if snapshot is not None else Table()
            merged = own.merged(incoming)
            plan.lines_in = (snapshot.lines if snapshot else 0) + sum(r.lines for _, r in read)
            plan.merged_entries = len(merged)
            table, plan.zero_dropped = _drop_zero(merged) if drop_zero else (merged, 0)
            return table

        result, _plan = _rewrite_in_place(
            "merge",
            into_name,
            live,
            compose,
            dry_run=dry_run,
            strict=strict,
            rejects=rejects,
            source_rejected=source_rejected,
            progress=progress,
            jobs=jobs,
        )
        return result

    table, zero_dropped = _drop_zero(incoming) if drop_zero else (incoming, 0)
    result = _write_output(
        "merge", output if output is not None else STDIO, table, live, dry_run=dry_run
    )
    _fill_counts(result, [r for _, r in read], table, zero_dropped)
    return result


def _same_file(a: PathArg, b: PathArg) -> bool:
    na, nb = os.fspath(a), os.fspath(b)
    if STDIO in (na, nb):
        return False
    return is_same_file(na, nb)


def _export_bytes(export_dir: PathArg) -> tuple[bytes, ...]:
    """The export as given and, where symbolic links make it differ, as rpc.mountd
    records it: mountd writes the realpath of what a client mounted, so a
    resource agent configured with ``/export/home -> /srv/home`` must still find
    the ``/srv/home`` lines."""
    given = os.path.normpath(os.path.abspath(os.fspath(export_dir)))
    real = os.path.realpath(given)
    return tuple(os.fsencode(p) for p in ((given,) if real == given else (given, real)))


def backup(
    export_dir: PathArg,
    live: Live,
    *,
    to: Optional[PathArg] = None,
    exact: bool = False,
    missing_ok: bool = False,
    dry_run: bool = False,
    progress: Optional[Progress] = None,
) -> WriteResult:
    """Write the live rmtab's entries for one export to its backup file, atomically.

    A missing or unreadable live rmtab leaves an existing backup untouched (an
    unmounted /var must not wipe a good backup).
    """
    export = _export_bytes(export_dir)
    dest = Path(os.fspath(to)) if to is not None else Path(os.fspath(export_dir)) / ".rmtab"
    try:
        snapshot, _state = _read_live(live, progress)
    except errors.InputMissing as exc:
        if not missing_ok:
            raise
        return WriteResult(
            command="backup",
            file=os.path.abspath(dest),
            dry_run=dry_run,
            skipped=str(exc),
            warnings=[f"{exc}; backup left untouched"],
        )
    selected = snapshot.table.select_export(export, exact=exact)
    result = _write_output("backup", dest, selected, live, dry_run=dry_run)
    result.lines_in = snapshot.lines
    result.entries_out = len(selected)
    # duplicate lines of the live rmtab: none of them reaches the backup
    result.duplicates_removed = snapshot.duplicate_lines
    result.ignored_outside_export = len(snapshot.table) - len(selected)
    result.rejected_lines = list(snapshot.rejected)
    result.rejected = snapshot.rejected_lines
    return result


def _read_live(live: Live, progress: Optional[Progress] = None) -> tuple[ReadResult, FileState]:
    name = os.fspath(live.path)
    _check_regular_input(name)
    return read_snapshot(
        name,
        mountd_statedir=live.statedir,
        timeout=live.lock_timeout,
        progress=_named(name, progress),
    )


def restore(
    export_dir: PathArg,
    live: Live,
    *,
    from_: Optional[PathArg] = None,
    exact: bool = False,
    missing_ok: bool = False,
    replace: bool = False,
    drop_zero: bool = False,
    strict: bool = False,
    rejects: Optional[PathArg] = None,
    dry_run: bool = False,
    progress: Optional[Progress] = None,
) -> WriteResult:
    """Merge an export's backup into the live rmtab (never append), atomically.

    Restoring k times gives the same file as restoring once. With ``replace`` the
    backup is authoritative for this export: local entries under the export that
    the backup lacks are removed (and listed). Other exports are never touched.
    """
    export = _export_bytes(export_dir)
    src = Path(os.fspath(from_)) if from_ is not None else Path(os.fspath(export_dir)) / ".rmtab"
    try:
        with _open_input(os.fspath(src)) as stream:
            backup_read = read_table(stream)
    except errors.InputMissing as exc:
        if not missing_ok:
            raise
        return WriteResult(
            command="restore",
            file=os.fspath(live.path),
            dry_run=dry_run,
            skipped=str(exc),
            warnings=[f"{exc}; nothing restored"],
        )
    except OSError as exc:
        raise errors.from_oserror(exc, src, "read", reading=True) from exc
    _strict_check(strict, [(os.fspath(src), backup_read)])
    wanted = backup_read.table.select_export(export, exact=exact)
    ignored = len(backup_read.table) - len(wanted)
    # the live file may not exist yet (fresh node): that is normal, it is created

    def compose(snapshot: Optional[ReadResult], plan: _Plan) -> Table:
        own = snapshot.table if snapshot is not None else Table()
        plan.lines_in = (snapshot.lines if snapshot else 0) + backup_read.lines
        if replace:
            # The backup is authoritative for this export: its entries AND counts
            # replace the local ones (max would resurrect a count that went down
            # on the other node); local entries it lacks are removed.
            kept: list[Entry] = []
            for entry in own:
                if not path_in_export(entry.path, export, exact=exact):
                    kept.append(entry)
                elif entry.key in wanted_counts:
                    kept.append(entry.with_count(wanted_counts[entry.key]))
                else:
                    plan.removed.append(entry)
            own = Table(kept)
        merged = own.merged(wanted)
        plan.merged_entries = len(merged) + len(plan.removed)
        table, plan.zero_dropped = _drop_zero(merged) if drop_zero else (merged, 0)
        return table

    wanted_counts = {e.key: e.count for e in wanted}
    result, _plan = _rewrite_in_place(
        "restore",
        live.path,
        live,
        compose,
        dry_run=dry_run,
        strict=strict,
        rejects=rejects,
        source_rejected=list(backup_read.rejected),
        progress=progress,
    )
    result.ignored_outside_export = ignored
    # the backup's entries outside the export were ignored, not collapsed
    result.duplicates_removed = max(result.duplicates_removed - ignored, 0)
    return result


def client_key(client: bytes) -> bytes:
    """One spelling per client, for matching what an admin typed against the file.

    IPv6 in either spelling (``fe80::1``, ``fe80;;1``), upper or lower case,
    compressed or not (``fe80:0:0:0:0:0:0:1``), with its ``%scope`` kept; host
    names without regard to case (DNS ignores it). Anything else as it is.
    """
    text = client.replace(b";", b":")
    if b":" not in text:
        return text.lower()
    address, percent, scope = text.partition(b"%")
    import ipaddress  # only for IPv6 clients

    try:
        canonical = ipaddress.IPv6Address(address.decode("ascii")).compressed
    except (ValueError, UnicodeDecodeError):
        return text
    return canonical.encode("ascii") + percent + scope


def forget(
    live: Live,
    *,
    clients: Sequence[bytes] = (),
    path: Optional[bytes] = None,
    export: Optional[PathArg] = None,
    file: Optional[PathArg] = None,
    dry_run: bool = False,
    strict: bool = False,
    rejects: Optional[PathArg] = None,
    progress: Optional[Progress] = None,
) -> WriteResult:
    """Remove stale entries matching ALL given filters, in place, locked."""
    if not clients and path is None and export is None:
        raise errors.UsageError("forget needs at least one of --client, --path, --export")
    wanted_clients = {client_key(c) for c in clients}
    export_b = _export_bytes(export) if export is not None else None
    name = os.fspath(file) if file is not None else os.fspath(live.path)
    _check_regular_input(name)

    def matches(entry: Entry) -> bool:
        if wanted_clients and client_key(entry.client) not in wanted_clients:
            return False
        if path is not None and entry.path != path:
            return False
        return export_b is None or path_in_export(entry.path, export_b)

    def compose(snapshot: Optional[ReadResult], plan: _Plan) -> Table:
        if snapshot is None:
            raise errors.InputMissing(f"cannot read {name}: No such file or directory")
        plan.lines_in = snapshot.lines
        table = snapshot.table
        keep = [not matches(e) for e in table]
        plan.removed = [e for e, k in zip(table, keep) if not k]
        plan.merged_entries = len(table)
        return table.filter(keep)

    result, _plan = _rewrite_in_place(
        "forget",
        name,
        live,
        compose,
        dry_run=dry_run,
        strict=strict,
        rejects=rejects,
        progress=progress,
    )
    return result

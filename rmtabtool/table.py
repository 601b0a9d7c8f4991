"""A set of rmtab entries keyed by (client, path), and the streaming reader.

The merge law lives here: two records of the same (client, path) collapse to
ONE entry carrying the MAXIMUM count. Max (not sum) because the same mount is
seen again on every failover restore: summing would inflate counts each time,
and a later UMNT (which decrements) would leave a stale line behind. Max is
commutative, associative and idempotent, so merging backups in any order, any
number of times, gives the same table. Red Hat's clurmtabd did the same.

:func:`read_table` turns a file of any size into a table plus the rejected
lines, in memory proportional to the number of DISTINCT lines. Binary chunks
are split at line boundaries, byte-identical lines are collapsed with C-level
set operations, and only lines never seen before are parsed. On a file bloated
by ``cat backup >> rmtab`` restores most chunks are not even split: runs of
lines met before are recognised and checked in place (see ``_Reader``). A big
regular file can be read by several processes (``jobs``), with the same result.
"""

from __future__ import annotations

import io
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, BinaryIO, Optional, Union

from .entry import (
    Entry,
    Reason,
    Rejected,
    _canonical_fields,
    _parse_full,
    format_entry,
    stops_mountd,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = [
    "CHUNK_SIZE",
    "PARALLEL_THRESHOLD",
    "ReadResult",
    "RejectedLine",
    "Table",
    "auto_jobs",
    "path_in_export",
    "read_table",
]

#: Read size. Measured on this project's machine: 256 KiB chunks beat 16-64 MiB
#: ones by 1.3-2x (they stay in cache while split() and set() walk them), and
#: 512 KiB-1 MiB ones on the repeat path too (docs/performance.md).
CHUNK_SIZE = 256 * 1024

Key = tuple[bytes, bytes]
#: an export directory, or several spellings of one (any of them matches)
Export = Union[bytes, tuple[bytes, ...]]


def path_in_export(path: bytes, export: Export, *, exact: bool = False) -> bool:
    """Does ``path`` lie in the export ``export`` (the directory or below it)?

    Plain byte comparison on canonical paths (no regex, no globbing): clients can
    mount sub-directories of an export, and those belong to it. ``/srv/ab`` is
    not under ``/srv/a``. A trailing ``/`` on ``export`` is ignored. A tuple
    of spellings matches when any of them does.
    """
    if isinstance(export, tuple):
        return any(path_in_export(path, one, exact=exact) for one in export)
    if len(export) > 1:
        export = export.rstrip(b"/") or b"/"
    if path == export:
        return True
    if exact:
        return False
    prefix = export if export.endswith(b"/") else export + b"/"
    return path.startswith(prefix)


class Table:
    """Entries keyed by (client, path) in first-seen order, merged by max count.

    Equality compares content only (the order is presentation), which is what
    the merge laws are stated over.
    """

    __slots__ = ("_counts",)

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._counts: dict[Key, int] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Entry) -> bool:
        """Merge one entry in; True if the table changed."""
        key = (entry.client, entry.path)
        old = self._counts.get(key)
        if old is None or entry.count > old:
            self._counts[key] = entry.count
            return True
        return False

    def update(self, other: Table) -> None:
        """Merge every entry of ``other`` into this table (in ``other``'s order)."""
        counts = self._counts
        for key, count in other._counts.items():
            old = counts.get(key)
            if old is None or count > old:
                counts[key] = count

    def merged(self, *others: Table) -> Table:
        """A new table: this one merged with ``others``, left to right."""
        result = self.copy()
        for other in others:
            result.update(other)
        return result

    def copy(self) -> Table:
        result = Table()
        result._counts = dict(self._counts)
        return result

    def remove(self, client: bytes, path: bytes) -> Optional[Entry]:
        """Drop (client, path); return the removed entry or None."""
        client = client.replace(b";", b":")
        count = self._counts.pop((client, path), None)
        return None if count is None else Entry._trusted(client, path, count)

    def get(self, client: bytes, path: bytes) -> Optional[Entry]:
        client = client.replace(b";", b":")
        count = self._counts.get((client, path))
        return None if count is None else Entry._trusted(client, path, count)

    def filter(self, keep: Iterable[bool]) -> Table:
        """Keep the entries for which the parallel iterable ``keep`` is true."""
        result = Table()
        result._counts = {k: c for (k, c), ok in zip(self._counts.items(), keep) if ok}
        return result

    def select_export(self, export: Export, *, exact: bool = False) -> Table:
        """The entries whose path is ``export`` or (unless ``exact``) below it."""
        return self.filter(path_in_export(p, export, exact=exact) for (_, p) in self._counts)

    def without_export(self, export: Export, *, exact: bool = False) -> Table:
        """The entries that :meth:`select_export` would not select."""
        return self.filter(not path_in_export(p, export, exact=exact) for (_, p) in self._counts)

    def __iter__(self) -> Iterator[Entry]:
        trusted = Entry._trusted
        for (client, path), count in self._counts.items():
            yield trusted(client, path, count)

    def counts(self) -> Mapping[Key, int]:
        """A read-only view ``{(client, path): count}`` in table order (no Entry objects)."""
        return MappingProxyType(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Entry):
            return self._counts.get(item.key) == item.count
        return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Table({list(self)!r})"

    def lines(self) -> Iterator[bytes]:
        """Canonical lines, first-seen order: what rpc.mountd itself would write."""
        for entry in self:
            yield format_entry(entry)

    def to_bytes(self) -> bytes:
        return b"".join(self.lines())


class RejectedLine:
    """A distinct rejected line: its bytes, why, where first seen, how often."""

    __slots__ = ("first_line", "line", "occurrences", "reason")

    def __init__(self, line: bytes, reason: Reason, first_line: int, occurrences: int) -> None:
        self.line = line
        self.reason = reason
        self.first_line = first_line
        self.occurrences = occurrences

    def __repr__(self) -> str:
        return (
            f"RejectedLine(line={self.line!r}, reason={self.reason.value!r}, "
            f"first_line={self.first_line}, occurrences={self.occurrences})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RejectedLine):
            return NotImplemented
        return (self.line, self.reason, self.first_line, self.occurrences) == (
            other.line,
            other.reason,
            other.first_line,
            other.occurrences,
        )

    __hash__ = None  # type: ignore[assignment]


class ReadResult:
    """What :func:`read_table` found in one source."""

    __slots__ = (
        "bytes_read",
        "distinct_lines",
        "lines",
        "missing_final_newline",
        "mountd_stops_at_line",
        "rejected",
        "table",
    )

    def __init__(self) -> None:
        self.table = Table()
        #: bytes read from the source
        self.bytes_read = 0
        #: lines in the source (a last line without '\n' counts)
        self.lines = 0
        #: byte-distinct lines
        self.distinct_lines = 0
        #: distinct rejected lines in first-seen order
        self.rejected: list[RejectedLine] = []
        #: 1-based number of the first line where rpc.mountd stops parsing, or None
        self.mountd_stops_at_line: Optional[int] = None
        #: the source ends in a line without its '\n' (a crash or full disk mid-write)
        self.missing_final_newline = False

    @property
    def rejected_lines(self) -> int:
        """Rejected lines counted with their repetitions."""
        return sum(r.occurrences for r in self.rejected)

    @property
    def valid_lines(self) -> int:
        return self.lines - self.rejected_lines

    @property
    def duplicate_lines(self) -> int:
        """Valid lines that did not add a new (client, path): what dedupe removes."""
        return self.valid_lines - len(self.table)

    def rejected_by_reason(self) -> dict[str, int]:
        """Rejected lines (with repetitions) per reason code."""
        result: dict[str, int] = {}
        for rej in self.rejected:
            result[rej.reason.value] = result.get(rej.reason.value, 0) + rej.occurrences
        return result


Source = Union[str, "os.PathLike[str]", bytes, BinaryIO]
Read = Callable[[int], bytes]


class _Segment:
    """A run of whole lines met before, with what it contributes to the figures."""

    __slots__ = ("data", "lines", "next", "rejected")

    def __init__(
        self, data: bytes, lines: int, rejected: tuple[tuple[RejectedLine, int], ...]
    ) -> None:
        self.data = data
        self.lines = lines
        #: (rejected line, occurrences in this segment) for the rejected lines in it
        self.rejected = rejected
        #: the segment that followed this one last time: the prediction
        self.next: Optional[_Segment] = None


class _Reader:
    """Incremental state of :func:`read_table` over one stream or one byte range.

    Two paths, exactly the same figures:

    * plain: a block of whole lines is ``split()``; when every line is a known
      valid one (``set.issuperset``, in C) that is all; otherwise the new lines
      are parsed in first-seen order and the rejected ones counted.
    * repeats: a seed-like file is the same runs of lines appended again and
      again (``cat backup >> rmtab``). Once a plain block shows only known lines,
      one of its lines becomes the *anchor*: the input is cut into segments that
      start at anchor lines. A segment met before adds its remembered figures
      (line count, occurrences of rejected lines) without being split. The next
      segment is predicted (the one that followed last time) and checked in
      place with ``bytes.startswith`` (a memcmp), so the bulk of a doubled file
      is compared, not split, hashed or counted. A new segment goes the plain
      way and is remembered (up to ``CACHE_BYTES``). Repeated segments hold no
      first occurrence, so line numbers and first-seen order stay exact.
    """

    # Tuning, measured on seed-like files (docs/performance.md). Tests lower them
    # to drive the repeat path through small inputs.
    #: a plain block needs this many lines to choose an anchor from
    SAMPLE_LINES = 1000
    #: aimed-at segment size when choosing the anchor line
    SEGMENT_TARGET = 64 * 1024
    #: average segment size below which the anchor is dropped (per-segment
    #: overhead would beat splitting)
    SEGMENT_MIN = 1024
    #: wait for an anchor at most this many bytes before going plain
    SEGMENT_WAIT = 256 * 1024
    #: memory for remembered segments
    CACHE_BYTES = 8 * 1024 * 1024
    #: repeat-path bytes, or segments, between checks that it still pays
    CHECK_BYTES = 8 * 1024 * 1024
    CHECK_SEGMENTS = 4096
    #: plain blocks to wait before trying another anchor
    RETRY_BLOCKS = 64
    #: at most this many anchor lines (each costs a find() on a misprediction)
    MAX_ANCHORS = 8
    #: a misprediction first tries the remembered segments that start with the
    #: same PREFIX bytes, most recently used first, at most STARTS_KEPT of them
    #: (the 1.6 GB seed-like file needs up to 38)
    PREFIX = 128
    STARTS_KEPT = 64

    def __init__(self, *, keep: bool = False) -> None:
        self.result = ReadResult()
        #: every distinct line
        self.seen: set[bytes] = set()
        #: distinct line -> first line number, in first-seen order (workers only:
        #: the merge needs it; one process keeps the numbers of rejected lines only)
        self.first: dict[bytes, int] = {}
        #: distinct lines that parse: a block of only these needs no more work
        self.valid: set[bytes] = set()
        self.rejected: dict[bytes, RejectedLine] = {}
        self.lines = 0
        # a worker keeps its verdicts for the merge: the parent need not re-parse
        self.keep = keep
        self.entries: dict[bytes, tuple[bytes, bytes, int]] = {}
        self.stopping: set[bytes] = set()
        # the repeat path
        #: '\n' + anchor line + '\n' for each anchor: segments start at anchor lines
        self.needles: list[bytes] = []
        self.segments: dict[bytes, _Segment] = {}
        #: first PREFIX bytes -> remembered segments starting so, newest first
        self.starts: dict[bytes, list[_Segment]] = {}
        self.cached = 0
        self.prev: Optional[_Segment] = None
        self.retry = 0
        self.drops = 0
        #: bytes accounted for by remembered segments (not split): a diagnostic
        self.repeat_bytes = 0
        self.seg_count = 0
        self.seg_bytes = 0
        self.seg_new = 0

    # -- finding lines ------------------------------------------------------
    def discover(self, line: bytes, lineno: int, terminated: bool = True) -> None:
        """``line`` first occurs at ``lineno``: parse it and place it."""
        self.seen.add(line)
        if self.keep:
            self.first[line] = lineno
        result = self.result
        fields = _canonical_fields(line)
        if fields is not None:
            # A line exactly as mountd writes it (the fast path of parse_line):
            # a valid entry that mountd reads whole, so stops_mountd() is false.
            # Table.add() is inlined, without building the Entry.
            self.valid.add(line)
            client, path, count = fields
            counts = result.table._counts
            old = counts.get((client, path))
            if old is None or count > old:
                counts[client, path] = count
            if self.keep:
                self.entries[line] = fields
            return
        if (self.keep or result.mountd_stops_at_line is None) and stops_mountd(
            line, terminated=terminated
        ):
            if result.mountd_stops_at_line is None:
                result.mountd_stops_at_line = lineno
            if self.keep:
                self.stopping.add(line)
        parsed = _parse_full(line)
        if isinstance(parsed, Rejected):
            rej = RejectedLine(parsed.line, parsed.reason, lineno, 0)
            self.rejected[line] = rej
            result.rejected.append(rej)
        else:
            self.valid.add(line)
            result.table.add(parsed)
            if self.keep:
                self.entries[line] = (parsed.client, parsed.path, parsed.count)

    def adopt(self, line: bytes, lineno: int, part: _Partial) -> None:
        """Like :meth:`discover`, with the verdict a worker already reached."""
        self.seen.add(line)
        result = self.result
        if result.mountd_stops_at_line is None and line in part.stopping:
            result.mountd_stops_at_line = lineno
        entry = part.entries.get(line)
        if entry is None:
            rej = RejectedLine(line, part.reasons[line], lineno, 0)
            self.rejected[line] = rej
            result.rejected.append(rej)
        else:
            self.valid.add(line)
            result.table.add(Entry._trusted(*entry))

    def feed(self, lines: list[bytes]) -> Optional[dict[bytes, int]]:
        """Take whole lines (no '\\n') in file order; return rejected occurrences in them."""
        base = self.lines
        self.lines += len(lines)
        if self.valid.issuperset(lines):
            return None
        block = set(lines)
        new = block - self.seen
        if len(new) <= 16:
            where = {line: lines.index(line) for line in new}
            for line in sorted(new, key=where.__getitem__):
                self.discover(line, base + where[line] + 1)
        else:  # many new lines (a file of distinct lines): one ordered pass
            discover = self.discover
            for number, line in enumerate(lines, base + 1):
                if line in new:
                    new.remove(line)
                    discover(line, number)
                    if not new:
                        break
        rejected = self.rejected
        present = block.intersection(rejected)
        if not present:
            return None
        if len(present) <= 8:
            counts = {line: lines.count(line) for line in present}
        else:
            counts = dict.fromkeys(present, 0)
            for line in lines:
                if line in counts:
                    counts[line] += 1
        for line, count in counts.items():
            rejected[line].occurrences += count
        return counts

    def feed_last(self, line: bytes) -> None:
        """The source ends in ``line`` without its '\\n'."""
        self.lines += 1
        self.result.missing_final_newline = True
        if line not in self.seen:
            self.discover(line, self.lines, terminated=False)
        rej = self.rejected.get(line)
        if rej is not None:
            rej.occurrences += 1

    # -- the stream ----------------------------------------------------------
    def consume(self, read: Read, chunk_size: int) -> int:
        """Read everything ``read`` gives; return the byte count."""
        total = 0
        pending = b""  # unprocessed bytes from a line start on
        parts: list[bytes] = []  # chunks of a line whose '\n' has not come yet
        while True:
            chunk = read(chunk_size)
            if not chunk:
                break
            total += len(chunk)
            if b"\n" not in chunk:
                parts.append(chunk)
                continue
            if parts:
                buf = b"".join([pending, *parts, chunk])
                parts = []
            else:
                buf = pending + chunk if pending else chunk
            pending = self.process(buf, final=False)
        if parts:
            pending = b"".join([pending, *parts])
        if pending:
            pending = self.process(pending, final=True)
        if pending:
            self.feed_last(pending)
        return total

    def process(self, buf: bytes, *, final: bool) -> bytes:
        """Take the whole lines at the start of ``buf``; return what is left."""
        if self.needles:
            pos = self._repeats(buf, final)
            if pos:
                return buf[pos:]
            if self.needles:
                return buf
        lines = buf.split(b"\n")
        rest = lines.pop()
        if not lines:
            return rest
        known = len(self.seen)
        self.feed(lines)
        if not self.needles and len(lines) >= self.SAMPLE_LINES:
            if self.retry:
                self.retry -= 1
            elif (len(self.seen) - known) * 2 < len(lines):  # mostly repeats
                self._choose_anchor(lines, len(buf) - len(rest))
        return rest

    def _choose_anchor(self, lines: list[bytes], size: int) -> None:
        """Add as an anchor the line that recurs about every SEGMENT_TARGET bytes in ``lines``.

        A restore appends one export's lines after another's, so a line of one
        export may be absent for megabytes: a stretch with no anchor adds one.
        """
        counts = Counter(lines)
        want = max(size / self.SEGMENT_TARGET, 2.0)
        best, best_count = b"", 0
        for line, count in counts.items():
            if count >= 2 and abs(count - want) < abs(best_count - want):
                best, best_count = line, count
        if best_count < 2 or size / best_count < self.SEGMENT_MIN:
            if not self.needles:
                self.retry = self.RETRY_BLOCKS
            return
        needle = b"\n" + best + b"\n"
        if needle not in self.needles:
            self.needles.append(needle)

    def _drop_anchors(self) -> None:
        """The repeat path did not pay: plain for a while (longer each time)."""
        self.needles = []
        self.prev = None
        self.drops += 1
        self.retry = self.RETRY_BLOCKS << min(self.drops, 10)

    def _repeats(self, buf: bytes, final: bool) -> int:
        """Take ``buf`` segment by segment; return where it stopped (a line start)."""
        needles = self.needles
        end = buf.rfind(b"\n") + 1
        pos = 0
        prev = self.prev
        count = nbytes = 0
        new_before = self.seg_new
        startswith = buf.startswith
        find = buf.find
        starts = self.starts
        prefix = self.PREFIX
        wait = self.SEGMENT_WAIT
        while pos < end:
            seg = prev.next if prev is not None else None
            if seg is not None and startswith(seg.data, pos):
                # predicted and confirmed in place: the bulk of a doubled file
                self.lines += seg.lines
                for rej, occurrences in seg.rejected:
                    rej.occurrences += occurrences
            else:
                if (
                    seg is not None
                    and not final
                    and len(buf) - pos < len(seg.data)
                    and startswith(seg.data[: len(buf) - pos], pos)
                ):
                    break  # the prediction may hold: wait for the rest
                seg = None
                same = starts.get(buf[pos : pos + prefix])
                if same is not None:
                    for i, known in enumerate(same):
                        if startswith(known.data, pos):
                            seg = known
                            if i:  # move to front: the likeliest next time
                                same.insert(0, same.pop(i))
                            break
                if seg is not None:
                    self.lines += seg.lines
                    for rej, occurrences in seg.rejected:
                        rej.occurrences += occurrences
                    if prev is not None:
                        prev.next = seg
                    prev = seg
                    pos += len(seg.data)
                    count += 1
                    nbytes += len(seg.data)
                    continue
                # the next anchor line: the earliest match of any needle
                limit = min(end, pos + wait)
                cut = limit
                for needle in needles:
                    found = find(needle, pos, min(limit, cut - 2 + len(needle)))
                    if found >= 0:
                        cut = found + 1
                if cut == limit:
                    if not final and end - pos < wait:
                        break  # the next anchor may be in the next chunk
                    # no anchor in sight: plain, the prediction is lost, and a
                    # line of this stretch becomes an anchor too
                    stop = buf.rfind(b"\n", pos, limit) + 1 if limit < end else end
                    if stop <= pos:  # one line longer than the window
                        stop = buf.find(b"\n", limit - 1) + 1
                    lines = buf[pos:stop].split(b"\n")
                    lines.pop()
                    self.feed(lines)
                    if len(needles) < self.MAX_ANCHORS and len(lines) >= self.SAMPLE_LINES:
                        self._choose_anchor(lines, stop - pos)
                    self.seg_new += stop - pos
                    nbytes += stop - pos
                    pos = stop
                    prev = None
                    continue
                seg = self._segment(buf[pos:cut])
                if prev is not None:
                    prev.next = seg
            prev = seg
            pos += len(seg.data)
            count += 1
            nbytes += len(seg.data)
        self.prev = prev
        self.seg_count += count
        self.seg_bytes += nbytes
        self.repeat_bytes += nbytes - (self.seg_new - new_before)
        if self.seg_bytes >= self.CHECK_BYTES or self.seg_count >= self.CHECK_SEGMENTS:
            too_small = self.seg_bytes < self.SEGMENT_MIN * self.seg_count
            mostly_new = self.seg_new * 4 > self.seg_bytes * 3
            if too_small or mostly_new:
                self._drop_anchors()
            self.seg_count = self.seg_bytes = self.seg_new = 0
        return pos

    def _segment(self, data: bytes) -> _Segment:
        """The segment ``data`` (whole lines), its figures added to the totals."""
        seg = self.segments.get(data)
        if seg is not None:
            self.lines += seg.lines
            for rej, occurrences in seg.rejected:
                rej.occurrences += occurrences
            return seg
        lines = data.split(b"\n")
        lines.pop()
        counts = self.feed(lines)
        rejected = self.rejected
        found = tuple((rejected[k], v) for k, v in counts.items()) if counts else ()
        seg = _Segment(data, len(lines), found)
        if len(data) <= self.SEGMENT_WAIT and self.cached + len(data) <= self.CACHE_BYTES:
            self.segments[data] = seg
            self.cached += len(data)
            if len(data) >= self.PREFIX:
                same = self.starts.setdefault(data[: self.PREFIX], [])
                same.insert(0, seg)
                del same[self.STARTS_KEPT :]  # bounds the work of one misprediction
        self.seg_new += len(data)
        return seg

    def partial(self, nbytes: int) -> _Partial:
        return _Partial(
            lines=self.lines,
            first=self.first,
            rejected={line: rej.occurrences for line, rej in self.rejected.items()},
            reasons={line: rej.reason for line, rej in self.rejected.items()},
            entries=self.entries,
            stopping=self.stopping,
            bytes_read=nbytes,
            missing_final_newline=self.result.missing_final_newline,
        )

    def finish(self, nbytes: int) -> ReadResult:
        result = self.result
        result.lines = self.lines
        result.distinct_lines = len(self.seen)
        result.bytes_read = nbytes
        return result


class _Partial:
    """What a worker found in its byte range (picklable, small for bloated files)."""

    __slots__ = (
        "bytes_read",
        "entries",
        "first",
        "lines",
        "missing_final_newline",
        "reasons",
        "rejected",
        "stopping",
    )

    def __init__(
        self,
        *,
        lines: int,
        first: dict[bytes, int],
        rejected: dict[bytes, int],
        reasons: dict[bytes, Reason],
        entries: dict[bytes, tuple[bytes, bytes, int]],
        stopping: set[bytes],
        bytes_read: int,
        missing_final_newline: bool,
    ) -> None:
        self.lines = lines
        #: distinct line -> first line number in the range, in first-seen order
        self.first = first
        #: rejected line -> occurrences in the range, and why it is rejected
        self.rejected = rejected
        self.reasons = reasons
        #: valid line -> its entry's (client, path, count)
        self.entries = entries
        #: the lines at which rpc.mountd's parser stops
        self.stopping = stopping
        self.bytes_read = bytes_read
        self.missing_final_newline = missing_final_newline

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for name, value in zip(self.__slots__, state):
            setattr(self, name, value)


def _merge(partials: Iterable[_Partial]) -> ReadResult:
    """The ReadResult of the ranges read one after the other, in order."""
    reader = _Reader()
    nbytes = 0
    for part in partials:
        base = reader.lines
        known = reader.seen
        for line, lineno in part.first.items():
            if line not in known:
                reader.adopt(line, base + lineno, part)
        rejected = reader.rejected
        for line, occurrences in part.rejected.items():
            rejected[line].occurrences += occurrences
        reader.lines += part.lines
        nbytes += part.bytes_read
        if part.missing_final_newline:
            reader.result.missing_final_newline = True
    return reader.finish(nbytes)


def _open(source: Source) -> tuple[BinaryIO, bool]:
    if isinstance(source, (str, bytes, os.PathLike)):
        return open(source, "rb", buffering=0), True  # closed by caller
    return source, False


def iter_blocks(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[tuple[bytes, bool]]:
    """Yield (data, complete) pieces where each complete piece ends on a line boundary.

    The final piece may end without '\\n' (complete=False when the source's last
    line lacks its newline). Lines may straddle reads: the tail of one read is
    carried into the next, and a line longer than a chunk is gathered piecewise
    (no quadratic re-concatenation).
    """
    carry: list[bytes] = []
    read = stream.read
    while True:
        chunk = read(chunk_size)
        if not chunk:
            break
        cut = chunk.rfind(b"\n")
        if cut < 0:
            carry.append(chunk)
            continue
        head = chunk[: cut + 1]
        if carry:
            carry.append(head)
            head = b"".join(carry)
            carry = []
        yield head, True
        if cut + 1 < len(chunk):
            carry.append(chunk[cut + 1 :])
    if carry:
        yield b"".join(carry), False


# ---------------------------------------------------------------- parallel reading

#: Below this size a file is read by one process: forking, warming a second
#: segment cache and merging cost about what they save. Measured on seed-like
#: files, 2 processes against 1 (docs/performance.md): 16 MiB 1.6x slower, 32-64
#: MiB even, 160 MiB 8% faster, 1.6 GiB 8-40% faster (for ~15-45% more CPU).
PARALLEL_THRESHOLD = 256 * 1024 * 1024
#: each further process needs this many more bytes to pay for itself
PARALLEL_PER_JOB = 128 * 1024 * 1024
#: auto mode reads this much of the file first; a file whose lines are mostly
#: distinct there is read by one process (the merge of workers' distinct lines
#: is serial and re-builds every entry: parallel does not pay)
AUTO_SAMPLE = 1024 * 1024


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def auto_jobs(size_bytes: int) -> int:
    """How many processes :func:`read_table` should use for a file of this size.

    One below :data:`PARALLEL_THRESHOLD`; above it one per usable CPU, but no
    more than one per :data:`PARALLEL_PER_JOB` bytes.
    """
    if size_bytes < PARALLEL_THRESHOLD:
        return 1
    return max(1, min(_cpus(), size_bytes // PARALLEL_PER_JOB))


def _mostly_distinct(fd: int, start: int, stop: int) -> bool:
    """Are most lines in the first AUTO_SAMPLE bytes of [start, stop) different?"""
    sample = os.pread(fd, min(AUTO_SAMPLE, stop - start), start)
    lines = sample.split(b"\n")
    lines.pop()  # maybe cut short
    return len(set(lines)) * 2 > len(lines)


def _range_reader(fd: int, start: int, stop: int) -> Read:
    offset = start

    def read(n: int) -> bytes:
        nonlocal offset
        n = min(n, stop - offset)
        if n <= 0:
            return b""
        data = os.pread(fd, n, offset)
        offset += len(data)
        return data

    return read


def _read_range(fd: int, start: int, stop: int, chunk_size: int) -> _Partial:
    reader = _Reader(keep=True)
    nbytes = reader.consume(_range_reader(fd, start, stop), chunk_size)
    return reader.partial(nbytes)


def _line_start_at_or_after(fd: int, offset: int, stop: int) -> int:
    """The first line start at or after ``offset`` (``stop`` if there is none)."""
    if offset <= 0:
        return 0
    pos = offset - 1  # a line starts at ``offset`` if the byte before it is '\n'
    while pos < stop:
        window = os.pread(fd, min(64 * 1024, stop - pos), pos)
        if not window:
            break
        cut = window.find(b"\n")
        if cut >= 0:
            return min(pos + cut + 1, stop)
        pos += len(window)
    return stop


def _split(fd: int, start: int, stop: int, jobs: int) -> list[tuple[int, int]]:
    """``jobs`` ranges of whole lines covering [start, stop), in order (some may be empty)."""
    cuts = [start]
    for i in range(1, jobs):
        cut = _line_start_at_or_after(fd, start + (stop - start) * i // jobs, stop)
        cuts.append(max(cut, cuts[-1]))
    cuts.append(stop)
    return list(zip(cuts, cuts[1:]))


def _worker(conn: Connection, fd: int, start: int, stop: int, chunk_size: int) -> None:
    try:
        conn.send((True, _read_range(fd, start, stop, chunk_size)))
    except BaseException as exc:  # handed to the parent, which raises it
        conn.send((False, exc))
    finally:
        conn.close()


def _read_parallel(fd: int, start: int, stop: int, jobs: int, chunk_size: int) -> ReadResult:
    """Read [start, stop) of ``fd`` in ``jobs`` processes: this one and jobs - 1 forks."""
    import multiprocessing

    ranges = _split(fd, start, stop, jobs)
    ctx = multiprocessing.get_context("fork")
    children: list[tuple[BaseProcess, Connection]] = []
    try:
        for lo, hi in ranges[1:]:
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(sender, fd, lo, hi, chunk_size), daemon=True)
            proc.start()
            sender.close()
            children.append((proc, receiver))
        partials = [_read_range(fd, ranges[0][0], ranges[0][1], chunk_size)]
        for child, receiver in children:
            try:
                ok, payload = receiver.recv()
            except EOFError:
                child.join()
                raise OSError(
                    f"reader process {child.pid} died (exit code {child.exitcode})"
                ) from None
            if not ok:
                raise payload
            partials.append(payload)
        return _merge(partials)
    finally:
        for child, receiver in children:
            receiver.close()
            if child.is_alive():
                child.terminate()
            child.join()


def _can_fork() -> bool:
    """Can workers be forked safely? Not where fork is missing, and not while
    other threads run (a rich progress bar's refresh thread, say): a lock one of
    them holds at fork time stays locked forever in the child."""
    import multiprocessing  # only for big files: 13 ms of import time
    import threading

    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def read_table(source: Source, *, chunk_size: int = CHUNK_SIZE, jobs: int = 1) -> ReadResult:
    """Read an rmtab (a path, or a binary file object) into a :class:`ReadResult`.

    Streams in ``chunk_size`` reads; memory grows with the number of distinct
    lines, not with the file size. Raises OSError for I/O problems only; bad lines
    end up in ``result.rejected`` with their original bytes.

    ``jobs`` > 1 splits a regular file at line starts across that many processes
    (this one and forked workers) and merges their findings in file order: the
    result is identical to ``jobs=1``. ``jobs=0`` picks :func:`auto_jobs` for the
    file's size, and one process when the file's first MiB is mostly distinct
    lines (not a bloated file: the serial merge would eat the gain). Pipes,
    non-regular files, systems without ``fork`` and processes running other
    threads (fork would be unsafe) are read by one process. A
    file object is read from its current position to the end of the file as it
    was when reading started.
    """
    if jobs < 0:
        raise ValueError(f"jobs must be >= 0, not {jobs}")
    stream, owned = _open(source)
    try:
        return _read(stream, chunk_size, jobs)
    finally:
        if owned:
            stream.close()


def _read(stream: BinaryIO, chunk_size: int, jobs: int) -> ReadResult:
    if jobs != 1:
        span = _regular_span(stream)
        if span is not None:
            fd, start, stop = span
            n = jobs
            if jobs == 0:
                n = auto_jobs(stop - start)
                if n > 1 and _mostly_distinct(fd, start, stop):
                    n = 1
            # _can_fork() last: it imports multiprocessing, which a small file
            # read with jobs=0 (the command's default) should not pay for
            if n > 1 and stop - start >= n and _can_fork():
                result = _read_parallel(fd, start, stop, n, chunk_size)
                stream.seek(stop)
                return result
    reader = _Reader()
    nbytes = reader.consume(stream.read, chunk_size)
    return reader.finish(nbytes)


def _regular_span(stream: BinaryIO) -> Optional[tuple[int, int, int]]:
    """(fd, position, size) when ``stream`` is a seekable regular file, else None."""
    try:
        fd = stream.fileno()
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        position = stream.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd, position, max(info.st_size, position)


def read_bytes(data: bytes) -> ReadResult:
    """Convenience: :func:`read_table` over an in-memory file."""
    return read_table(io.BytesIO(data))

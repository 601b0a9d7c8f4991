"""Table: the merge laws, export selection, and read_table against a naive reader.

The naive reader below is the specification of :func:`rmtabtool.read_table`: split
the whole file at ``\\n``, parse every line, merge by max count in first-seen order,
remember each distinct rejected line with its first line number and occurrences.
Where mountd's parse stops comes from the independent mountd model.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple, Optional

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mountd_model import MountdEntry, mountd_read, mountd_umnt

from rmtabtool import (
    MAX_COUNT,
    MAX_LINE,
    Entry,
    ReadResult,
    Reason,
    RejectedLine,
    Table,
    format_entry,
    parse_line,
    path_in_export,
    read_bytes,
    read_table,
)

# modest: the whole property suite must stay well under a minute
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Key = tuple[bytes, bytes]

CLIENTS = [b"10.0.0.1", b"10.0.0.2", b"fe80::1", b"host.example"]
PATHS = [b"/", b"/srv", b"/srv/a", b"/srv/ab", b"/srv/a/x", b"/srv/a.b", b"/srv/b"]
counts = st.one_of(st.sampled_from([0, 1, 2, 3, MAX_COUNT]), st.integers(0, MAX_COUNT))
small_entries = st.builds(Entry, st.sampled_from(CLIENTS), st.sampled_from(PATHS), counts)
entry_lists = st.lists(small_entries, max_size=12)
tables = entry_lists.map(Table)


def naive_merge(*lists: list[Entry]) -> list[Entry]:
    """Max count per (client, path), keys in order of first appearance."""
    merged: dict[Key, int] = {}
    for entries in lists:
        for e in entries:
            if e.key not in merged or e.count > merged[e.key]:
                merged[e.key] = e.count
    return [Entry(c, p, n) for (c, p), n in merged.items()]


def on_disk(client: bytes) -> bytes:
    return client.replace(b":", b";")


# --------------------------------------------------------------------------------------
# Merge laws
# --------------------------------------------------------------------------------------


@PROPS
@given(tables, tables)
def test_merge_is_commutative_on_content(a: Table, b: Table) -> None:
    assert a.merged(b) == b.merged(a)


@PROPS
@given(tables, tables, tables)
def test_merge_is_associative_on_content(a: Table, b: Table, c: Table) -> None:
    assert a.merged(b).merged(c) == a.merged(b.merged(c)) == a.merged(b, c)


@PROPS
@given(tables, tables)
def test_merge_is_idempotent(a: Table, b: Table) -> None:
    assert a.merged(a) == a
    ab = a.merged(b)
    assert ab.merged(b) == ab
    assert ab.merged(a) == ab
    assert a.merged(Table()) == a == Table().merged(a)


@PROPS
@given(entry_lists, entry_lists)
def test_merge_keeps_max_count_in_first_seen_order(xs: list[Entry], ys: list[Entry]) -> None:
    a, b = Table(xs), Table(ys)
    expected = naive_merge(xs, ys)
    merged = a.merged(b)
    assert list(merged) == expected  # order included, not just content
    assert len(merged) == len(expected)
    inplace = a.copy()
    inplace.update(b)
    assert list(inplace) == expected
    # inputs untouched
    assert list(a) == naive_merge(xs)
    assert list(b) == naive_merge(ys)


@PROPS
@given(entry_lists)
def test_table_of_a_list_twice_is_the_table_of_it_once(xs: list[Entry]) -> None:
    assert list(Table(xs + xs)) == list(Table(xs))
    # equality is on content: order is presentation
    assert Table(reversed(xs)) == Table(xs)


@PROPS
@given(entry_lists, small_entries)
def test_add_reports_whether_the_table_changed(xs: list[Entry], e: Entry) -> None:
    t = Table(xs)
    before = t.get(e.client, e.path)
    changed = t.add(e)
    assert changed == (before is None or e.count > before.count)
    after = t.get(e.client, e.path)
    assert after is not None
    assert after.count == max(e.count, before.count if before else 0)
    assert after in t


def test_table_lookup_accepts_both_ipv6_spellings() -> None:
    t = Table([Entry(b"fe80::1", b"/srv/a", 2)])
    assert t.get(b"fe80;;1", b"/srv/a") == Entry(b"fe80::1", b"/srv/a", 2)
    assert Entry(b"fe80;;1", b"/srv/a", 2) in t
    assert Entry(b"fe80::1", b"/srv/a", 1) not in t  # a different count is not that entry
    assert t.remove(b"fe80;;1", b"/srv/a") == Entry(b"fe80::1", b"/srv/a", 2)
    assert len(t) == 0
    assert t.remove(b"fe80::1", b"/srv/a") is None


@PROPS
@given(entry_lists)
def test_lines_are_canonical_and_a_fixed_point_of_mountd(xs: list[Entry]) -> None:
    t = Table(xs)
    data = t.to_bytes()
    assert data == b"".join(t.lines()) == b"".join(format_entry(e) for e in t)
    # mountd sees exactly our entries, in our order ...
    view = mountd_read(data)
    assert view.stopped_at_line is None
    assert view.entries == [MountdEntry(on_disk(e.client), e.path, e.count) for e in t]
    # ... and its own UMNT rewrite of an unrelated mount leaves our file byte-identical
    assert mountd_umnt(data, b"192.0.2.99", b"/nowhere") == data
    # and we read back what we wrote
    assert read_bytes(data).table == t


# --------------------------------------------------------------------------------------
# Export selection
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "export", "exact", "inside"),
    [
        (b"/srv/a", b"/srv/a", False, True),
        (b"/srv/a/x", b"/srv/a", False, True),
        (b"/srv/a/x/y", b"/srv/a", False, True),
        (b"/srv/ab", b"/srv/a", False, False),  # a sibling sharing a prefix is not inside
        (b"/srv/a.b", b"/srv/a", False, False),
        (b"/srv", b"/srv/a", False, False),
        (b"/srv/a", b"/srv/a/", False, True),  # a trailing slash on the export is ignored
        (b"/srv/a/x", b"/srv/a/", False, True),
        (b"/srv/ab", b"/srv/a/", False, False),
        (b"/srv/a/x", b"/srv/a", True, False),
        (b"/srv/a", b"/srv/a", True, True),
        (b"/srv/a", b"/srv/a/", True, True),
        (b"/", b"/", False, True),
        (b"/srv/a", b"/", False, True),
        (b"/srv/a", b"/", True, False),
        (b"/srv/aXb", b"/srv/a.b", False, False),  # no regex: '.' is a dot (the RA's grep bug)
        (b"/srv/a", b"/srv/[a]", False, False),
    ],
)
def test_path_in_export(path: bytes, export: bytes, exact: bool, inside: bool) -> None:
    assert path_in_export(path, export, exact=exact) is inside


def components(path: bytes) -> list[bytes]:
    return [c for c in path.split(b"/") if c]


canonical_paths = st.lists(st.sampled_from([b"a", b"ab", b"a.b", b"b", b"x"]), max_size=3).map(
    lambda cs: b"/" + b"/".join(cs)
)
exports = st.builds(
    lambda p, slash: p + b"/" if slash and p != b"/" else p, canonical_paths, st.booleans()
)
export_entries = st.builds(Entry, st.sampled_from(CLIENTS), canonical_paths, counts)


@PROPS
@given(st.lists(export_entries, max_size=15), exports, st.booleans())
def test_select_export_is_component_prefix_and_partitions_the_table(
    xs: list[Entry], export: bytes, exact: bool
) -> None:
    t = Table(xs)
    want = components(export)

    def inside(e: Entry) -> bool:
        have = components(e.path)
        return have == want if exact else have[: len(want)] == want

    selected = t.select_export(export, exact=exact)
    rest = t.without_export(export, exact=exact)
    assert list(selected) == [e for e in t if inside(e)]
    assert list(rest) == [e for e in t if not inside(e)]
    assert selected.merged(rest) == t
    assert list(t.select_export(export, exact=True)) == [
        e for e in selected if components(e.path) == want
    ]


# --------------------------------------------------------------------------------------
# read_table against the naive reader
# --------------------------------------------------------------------------------------


class Expected(NamedTuple):
    entries: list[Entry]
    lines: int
    distinct_lines: int
    rejected: list[RejectedLine]
    mountd_stops_at_line: Optional[int]
    missing_final_newline: bool
    bytes_read: int


def naive_read(data: bytes) -> Expected:
    lines = data.split(b"\n")
    missing = lines[-1] != b""
    if not missing:
        lines.pop()
    found: list[Entry] = []
    rejected: dict[bytes, RejectedLine] = {}
    for number, line in enumerate(lines, 1):
        parsed = parse_line(line)
        if isinstance(parsed, Entry):
            found.append(parsed)
        elif line in rejected:
            rejected[line].occurrences += 1
        else:
            rejected[line] = RejectedLine(line, parsed.reason, number, 1)
    return Expected(
        entries=naive_merge(found),
        lines=len(lines),
        distinct_lines=len(set(lines)),
        rejected=list(rejected.values()),
        mountd_stops_at_line=mountd_read(data).stopped_at_line,
        missing_final_newline=missing,
        bytes_read=len(data),
    )


def observed(result: ReadResult) -> Expected:
    return Expected(
        entries=list(result.table),
        lines=result.lines,
        distinct_lines=result.distinct_lines,
        rejected=list(result.rejected),
        mountd_stops_at_line=result.mountd_stops_at_line,
        missing_final_newline=result.missing_final_newline,
        bytes_read=result.bytes_read,
    )


def eof_nuance(data: bytes) -> bool:
    """The last line lacks its newline and is a whole number of fgets pieces long.

    mountd then simply reaches EOF, but read_table (which cannot tell stops_mountd
    that the line is unterminated) reports a stop there: see test_table_pending.py.
    """
    last = data.rsplit(b"\n", 1)[-1]
    return last != b"" and len(last) % MAX_LINE == 0


def check_read(data: bytes, result: ReadResult) -> None:
    want = naive_read(data)
    got = observed(result)
    if eof_nuance(data):
        want = want._replace(mountd_stops_at_line=got.mountd_stops_at_line)
    assert got == want
    # the derived counters follow
    rejected_lines = sum(r.occurrences for r in want.rejected)
    assert result.rejected_lines == rejected_lines
    assert result.valid_lines == want.lines - rejected_lines
    assert result.duplicate_lines == want.lines - rejected_lines - len(want.entries)
    by_reason: dict[str, int] = {}
    for r in want.rejected:
        by_reason[r.reason.value] = by_reason.get(r.reason.value, 0) + r.occurrences
    assert result.rejected_by_reason() == by_reason
    # rejected lines carry their original bytes at their first line number
    lines = data.split(b"\n")
    for r in result.rejected:
        assert lines[r.first_line - 1] == r.line


_VALID = [format_entry(Entry(c, p, n)) for c in CLIENTS for p in PATHS[:3] for n in (1, 2)]
_SPELLINGS = [
    b"10.0.0.1:/srv/a:0x1\n",
    b"10.0.0.1:/srv/a:3\n",
    b"10.0.0.1:/srv/a\n",
    b"10.0.0.1:/srv/a:0x00000002\r\n",
    b"fe80::1:/srv/a:0x00000001\n",
    b"fe80;;1:/srv/a:0x00000005\n",
    b"::ffff:10.1.2.3:/srv/x\n",
    b"h:/srv/\xff\xfe:0x00000001\n",
]
_REJECTS = [
    b"\n",
    b"garbage\n",
    b"#10.0.0.1:/srv/a:0x00000001\n",
    b"10.0.0.1:/srv/a:08\n",
    b"10.0.0.1:/srv/a:0x00000001h:/p:0x00000001\n",
    b"h:/p\0:0x1\n",
    b":/srv/a:0x00000001\n",
    b"h:rel\n",
]
short_lines = st.sampled_from(_VALID + _SPELLINGS + _REJECTS)
long_lines = st.builds(
    lambda n, head: head + b"x" * n + b"\n",
    st.one_of(st.sampled_from([2042, 2043, 2044, 2045, 4089]), st.integers(2030, 4200)),
    st.sampled_from([b"h:/", b"h", b"h:/p:0x"]),
)


def files(lines: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Concatenated lines, sometimes with the last newline cut off (a torn write)."""
    return st.builds(
        lambda ls, cut: b"".join(ls)[:-1] if cut and ls else b"".join(ls),
        st.lists(lines, max_size=20),
        st.booleans(),
    )


small_files = files(short_lines | st.binary(max_size=6).map(lambda b: b + b"\n"))
big_files = files(short_lines | long_lines)


@PROPS
@given(small_files)
@example(b"")
@example(b"\n")
@example(b"h:/p:0x00000001")
@example(b"a:/p\nb:/q\n\nc:/r\n")
def test_read_table_at_every_chunk_size_equals_the_naive_reader(data: bytes) -> None:
    for chunk_size in range(1, len(data) + 3):
        check_read(data, read_table(io.BytesIO(data), chunk_size=chunk_size))
    check_read(data, read_bytes(data))


@PROPS
@given(big_files, st.lists(st.integers(1, 9000), max_size=3))
@example(b"h:/" + b"x" * 2043 + b"\nh:/p:0x00000001\n", [2046])
def test_read_table_with_long_lines_equals_the_naive_reader(data: bytes, sizes: list[int]) -> None:
    n = len(data)
    for chunk_size in {1, 2, 3, 2045, 2046, 2047, 4096, max(n - 1, 1), n + 1, *sizes}:
        check_read(data, read_table(io.BytesIO(data), chunk_size=chunk_size))
    check_read(data, read_bytes(data))


@PROPS
@given(small_files.map(lambda d: d if d.endswith(b"\n") or not d else d + b"\n"))
def test_reading_a_file_appended_to_itself_gives_the_same_table(data: bytes) -> None:
    """The 2012 resource agent's restore, ``cat backup >> rmtab``, changes nothing."""
    once = read_bytes(data)
    twice = read_bytes(data + data)
    assert list(twice.table) == list(once.table)
    assert twice.lines == 2 * once.lines
    assert twice.distinct_lines == once.distinct_lines
    assert [(r.line, r.first_line, r.occurrences) for r in twice.rejected] == [
        (r.line, r.first_line, 2 * r.occurrences) for r in once.rejected
    ]
    assert twice.mountd_stops_at_line == once.mountd_stops_at_line


@PROPS
@given(small_files.map(lambda d: d if d.endswith(b"\n") or not d else d + b"\n"), exports)
def test_appending_a_grep_backup_gives_the_same_table(data: bytes, export: bytes) -> None:
    """``grep ":$dir:" rmtab > backup; cat backup >> rmtab``, over and over."""
    backup = b"".join(
        line + b"\n" for line in data.split(b"\n")[:-1] if b":" + export + b":" in line
    )
    once = read_bytes(data)
    grown = data
    for _ in range(3):
        grown += backup
        assert list(read_bytes(grown).table) == list(once.table)


def test_a_torn_last_line_glues_onto_the_next_append() -> None:
    # why the tool must always end what it writes with a newline
    torn = b"10.0.0.1:/srv/a:0x00000001"
    result = read_bytes(torn + b"10.0.0.2:/srv/a:0x00000001\n")
    assert len(result.table) == 0
    assert [(r.reason, r.first_line) for r in result.rejected] == [(Reason.BAD_COUNT, 1)]


def test_missing_final_newline_is_reported_and_the_line_kept() -> None:
    result = read_bytes(b"a:/p:0x00000002\nb:/q")
    assert result.missing_final_newline
    assert result.lines == 2
    assert list(result.table) == [Entry(b"a", b"/p", 2), Entry(b"b", b"/q", 1)]
    full = read_bytes(b"a:/p:0x00000002\nb:/q\n")
    assert not full.missing_final_newline
    assert full.table == result.table


def test_empty_file() -> None:
    result = read_bytes(b"")
    assert (result.lines, len(result.table), result.rejected) == (0, 0, [])
    assert result.mountd_stops_at_line is None
    assert not result.missing_final_newline


def test_blank_line_is_where_mountd_stops_and_later_lines_still_count() -> None:
    data = b"a:/p:0x00000001\n\nb:/q:0x00000001\n\nc:/r:0x00000001\n"
    result = read_bytes(data)
    assert result.mountd_stops_at_line == 2
    assert [e.client for e in result.table] == [b"a", b"b", b"c"]  # we keep what mountd hides
    assert result.rejected == [RejectedLine(b"", Reason.BLANK, 2, 2)]
    assert mountd_read(data).stopped_at_line == 2


def test_seed_like_bloat_collapses_to_max_counts() -> None:
    base = b"".join(
        [
            b"10.0.0.1:/srv/a:0x00000001\n",
            b"10.0.0.2:/srv/a/x:0x00000001\n",
            b"fe80;;1:/srv/a:0x00000001\n",
        ]
    )
    bumped = base.replace(b"10.0.0.1:/srv/a:0x00000001", b"10.0.0.1:/srv/a:0x00000002")
    data = base
    for _ in range(6):  # every failover doubled the file
        data += data
    data += bumped + b"garbage\n" + base
    result = read_table(io.BytesIO(data), chunk_size=7)
    assert list(result.table) == [
        Entry(b"10.0.0.1", b"/srv/a", 2),
        Entry(b"10.0.0.2", b"/srv/a/x", 1),
        Entry(b"fe80::1", b"/srv/a", 1),
    ]
    assert result.lines == 3 * 64 + 3 + 1 + 3
    assert result.distinct_lines == 5
    assert result.duplicate_lines == result.lines - 1 - 3
    assert result.rejected == [RejectedLine(b"garbage", Reason.NO_COLON, 3 * 64 + 4, 1)]
    assert result.mountd_stops_at_line == 3 * 64 + 4


def test_read_table_accepts_paths_and_file_objects(tmp_path: Path) -> None:
    data = b"a:/p:0x00000001\nb:/q:0x00000003\n"
    f = tmp_path / "rmtab"
    f.write_bytes(data)
    expected = observed(read_bytes(data))
    assert observed(read_table(f)) == expected
    assert observed(read_table(str(f))) == expected
    assert observed(read_table(os.fsencode(f))) == expected
    with f.open("rb") as fh:
        assert observed(read_table(fh)) == expected
        assert not fh.closed  # the caller's file stays the caller's

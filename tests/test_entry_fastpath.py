"""The fast path of parse_line (lines already canonical) against the full parser.

``_canonical_fields`` may only ever say "canonical, here are the fields" when the
full parser (``_parse_full``) reaches exactly that Entry; for everything else it
must say None and leave the line to the full parser. These properties check it
over arbitrary bytes and over lines built to sit on every edge of the canonical
form, and check that the reader, which skips ``stops_mountd`` for fast-path
lines, still reports what a line-by-line reader built on the full parser does.
"""

from __future__ import annotations

from typing import Union

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reader_oracle import figures, naive_read

from rmtabtool import (
    MAX_CLIENT,
    MAX_COUNT,
    MAX_LINE,
    MAX_PATH,
    Entry,
    ReadResult,
    Rejected,
    format_entry,
    parse_line,
    read_bytes,
    read_table,
    stops_mountd,
)
from rmtabtool.entry import _canonical_fields, _parse_canonical, _parse_full

PROPS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# the reader properties parse whole files: fewer examples
FILES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Parsed = Union[Entry, Rejected]


def same(a: Parsed, b: Parsed) -> bool:
    """Equal results of the same class, with fields of the same types."""
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, Entry) and isinstance(b, Entry):
        return (type(a.client), type(a.path), type(a.count)) == (
            type(b.client),
            type(b.path),
            type(b.count),
        )
    return True


def check_line(line: bytes) -> None:
    """The whole contract of the fast path, for one input."""
    full = _parse_full(line)
    assert same(parse_line(line), full), line
    fields = _canonical_fields(line)
    fast = _parse_canonical(line)
    if fields is None:
        assert fast is None
        return
    assert isinstance(full, Entry), (line, full)
    assert fields == (full.client, full.path, full.count)
    assert fast is not None
    assert same(fast, full)
    # the reader skips stops_mountd() for these lines: it must be false
    assert not stops_mountd(line, terminated=True)
    assert not stops_mountd(line, terminated=False)


# ---------------------------------------------------------------- building lines

#: bytes that matter to some rule of the parser, plus ordinary ones
SPECIAL = b"0123456789abcdefABCDEFxX.;:%/#_- \t\r\n\v\f\x00\x1c\x7f\x80\xff"
field_bytes = st.binary(max_size=40) | st.lists(
    st.sampled_from(sorted(set(SPECIAL))), max_size=40
).map(bytes)


@st.composite
def counts(draw: st.DrawFn) -> bytes:
    """A count field: mostly 0x%08x, else every near miss."""
    value = draw(st.sampled_from([0, 1, 2, 0xA, 0x7FFFFFFF, MAX_COUNT]) | st.integers(0, MAX_COUNT))
    kind = draw(st.sampled_from(["canonical"] * 4 + ["upper", "width", "prefix", "junk", "none"]))
    if kind == "canonical":
        return b":0x%08x" % value
    if kind == "upper":
        return b":0x%08X" % value
    if kind == "width":
        width = draw(st.sampled_from([0, 1, 7, 9, 10, 16]))
        return b":0x%0*x" % (width, value) if width else b":0x"
    if kind == "prefix":
        prefix = draw(st.sampled_from([b"0X", b"", b"0", b"+0x", b"-0x", b" 0x", b"0x "]))
        return b":" + prefix + b"%08x" % value
    if kind == "junk":
        return b":0x%08x" % value + draw(field_bytes)
    return b""


@st.composite
def canonical_looking(draw: st.DrawFn) -> bytes:
    """client:path:count plus an ending, each part canonical or just off it."""
    client = draw(
        st.sampled_from(
            [
                b"10.0.0.1",
                b"fe80;;1",
                b"fe80;;1%eth0",
                b"fe80::1",
                b"::ffff:10.1.2.3",
                b"host-name.example",
                b"#10.0.0.1",
                b"",
                b"a b",
                b"a\x00b",
                b"\xff\x80",
            ]
        )
        | field_bytes
    )
    path = draw(
        st.sampled_from([b"/", b"/srv/nfs", b"/a b", b"/a#b", b"/a\rb", b"/x\x80", b"", b"srv"])
        | field_bytes.map(lambda b: b"/" + b)
        | field_bytes
    )
    # stretch a field to the length limits (client 1024, path 1024, line 2046)
    stretch = draw(st.sampled_from([None, "client", "path", "both"]))
    if stretch in ("client", "both"):
        client = client + b"c" * max(
            0, draw(st.integers(MAX_CLIENT - 3, MAX_CLIENT + 2)) - len(client)
        )
    if stretch in ("path", "both"):
        path = (path or b"/") + b"p" * max(
            0, draw(st.integers(MAX_PATH - 3, MAX_PATH + 2)) - len(path or b"/")
        )
    ending = draw(
        st.sampled_from([b"\n", b"", b"\r\n", b"\r", b"\n\n", b"\n\r", b" \n", b"\x00\n"])
    )
    return client + b":" + path + draw(counts()) + ending


def boundary_lines() -> list[bytes]:
    """Canonical lines of every length around the limits, with and without '\\n'."""
    lines = []
    for client_len in (1, MAX_CLIENT - 1, MAX_CLIENT, MAX_CLIENT + 1):
        for total in (MAX_LINE - 2, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1):
            path_len = total - client_len - 1 - len(b":0x00000001\n")
            for plen in (path_len, 1, MAX_PATH - 1, MAX_PATH, MAX_PATH + 1):
                if plen < 1:
                    continue
                line = b"c" * client_len + b":/" + b"p" * (plen - 1) + b":0x00000001\n"
                lines += [line, line[:-1]]
    return lines


# ---------------------------------------------------------------- the properties


@PROPS
@given(st.binary(max_size=200))
@example(b"")
@example(b"\n")
@example(b"h:/p:0x00000001")
@example(b"h:/p:0x00000001\n")
@example(b"h:/p:0x00000001\r\n")
@example(b"h:/p:0x00000001\n\n")
@example(b"h:/p:0x0000000A\n")
@example(b"h:/p:0X0000000a\n")
@example(b"h:/p:0x0000001\n")
@example(b"h:/p:0x000000001\n")
@example(b"h:/p:0x00000000\n")
@example(b"h:/p:0xffffffff\n")
@example(b"fe80;;1%eth0:/srv:0x00000001\n")
@example(b"fe80::1:/srv:0x00000001\n")
@example(b"::/srv:0x00000001\n")
@example(b"1.2.3.4:5:/x:0x00000001\n")
@example(b"h:/:0x00000001\n")
@example(b"h::0x00000001\n")
@example(b"h:/a:b:0x00000001\n")
@example(b"h:/a b\t\r#:0x00000001\n")
@example(b"a b:/p:0x00000001\n")
@example(b"h\r:/p:0x00000001\n")
@example(b"h\x0b:/p:0x00000001\n")
@example(b"h\x1c:/p:0x00000001\n")
@example(b"#h:/p:0x00000001\n")
@example(b"h#:/p:0x00000001\n")
@example(b"h:/p\x00:0x00000001\n")
@example(b"h:/p:0x00000001\x00")
@example(b":/p:0x00000001\n")
def test_fast_path_agrees_with_the_full_parser_on_any_bytes(line: bytes) -> None:
    check_line(line)


@PROPS
@given(canonical_looking())
def test_fast_path_agrees_with_the_full_parser_near_the_canonical_form(line: bytes) -> None:
    check_line(line)


@pytest.mark.parametrize("line", boundary_lines(), ids=lambda b: f"{len(b)}-{b.index(b':')}")
def test_fast_path_at_the_length_limits(line: bytes) -> None:
    check_line(line)


def test_very_long_lines_go_to_the_full_parser() -> None:
    for line in (b"h:/" + b"p" * 100_000 + b":0x00000001\n", b"c" * 100_000 + b":/p:0x00000001"):
        assert _canonical_fields(line) is None
        check_line(line)


@PROPS
@given(
    client=st.binary(min_size=1, max_size=60) | st.sampled_from([b"fe80::1", b"fe80::1%eth0"]),
    path=st.binary(max_size=60).map(lambda b: b"/" + b),
    count=st.integers(0, MAX_COUNT),
)
def test_every_canonical_line_takes_the_fast_path(client: bytes, path: bytes, count: int) -> None:
    """What rmtabtool (and mountd) write is never left to the slow path."""
    try:
        entry = Entry(client, path, count)
    except ValueError:
        return
    line = format_entry(entry)
    for text in (line, line[:-1]):
        assert _canonical_fields(text) == (entry.client, entry.path, entry.count)
        check_line(text)


def test_fast_path_is_taken_for_mountds_own_lines() -> None:
    assert _canonical_fields(b"10.0.0.1:/srv/x:0x00000001\n") == (b"10.0.0.1", b"/srv/x", 1)
    assert _canonical_fields(b"fe80;;1%eth0:/srv:0xffffffff") == (
        b"fe80::1%eth0",
        b"/srv",
        MAX_COUNT,
    )


# ---------------------------------------------------------------- the reader


def reference_read(data: bytes) -> ReadResult:
    """One line at a time with the full parser (no fast path) and stops_mountd on every line."""
    return naive_read(data, parse=_parse_full)


file_lines = st.lists(canonical_looking().map(lambda b: b.rstrip(b"\n")), max_size=40)


@st.composite
def files(draw: st.DrawFn) -> bytes:
    lines = draw(file_lines)
    # repeats with other counts: the merge law (max) on fast-path lines
    lines += [line.replace(b":0x00000001", b":0x00000002") for line in lines[:5]]
    data = b"\n".join(draw(st.permutations(lines)))
    return data + draw(st.sampled_from([b"\n", b""])) if data else data


@FILES
@given(files())
@example(b"h:/p:0x00000002\nh:/p:0x00000001\nh:/p:0x00000003\n")
@example(b"h:/p:0x00000001\n\nh:/q:0x00000001\n")
@example(b"h:/p:0x00000001\nh:/q:0x00000001")
@example(b"h:/" + b"p" * 2040 + b":0x00000001\n")
def test_reader_with_the_fast_path_reports_what_the_full_parser_gives(data: bytes) -> None:
    assert figures(read_bytes(data)) == figures(reference_read(data))


@FILES
@given(files())
def test_workers_with_the_fast_path_report_what_one_process_does(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("fast") / "rmtab"
    path.write_bytes(data)
    assert figures(read_table(path, jobs=2)) == figures(reference_read(data))

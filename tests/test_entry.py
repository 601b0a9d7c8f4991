"""One rmtab line <-> Entry: every normalisation and rejection of issue 2, and the laws.

The oracle for "what rpc.mountd makes of a line" is tests/mountd_model.py, written
from the reference, not from rmtabtool.entry.
"""

from __future__ import annotations

import pickle
from typing import Optional

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from mountd_model import (
    C_WHITESPACE,
    MountdEntry,
    MountdView,
    mountd_format,
    mountd_read,
    mountd_stops,
)

from rmtabtool import (
    MAX_CLIENT,
    MAX_COUNT,
    MAX_LINE,
    MAX_PATH,
    Entry,
    Reason,
    Rejected,
    format_entry,
    parse_count,
    parse_line,
    stops_mountd,
)

# modest: the whole property suite must stay well under a minute
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def on_disk(client: bytes) -> bytes:
    """The spelling mountd writes: IPv6 colons as ';' (from the reference)."""
    return client.replace(b":", b";")


def raw_of(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\n") else line


# --------------------------------------------------------------------------------------
# Table-driven: every normalisation of issue 2
# --------------------------------------------------------------------------------------

# fmt: off
C1024 = b"c" * 1024
NORMALISED = [
    # (id, input line, client, path, count, canonical line)
    ("canonical", b"10.0.0.1:/srv/x:0x00000001\n", b"10.0.0.1", b"/srv/x", 1,
     b"10.0.0.1:/srv/x:0x00000001\n"),
    ("canonical-no-newline", b"10.0.0.1:/srv/x:0x00000001", b"10.0.0.1", b"/srv/x", 1,
     b"10.0.0.1:/srv/x:0x00000001\n"),
    ("hex-short", b"h:/p:0x1\n", b"h", b"/p", 1, b"h:/p:0x00000001\n"),
    ("hex-upper-prefix-and-digits", b"h:/p:0XFF\n", b"h", b"/p", 255, b"h:/p:0x000000ff\n"),
    ("hex-mixed-case", b"h:/p:0xAbC\n", b"h", b"/p", 0xABC, b"h:/p:0x00000abc\n"),
    ("hex-wide", b"h:/p:0x000000000000000000002\n", b"h", b"/p", 2, b"h:/p:0x00000002\n"),
    ("hex-max", b"h:/p:0xffffffff\n", b"h", b"/p", MAX_COUNT, b"h:/p:0xffffffff\n"),
    ("decimal", b"h:/p:42\n", b"h", b"/p", 42, b"h:/p:0x0000002a\n"),
    ("decimal-zero", b"h:/p:0\n", b"h", b"/p", 0, b"h:/p:0x00000000\n"),
    ("decimal-max", b"h:/p:4294967295\n", b"h", b"/p", MAX_COUNT, b"h:/p:0xffffffff\n"),
    ("octal", b"h:/p:017\n", b"h", b"/p", 15, b"h:/p:0x0000000f\n"),
    ("octal-zeros", b"h:/p:000\n", b"h", b"/p", 0, b"h:/p:0x00000000\n"),
    ("no-count-means-1", b"h:/p\n", b"h", b"/p", 1, b"h:/p:0x00000001\n"),
    ("no-count-no-newline", b"h:/p", b"h", b"/p", 1, b"h:/p:0x00000001\n"),
    ("clamp-hex-33-bits", b"h:/p:0x100000000\n", b"h", b"/p", MAX_COUNT, b"h:/p:0xffffffff\n"),
    ("clamp-decimal", b"h:/p:4294967296\n", b"h", b"/p", MAX_COUNT, b"h:/p:0xffffffff\n"),
    ("clamp-octal", b"h:/p:040000000000\n", b"h", b"/p", MAX_COUNT, b"h:/p:0xffffffff\n"),
    ("clamp-64-bit", b"h:/p:0xffffffffffffffffffff\n", b"h", b"/p", MAX_COUNT,
     b"h:/p:0xffffffff\n"),
    # Python refuses int() on > 4300 decimal digits: the parser must not.
    ("clamp-5000-decimal-digits", b"h:/p:" + b"9" * 5000 + b"\n", b"h", b"/p", MAX_COUNT,
     b"h:/p:0xffffffff\n"),
    ("clamp-5000-hex-digits", b"h:/p:0x" + b"f" * 5000 + b"\n", b"h", b"/p", MAX_COUNT,
     b"h:/p:0xffffffff\n"),
    ("crlf-with-count", b"h:/p:0x00000003\r\n", b"h", b"/p", 3, b"h:/p:0x00000003\n"),
    ("crlf-without-count", b"h:/p\r\n", b"h", b"/p", 1, b"h:/p:0x00000001\n"),
    ("cr-without-newline", b"h:/p:7\r", b"h", b"/p", 7, b"h:/p:0x00000007\n"),
    ("ipv6-raw", b"fe80::1:/srv/x:0x00000001\n", b"fe80::1", b"/srv/x", 1,
     b"fe80;;1:/srv/x:0x00000001\n"),
    ("ipv6-raw-no-count", b"fe80::1:/srv/x\n", b"fe80::1", b"/srv/x", 1,
     b"fe80;;1:/srv/x:0x00000001\n"),
    ("ipv6-raw-v4-mapped", b"::ffff:10.1.2.3:/srv/x\n", b"::ffff:10.1.2.3", b"/srv/x", 1,
     b";;ffff;10.1.2.3:/srv/x:0x00000001\n"),
    ("ipv6-raw-scope", b"fe80::1%eth0:/srv/x:0x00000002\n", b"fe80::1%eth0", b"/srv/x", 2,
     b"fe80;;1%eth0:/srv/x:0x00000002\n"),
    ("ipv6-raw-unspecified", b":::/srv/x:0x1\n", b"::", b"/srv/x", 1,
     b";;:/srv/x:0x00000001\n"),
    ("ipv6-raw-full", b"2001:db8:0:0:0:0:0:1:/srv/x:0x1\n", b"2001:db8:0:0:0:0:0:1",
     b"/srv/x", 1, b"2001;db8;0;0;0;0;0;1:/srv/x:0x00000001\n"),
    ("ipv6-raw-root-path", b"::1:/:0x00000001\n", b"::1", b"/", 1, b";;1:/:0x00000001\n"),
    ("ipv6-raw-crlf", b"fe80::1:/srv/x\r\n", b"fe80::1", b"/srv/x", 1,
     b"fe80;;1:/srv/x:0x00000001\n"),
    ("ipv6-semicolons", b"fe80;;1:/srv/x:0x00000001\n", b"fe80::1", b"/srv/x", 1,
     b"fe80;;1:/srv/x:0x00000001\n"),
    ("ipv6-semicolons-scope", b"fe80;;1%eth0:/srv/x:0x1\n", b"fe80::1%eth0", b"/srv/x", 1,
     b"fe80;;1%eth0:/srv/x:0x00000001\n"),
    ("ipv6-semicolons-v4-mapped", b";;ffff;10.1.2.3:/srv/x\n", b"::ffff:10.1.2.3", b"/srv/x", 1,
     b";;ffff;10.1.2.3:/srv/x:0x00000001\n"),
    ("hostname", b"nfs-1.example.com:/srv/x:0x00000003\n", b"nfs-1.example.com", b"/srv/x", 3,
     b"nfs-1.example.com:/srv/x:0x00000003\n"),
    ("path-not-utf8", b"h:/srv/\xff\xfe\x80:0x00000001\n", b"h", b"/srv/\xff\xfe\x80", 1,
     b"h:/srv/\xff\xfe\x80:0x00000001\n"),
    ("client-not-utf8", b"\xc3(\xff:/srv/x:0x1\n", b"\xc3(\xff", b"/srv/x", 1,
     b"\xc3(\xff:/srv/x:0x00000001\n"),
    ("path-with-blank", b"h:/srv/my dir:0x00000001\n", b"h", b"/srv/my dir", 1,
     b"h:/srv/my dir:0x00000001\n"),
    ("path-root", b"h:/:0x00000001\n", b"h", b"/", 1, b"h:/:0x00000001\n"),
    ("path-hash-inside", b"h:/srv/#x:0x00000001\n", b"h", b"/srv/#x", 1,
     b"h:/srv/#x:0x00000001\n"),
    ("client-1024-at-line-limit", C1024 + b":/" + b"p" * 1008 + b":0x00000001\n", C1024,
     b"/" + b"p" * 1008, 1, C1024 + b":/" + b"p" * 1008 + b":0x00000001\n"),
    ("path-1024-at-line-limit", b"c" * 1009 + b":/" + b"p" * 1023 + b"\n", b"c" * 1009,
     b"/" + b"p" * 1023, 1, b"c" * 1009 + b":/" + b"p" * 1023 + b":0x00000001\n"),
]
# fmt: on


@pytest.mark.parametrize(
    ("line", "client", "path", "count", "canonical"),
    [pytest.param(*row[1:], id=str(row[0])) for row in NORMALISED],
)
def test_parse_line_normalises_to_what_mountd_writes(
    line: bytes, client: bytes, path: bytes, count: int, canonical: bytes
) -> None:
    entry = parse_line(line)
    assert entry == Entry(client, path, count)
    assert isinstance(entry, Entry)
    assert (entry.client, entry.path, entry.count) == (client, path, count)
    out = format_entry(entry)
    assert out == canonical
    # and what we write is what mountd reads back, and writes again, unchanged
    assert len(out) <= MAX_LINE
    seen = mountd_read(out)
    assert seen == MountdView([MountdEntry(on_disk(client), path, count)], None)
    assert mountd_format(seen.entries[0]) == out


def test_canonical_line_limit_is_2046_bytes_with_newline() -> None:
    widest = next(r for r in NORMALISED if r[0] == "client-1024-at-line-limit")[5]
    assert len(widest) == MAX_LINE == 2046


# --------------------------------------------------------------------------------------
# Table-driven: every rejection, by reason
# --------------------------------------------------------------------------------------

REJECTED = [
    (Reason.BLANK, b""),
    (Reason.BLANK, b"\n"),
    (Reason.BLANK, b"   \n"),
    (Reason.BLANK, b"\t\n"),
    (Reason.BLANK, b"\r\n"),
    (Reason.NO_COLON, b"garbage\n"),
    (Reason.NO_COLON, b"10.0.0.1 /srv/x 0x00000001\n"),
    (Reason.NO_COLON, b"h\r\n"),
    (Reason.EMPTY_CLIENT, b":/srv/x:0x00000001\n"),
    (Reason.EMPTY_CLIENT, b":/srv/x\n"),
    (Reason.EMPTY_CLIENT, b":/srv/x:zz\n"),
    # '::' followed by a path is not an IPv6 address plus a path: no client at all
    (Reason.EMPTY_CLIENT, b"::/srv/x\n"),
    (Reason.CLIENT_WHITESPACE, b"a b:/srv/x:0x00000001\n"),
    (Reason.CLIENT_WHITESPACE, b" h:/srv/x:0x00000001\n"),
    (Reason.CLIENT_WHITESPACE, b"h\t:/srv/x\n"),
    (Reason.CLIENT_WHITESPACE, b"h\r:/srv/x:0x1\n"),
    (Reason.PATH_NOT_ABSOLUTE, b"h:srv/x:0x00000001\n"),
    (Reason.PATH_NOT_ABSOLUTE, b"h::0x00000001\n"),
    (Reason.PATH_NOT_ABSOLUTE, b"h:\n"),
    (Reason.PATH_NOT_ABSOLUTE, b"h: /srv/x\n"),
    # mountd's own misreading of a raw IPv6 client with a relative path
    (Reason.PATH_NOT_ABSOLUTE, b"fe80::1:srv\n"),
    # only a real IPv6 address is recovered from raw colons
    (Reason.PATH_NOT_ABSOLUTE, b"1.2.3.4:5:/srv/x\n"),
    (Reason.PATH_NOT_ABSOLUTE, b"ab:cd:/srv/x:0x00000001\n"),
    (Reason.PATH_COLON, b"h:/srv/a:b:0x00000001\n"),
    (Reason.PATH_COLON, b"h:/srv/a:/b\n"),
    (Reason.PATH_COLON, b"h:/a:b\n"),
    (Reason.PATH_COLON, b"fe80::1:/srv/a:b\n"),
    (Reason.BAD_COUNT, b"h:/p:\n"),
    (Reason.BAD_COUNT, b"h:/p:08\n"),
    (Reason.BAD_COUNT, b"h:/p:09\n"),
    (Reason.BAD_COUNT, b"h:/p:+1\n"),
    (Reason.BAD_COUNT, b"h:/p:-1\n"),
    (Reason.BAD_COUNT, b"h:/p: 1\n"),
    (Reason.BAD_COUNT, b"h:/p:\t1\n"),
    (Reason.BAD_COUNT, b"h:/p:1 \n"),
    (Reason.BAD_COUNT, b"h:/p:0x00000001 \n"),
    (Reason.BAD_COUNT, b"h:/p:0x\n"),
    (Reason.BAD_COUNT, b"h:/p:0x1g\n"),
    (Reason.BAD_COUNT, b"h:/p:12abc\n"),
    (Reason.BAD_COUNT, b"h:/p:0x00000001\r\r\n"),
    # two entries glued by a missing newline (mountd's append after a torn write)
    (Reason.BAD_COUNT, b"h:/p:0x00000001h2:/q:0x00000001\n"),
    (Reason.BAD_COUNT, b"h:/p:0x000000010.0.0.2:/q:0x00000001\n"),
    (Reason.BAD_COUNT, b"h:/p:0x00000001:0x00000001\n"),
    (Reason.NUL_BYTE, b"\0\n"),
    (Reason.NUL_BYTE, b"h:/p\0:0x00000001\n"),
    (Reason.NUL_BYTE, b"h\0:/p:0x00000001\n"),
    (Reason.NUL_BYTE, b"h:/p:0x00000001\0\n"),
    (Reason.CLIENT_TOO_LONG, b"c" * 1025 + b":/p:0x00000001\n"),
    (Reason.CLIENT_TOO_LONG, b"c" * 5000 + b":/p\n"),
    (Reason.PATH_TOO_LONG, b"h:/" + b"p" * 1024 + b":0x00000001\n"),
    (Reason.PATH_TOO_LONG, b"h:/" + b"p" * 5000 + b"\n"),
    (Reason.LINE_TOO_LONG, C1024 + b":/" + b"p" * 1009 + b":0x00000001\n"),
    (Reason.LINE_TOO_LONG, b"c" * 1010 + b":/" + b"p" * 1023 + b"\n"),
    (Reason.LINE_TOO_LONG, C1024 + b":/" + b"p" * 1023 + b"\n"),
    (Reason.COMMENT, b"#\n"),
    (Reason.COMMENT, b"# a comment\n"),
    (Reason.COMMENT, b"#10.0.0.1:/srv/x:0x00000001\n"),
    (Reason.COMMENT, b"#h:/p:zz\n"),
    (Reason.EMBEDDED_NEWLINE, b"h:/p:0x1\nh2:/q:0x1"),
    (Reason.EMBEDDED_NEWLINE, b"h:/p:0x1\nh2:/q:0x1\n"),
    (Reason.EMBEDDED_NEWLINE, b"h:/p\n\n"),
]


@pytest.mark.parametrize(
    ("reason", "line"),
    [pytest.param(r, line, id=f"{r.value}-{i}") for i, (r, line) in enumerate(REJECTED)],
)
def test_parse_line_rejects_with_reason_and_keeps_original_bytes(
    reason: Reason, line: bytes
) -> None:
    result = parse_line(line)
    assert isinstance(result, Rejected)
    assert result.reason is reason
    # nothing is silently lost: the original bytes minus the line terminator
    assert result.line == raw_of(line)
    assert reason.description


def test_every_reason_has_a_rejection_case() -> None:
    assert {r for r, _ in REJECTED} == set(Reason)


def test_reason_values_are_stable() -> None:
    # JSON output depends on these spellings
    assert {r.value for r in Reason} == {
        "blank",
        "no-colon",
        "empty-client",
        "client-whitespace",
        "path-not-absolute",
        "path-colon",
        "bad-count",
        "nul-byte",
        "client-too-long",
        "path-too-long",
        "line-too-long",
        "comment",
        "embedded-newline",
    }
    assert str(Reason.BAD_COUNT) == "bad-count"


def test_limits_are_mountds() -> None:
    assert (MAX_CLIENT, MAX_PATH, MAX_LINE, MAX_COUNT) == (1024, 1024, 2046, 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"0x1", 1),
        (b"0X1f", 31),
        (b"0x00000000", 0),
        (b"10", 10),
        (b"0", 0),
        (b"007", 7),
        (b"0x100000000", MAX_COUNT),
        (b"99999999999", MAX_COUNT),
        (b"9" * 5000, MAX_COUNT),
        (b"0" * 5000, 0),
        (b"0x" + b"0" * 5000 + b"1", 1),
        (b"", None),
        (b"08", None),
        (b"-1", None),
        (b"+1", None),
        (b" 1", None),
        (b"1 ", None),
        (b"0x", None),
        (b"x1", None),
        (b"1\n", None),
        (b"0b1", None),
    ],
)
def test_parse_count(field: bytes, value: Optional[int]) -> None:
    assert parse_count(field) == value


# --------------------------------------------------------------------------------------
# Entry: value semantics and validation
# --------------------------------------------------------------------------------------


def test_entry_is_an_immutable_value() -> None:
    e = Entry(b"fe80;;1", b"/srv/x", 2)
    assert e == Entry(b"fe80::1", b"/srv/x", 2)
    assert hash(e) == hash(Entry(b"fe80::1", b"/srv/x", 2))
    assert e.key == (b"fe80::1", b"/srv/x")
    assert e != Entry(b"fe80::1", b"/srv/x", 3)
    assert e.with_count(3) == Entry(b"fe80::1", b"/srv/x", 3)
    assert pickle.loads(pickle.dumps(e)) == e  # our own bytes, not untrusted input
    with pytest.raises(AttributeError):
        e.count = 5
    with pytest.raises(AttributeError):
        del e.path
    assert Entry(b"h", b"/p").count == 1


@pytest.mark.parametrize("count", [-1, MAX_COUNT + 1, True, 1.0, "1", None], ids=lambda c: repr(c))
def test_entry_rejects_counts_it_cannot_write(count: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        Entry(b"h", b"/p", count)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("client", "path"),
    [
        (b"", b"/p"),
        (b"#h", b"/p"),
        (b"a b", b"/p"),
        (b"h\n", b"/p"),
        (b"h\0", b"/p"),
        (b"h", b""),
        (b"h", b"p"),
        (b"h", b"/a:b"),
        (b"h", b"/a\nb"),
        (b"h", b"/a\0"),
        (b"c" * 1025, b"/p"),
        (b"h", b"/" + b"p" * 1024),
        (C1024, b"/" + b"p" * 1009),
    ],
)
def test_entry_rejects_what_cannot_be_represented(client: bytes, path: bytes) -> None:
    with pytest.raises(ValueError, match="invalid rmtab entry"):
        Entry(client, path, 1)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

_CLIENT_DROP = bytes(C_WHITESPACE) + b"\0"
_PATH_DROP = b":\n\0"


def _scoped(addr: str, scope: Optional[str]) -> bytes:
    return (addr + ("%" + scope if scope else "")).encode()


ipv6_clients = st.builds(
    _scoped,
    st.ip_addresses(v=6).map(str),
    st.none() | st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True),
)
byte_clients = (
    st.binary(min_size=1, max_size=24)
    .map(lambda b: b.translate(None, _CLIENT_DROP))
    .filter(lambda b: b != b"" and not b.startswith(b"#"))
)
long_clients = st.integers(1000, MAX_CLIENT).map(lambda n: b"c" * n)
clients = st.one_of(byte_clients, ipv6_clients, st.sampled_from([b"10.0.0.1", b"h"]), long_clients)

byte_paths = st.binary(max_size=32).map(lambda b: b"/" + b.translate(None, _PATH_DROP))
long_paths = st.integers(999, MAX_PATH - 1).map(lambda n: b"/" + b"\xe9" * n)
paths = st.one_of(byte_paths, long_paths)
counts = st.one_of(st.integers(0, MAX_COUNT), st.sampled_from([0, 1, 2, MAX_COUNT]))


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    client = draw(clients)
    path = draw(paths)
    # long client + long path may not fit one canonical line: shorten the path
    room = MAX_LINE - len(b":0x00000000\n") - 1 - len(client)
    if len(path) > room:
        path = path[: max(room, 1)]
    return Entry(client, path, draw(counts))


# fmt: off
_ATOMS = [
    b"h", b"10.0.0.1", b"fe80::1", b"fe80;;1", b"::ffff:10.1.2.3", b"%eth0", b":", b";",
    b"/", b"/srv/x", b"0x", b"0X", b"00000001", b"1", b"0", b"08", b"7", b"f", b"ffffffff",
    b"100000000", b"\r", b"\n", b"\0", b" ", b"\t", b"#", b"+", b"-", b"\xff", b"\xc3\xa9",
]
# fmt: on
atom_lines = st.lists(st.sampled_from(_ATOMS) | st.binary(max_size=3), max_size=12).map(b"".join)
count_fields = st.one_of(
    st.just(b""),
    st.sampled_from(
        [
            b":",
            b":0x00000001",
            b":0x1",
            b":7",
            b":017",
            b":08",
            b":0x",
            b":0x100000000",
            b":1 ",
            b": 1",
            b":-1",
            b":0x00000001\r",
            b":zz",
        ]
    ),
    st.integers(0, 2**70).map(lambda n: b":0x%x" % n),
    st.integers(0, 2**40).map(lambda n: b":%d" % n),
)
structured_lines = st.builds(
    lambda c, p, f, end: c + b":" + p + f + end,
    st.one_of(clients, ipv6_clients.map(on_disk), st.sampled_from([b"", b"#h", b"a b"])),
    st.one_of(paths, st.sampled_from([b"", b"rel", b"/a:b", b"/a\0b"])),
    count_fields,
    st.sampled_from([b"", b"\n", b"\r\n", b"\r"]),
)
# lines around fgets' 2046-byte piece boundary
long_lines = st.builds(
    lambda pre, n, post: pre + b"x" * n + post,
    st.sampled_from([b"h:/", b"h", b"", b"h:/p:0x", b":", b"h:/p:"]),
    st.one_of(
        st.integers(2025, 4100), st.sampled_from([2043, 2044, 2045, 2046, 4089, 4090, 4091, 4092])
    ),
    st.sampled_from([b"", b":0x00000001", b":", b"\r", b"\0", b"x:y"]),
)
rmtab_lines = st.one_of(atom_lines, structured_lines, long_lines, st.binary(max_size=64))


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@PROPS
@given(entries())
@example(Entry(b"fe80::1%eth0", b"/srv/\xff:x".replace(b":", b""), 2))
@example(Entry(b"::", b"/", 0))
@example(Entry(b"h", b"/p\r", 1))
def test_parse_of_format_is_identity(entry: Entry) -> None:
    line = format_entry(entry)
    assert parse_line(line) == entry
    assert parse_line(line[:-1]) == entry


@PROPS
@given(entries())
def test_every_formatted_line_is_read_unchanged_by_mountd(entry: Entry) -> None:
    line = format_entry(entry)
    assert len(line) <= MAX_LINE
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    seen = mountd_read(line)
    assert seen == MountdView([MountdEntry(on_disk(entry.client), entry.path, entry.count)], None)
    # canonical is a fixed point of mountd's own writer (UMNT rewrites, MNT in place)
    assert mountd_format(seen.entries[0]) == line


@PROPS
@given(st.one_of(rmtab_lines, st.binary()))
def test_parse_line_never_raises_and_keeps_rejected_bytes(line: bytes) -> None:
    result = parse_line(line)
    if isinstance(result, Rejected):
        assert result.line == raw_of(line)
        assert isinstance(result.reason, Reason)
    else:
        assert isinstance(result, Entry)
        # accepted means: representable as is
        assert Entry(result.client, result.path, result.count) == result
        assert parse_line(format_entry(result)) == result


@PROPS
@given(st.one_of(rmtab_lines, st.binary()))
def test_parse_line_takes_any_bytes_like_and_returns_plain_bytes(line: bytes) -> None:
    """A bytearray gave an Entry holding bytearrays (mutable, unhashable) and a
    memoryview raised AttributeError: both are copied to bytes first now."""
    expected = parse_line(line)
    for other in (bytearray(line), memoryview(line)):
        result = parse_line(other)
        assert result == expected
        if isinstance(result, Entry):
            assert (type(result.client), type(result.path)) == (bytes, bytes)
            assert hash(result) == hash(expected)
        else:
            assert type(result.line) is bytes


def test_parse_line_refuses_text() -> None:
    with pytest.raises(TypeError):
        parse_line("h:/p:0x00000001\n")  # type: ignore[arg-type]


@PROPS
@given(rmtab_lines)
@example(b"h:/p:0x00000001")
@example(b"h:/p:0x1\r")
@example(b"h:/p\r\r")
@example(b"fe80;;1:/srv/x:017")
def test_an_accepted_line_means_what_mountd_reads_in_it(line: bytes) -> None:
    """Apart from the documented normalisations, we read exactly what mountd reads."""
    result = parse_line(line)
    if not isinstance(result, Entry):
        return
    body = raw_of(line)
    body = body[:-1] if body.endswith(b"\r") else body  # CRLF: our normalisation
    if not body.startswith(on_disk(result.client) + b":"):
        # raw IPv6 client, which mountd misreads: our recovery, checked elsewhere
        assert b":" in result.client
        return
    if len(body) + 1 > MAX_LINE:
        return  # a wide count mountd would read in two pieces; we normalise it
    expected = MountdEntry(on_disk(result.client), result.path, result.count)
    assert mountd_read(body + b"\n") == MountdView([expected], None)


@PROPS
@given(rmtab_lines.filter(lambda b: b"\n" not in b))
@example(b"h:/" + b"x" * 2043)  # 2046 bytes + '\n': the '\n' is read alone, a blank line
@example(b"h:/" + b"x" * 2042)
@example(b"h:/" + b"x" * 2044 + b":")
@example(b"h:/" + b"x" * 4089)
@example(b"\0:")
@example(b"")
def test_stops_mountd_agrees_with_the_model(line: bytes) -> None:
    assert stops_mountd(line) == mountd_stops(line + b"\n")
    assert stops_mountd(line + b"\n") == mountd_stops(line + b"\n")


@PROPS
@given(rmtab_lines.filter(lambda b: b != b"" and b"\n" not in b))
@example(b"h:/" + b"x" * 2043)
@example(b"h:/" + b"x" * 4089)
def test_stops_mountd_on_an_unterminated_last_line(line: bytes) -> None:
    # at end of file with no '\n' there is no trailing "\n" piece to stop on
    assert stops_mountd(line, terminated=False) == mountd_stops(line)


def test_stops_mountd_on_blank_and_colonless_lines() -> None:
    assert stops_mountd(b"")
    assert stops_mountd(b"\n")
    assert stops_mountd(b"garbage")
    assert stops_mountd(b"#h:/p") is False  # a '#' line is just a client named '#h'
    assert not stops_mountd(b"h:/p:0x00000001\n")


@PROPS
@given(
    ipv6_clients,
    byte_paths,
    st.sampled_from([b"", b":0x00000002", b":2", b":0x2"]),
    st.sampled_from([b"", b"\n", b"\r\n"]),
)
@example(b"::ffff:10.1.2.3", b"/srv/x", b"", b"\n")
@example(b"::", b"/", b"", b"")
def test_both_ipv6_spellings_parse_to_equal_entries(
    addr: bytes, path: bytes, count: bytes, end: bytes
) -> None:
    # a path ending in CR with no count field reads as a CRLF line (policy: CR stripped)
    assume(count or not path.endswith(b"\r"))
    raw = parse_line(addr + b":" + path + count + end)
    semi = parse_line(on_disk(addr) + b":" + path + count + end)
    expected = Entry(addr, path, 2 if count else 1)
    assert raw == semi == expected
    assert isinstance(raw, Entry)
    assert raw.client == addr  # the world's spelling inside the library
    assert format_entry(raw).startswith(on_disk(addr) + b":")


def representable(client: bytes, path: bytes, count: int) -> bool:
    """Can (client, path, count) be written as one line mountd reads back unchanged?

    The mountd model decides the format limits (NUL, newline, ':' in the path, the
    1024 cuts, the 2046-byte fgets piece); the rest is rmtabtool's policy from
    issue 2 (no empty or '#' or blank-containing client, absolute paths).
    """
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
        return False
    client = on_disk(client.replace(b";", b":"))
    if client == b"" or client.startswith(b"#") or any(c in C_WHITESPACE for c in client):
        return False
    if not path.startswith(b"/"):
        return False
    line = b"%s:%s:0x%08x\n" % (client, path, count)
    return len(line) <= 2046 and mountd_read(line) == MountdView(
        [MountdEntry(client, path, count)], None
    )


@PROPS
@given(
    st.one_of(clients, st.binary(max_size=12), st.sampled_from([b"", b"#", b"a\tb", b"c" * 1025])),
    st.one_of(paths, st.binary(max_size=12), st.sampled_from([b"/" + b"p" * 1024, b"/a:b"])),
    st.one_of(counts, st.integers(), st.sampled_from([-1, MAX_COUNT + 1])),
)
def test_entry_accepts_exactly_what_can_be_represented(
    client: bytes, path: bytes, count: int
) -> None:
    try:
        entry = Entry(client, path, count)
    except ValueError:
        assert not representable(client, path, count)
    else:
        assert representable(client, path, count)
        assert parse_line(format_entry(entry)) == entry

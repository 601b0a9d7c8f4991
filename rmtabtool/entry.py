"""One rmtab line <-> one :class:`Entry`.

This module owns the rmtab line format: how rpc.mountd reads a line
(``fgetrmtabent`` in nfs-utils), how it writes one (``%s:%s:0x%.8x\\n`` with IPv6
colons as ``;``), and rmtabtool's policy for everything in between: which
spellings are normalised to the canonical form and which lines are rejected,
each with a stable reason code. Nothing here raises on bad input: a line is
either an Entry or a :class:`Rejected` that carries the original bytes.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Callable, Optional, Union

__all__ = [
    "MAX_CLIENT",
    "MAX_COUNT",
    "MAX_LINE",
    "MAX_PATH",
    "Entry",
    "Reason",
    "Rejected",
    "format_entry",
    "parse_count",
    "parse_line",
    "stops_mountd",
]

#: mountd keeps at most this many bytes of a client (NFSCLNT_IDMAX).
MAX_CLIENT = 1024
#: mountd keeps at most this many bytes of a path (NFS_MAXPATHLEN).
MAX_PATH = 1024
#: mountd's fgets() hands out at most this many bytes of a line at once; the
#: rest of a longer line is parsed as a separate, bogus entry.
MAX_LINE = 2046
#: counts are 32-bit in the file; mountd clamps anything larger.
MAX_COUNT = 0xFFFFFFFF

# Width of ":0x%08x\n" -- every canonical line ends with exactly this many bytes.
_COUNT_SUFFIX_LEN = len(b":0x00000000\n")


class Reason(str, enum.Enum):
    """Why a line was rejected. The values are stable: they appear in JSON output."""

    BLANK = "blank"
    NO_COLON = "no-colon"
    EMPTY_CLIENT = "empty-client"
    CLIENT_WHITESPACE = "client-whitespace"
    PATH_NOT_ABSOLUTE = "path-not-absolute"
    PATH_COLON = "path-colon"
    BAD_COUNT = "bad-count"
    NUL_BYTE = "nul-byte"
    CLIENT_TOO_LONG = "client-too-long"
    PATH_TOO_LONG = "path-too-long"
    LINE_TOO_LONG = "line-too-long"
    COMMENT = "comment"
    EMBEDDED_NEWLINE = "embedded-newline"

    def __str__(self) -> str:
        return self.value

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Reason.BLANK: "blank line (rpc.mountd stops reading here)",
    Reason.NO_COLON: "no ':' in the line (rpc.mountd stops reading here)",
    Reason.EMPTY_CLIENT: "empty client",
    Reason.CLIENT_WHITESPACE: "client contains whitespace",
    Reason.PATH_NOT_ABSOLUTE: "path is not absolute",
    Reason.PATH_COLON: "path contains ':' (not representable in rmtab)",
    Reason.BAD_COUNT: "count field is not a clean number",
    Reason.NUL_BYTE: "line contains a NUL byte",
    Reason.CLIENT_TOO_LONG: f"client longer than {MAX_CLIENT} bytes",
    Reason.PATH_TOO_LONG: f"path longer than {MAX_PATH} bytes",
    Reason.LINE_TOO_LONG: f"canonical line longer than {MAX_LINE} bytes",
    Reason.COMMENT: "'#' comment line (rpc.mountd has no comments)",
    Reason.EMBEDDED_NEWLINE: "more than one line given",
}

# The regular expressions are compiled on first use, not at import time: the
# start-up of a command on a small file is mostly import time (docs/performance.md).
# Each ``_match_*`` name starts as a stub that compiles its pattern, rebinds the
# name to the compiled ``fullmatch`` and delegates: later calls cost nothing more.
_Matcher = Callable[[bytes], Optional["re.Match[bytes]"]]


def _lazy(name: str, pattern: bytes) -> _Matcher:
    def first_use(text: bytes) -> Optional[re.Match[bytes]]:
        match: _Matcher = re.compile(pattern).fullmatch
        globals()[name] = match
        return match(text)

    return first_use


# strtol(s, NULL, 0), but only when it consumes the whole field: hex with 0x,
# octal with a leading 0, decimal otherwise.
_match_count = _lazy("_match_count", rb"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
# Significant digits of MAX_COUNT per base: 0xffffffff, 037777777777, 4294967295.
_MAX_DIGITS = {16: 8, 8: 11, 10: 10}
_WHITESPACE = frozenset(b" \t\n\r\v\f")
# What a raw (colon-spelled) IPv6 client can look like, scope id included.
_match_ipv6 = _lazy("_match_ipv6", rb"[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9_.-]+)?")
# A line exactly as rpc.mountd writes it (``%s:%s:0x%.8x\n``; the ``\n`` optional),
# whose fields pass every check of :func:`_check`: a client of 1 to MAX_CLIENT bytes,
# none of them NUL, whitespace (exactly ``_WHITESPACE``) or ':', not starting with
# '#'; an absolute path of at most MAX_PATH bytes with no NUL, newline or ':'; and
# 8 lower-case hex digits. The length of the whole line is checked apart.
# See :func:`_canonical_fields`.
_match_canonical = _lazy(
    "_match_canonical",
    rb"([^\x00\t\n\v\f\r #:][^\x00\t\n\v\f\r :]{0,%d}):(/[^\x00\n:]{0,%d}):0x([0-9a-f]{8})\n?"
    % (MAX_CLIENT - 1, MAX_PATH - 1),
)


class Entry:
    """One mount record: ``client`` mounted ``path``, ``count`` MNTs without a UMNT.

    ``client`` is the address as the world writes it (``fe80::1``); the on-disk
    ``;`` spelling is accepted and normalised, so ``Entry(b"fe80;;1", ...)`` equals
    ``Entry(b"fe80::1", ...)``. Construction validates: every Entry can be written
    as a line that rpc.mountd reads back unchanged.
    """

    __slots__ = ("client", "count", "path")

    client: bytes
    path: bytes
    count: int

    def __init__(self, client: bytes, path: bytes, count: int = 1) -> None:
        client = bytes(client).replace(b";", b":")
        path = bytes(path)
        reason = _check(client, path, count)
        if reason is not None:
            raise ValueError(f"invalid rmtab entry ({reason.description}): {client!r} {path!r}")
        object.__setattr__(self, "client", client)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "count", int(count))

    @classmethod
    def _trusted(cls, client: bytes, path: bytes, count: int) -> Entry:
        """Build without re-validating (the parser has already checked)."""
        self = object.__new__(cls)
        object.__setattr__(self, "client", client)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "count", count)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Entry is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Entry is immutable")

    @property
    def key(self) -> tuple[bytes, bytes]:
        """The identity of a mount: (client, path). The count is not part of it."""
        return (self.client, self.path)

    def with_count(self, count: int) -> Entry:
        return Entry(self.client, self.path, count)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (self.client, self.path, self.count) == (other.client, other.path, other.count)

    def __hash__(self) -> int:
        return hash((self.client, self.path, self.count))

    def __repr__(self) -> str:
        return f"Entry(client={self.client!r}, path={self.path!r}, count={self.count})"

    def __reduce__(self) -> tuple[type[Entry], tuple[bytes, bytes, int]]:
        return (Entry, (self.client, self.path, self.count))


class Rejected:
    """A line rmtabtool will not turn into an Entry, with its original bytes.

    ``line`` is exactly what was read, without the terminating ``\\n`` (a ``\\r``
    stays), so it can be written back byte for byte.
    """

    __slots__ = ("line", "reason")

    line: bytes
    reason: Reason

    def __init__(self, line: bytes, reason: Reason) -> None:
        object.__setattr__(self, "line", line)
        object.__setattr__(self, "reason", reason)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Rejected is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rejected):
            return NotImplemented
        return (self.line, self.reason) == (other.line, other.reason)

    def __hash__(self) -> int:
        return hash((self.line, self.reason))

    def __repr__(self) -> str:
        return f"Rejected(line={self.line!r}, reason={self.reason.value!r})"


def _check(client: bytes, path: bytes, count: int) -> Optional[Reason]:
    """Why (client, path, count) cannot be a canonical rmtab line, or None."""
    if not client:
        return Reason.EMPTY_CLIENT
    if b"\0" in client or b"\0" in path:
        return Reason.NUL_BYTE
    if b"\n" in client or b"\n" in path:
        return Reason.EMBEDDED_NEWLINE
    if client[0] == 0x23:  # '#'
        return Reason.COMMENT
    if not _WHITESPACE.isdisjoint(client):
        return Reason.CLIENT_WHITESPACE
    if not path.startswith(b"/"):
        return Reason.PATH_NOT_ABSOLUTE
    if b":" in path:
        return Reason.PATH_COLON
    if len(client) > MAX_CLIENT:
        return Reason.CLIENT_TOO_LONG
    if len(path) > MAX_PATH:
        return Reason.PATH_TOO_LONG
    if len(client) + 1 + len(path) + _COUNT_SUFFIX_LEN > MAX_LINE:
        return Reason.LINE_TOO_LONG
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
        return Reason.BAD_COUNT
    return None


def parse_count(field: bytes) -> Optional[int]:
    """Read a count field the way ``strtol(field, NULL, 0)`` does, or None.

    Only a field that strtol consumes entirely is accepted (no sign, no blanks,
    no trailing junk); values past 32 bits clamp to 0xffffffff like mountd.
    """
    if _match_count(field) is None:
        return None
    if field[:2] in (b"0x", b"0X"):
        digits, base = field[2:], 16
    elif field[:1] == b"0":
        digits, base = field[1:], 8
    else:
        digits, base = field, 10
    # Any width is legal, but int() refuses more than 4300 decimal digits (and
    # is slow on huge ones): a number with more significant digits than
    # 0xffffffff has in its base is past 32 bits, so it clamps without int().
    digits = digits.lstrip(b"0")
    if len(digits) > _MAX_DIGITS[base]:
        return MAX_COUNT
    return min(int(digits or b"0", base), MAX_COUNT)


def _is_ipv6(text: bytes) -> bool:
    """Is ``text`` an IPv6 address (optionally with a ``%scope``)?"""
    if _match_ipv6(text) is None:
        return False
    try:
        ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        return False
    return True


def _split_client(body: bytes) -> tuple[bytes, bytes]:
    """Split ``client:rest``; a raw IPv6 client ends at the ':' before the first ':/'.

    Only a real IPv6 address is recovered that way: ``::/srv/x`` is an empty
    client (not the "address" ``:``), ``1.2.3.4:5:/x`` a relative path.
    """
    first = body.find(b":")
    cut = body.find(b":/")
    if cut <= first or not _is_ipv6(body[:cut]):
        cut = first
    return body[:cut], body[cut + 1 :]


def _canonical_fields(line: bytes) -> Optional[tuple[bytes, bytes, int]]:
    """(client, path, count) of an already canonical line, or None: then ask :func:`_parse_full`.

    The fast path of :func:`parse_line` for what mountd itself writes (most lines
    of every real file): one regular-expression match instead of the full
    parser's dozen steps. It accepts only lines for which the full parser
    reaches the same Entry with no decision to make: the client ends at the
    first ':' (no raw IPv6 to recover, since the path starts with '/'), the count
    is exactly ``0x`` and 8 lower-case hex digits, and every check of
    :func:`_check` holds. Anything else (a CR, upper-case or other widths, a
    missing count, a rejected line...) returns None, never a different answer:
    ``tests/test_entry_fastpath.py`` checks it against the full parser.

    A result here also means ``stops_mountd(line)`` is false, terminated or
    not: the line has a ':' and no NUL, and fits mountd's fgets() buffer whole.
    """
    # A canonical line is at most MAX_LINE bytes, its '\n' included. Asking for
    # fewer bytes here, with or without the '\n', errs on the safe side: the one
    # valid length it leaves out (MAX_LINE with the '\n') goes to the full parser.
    if len(line) >= MAX_LINE:
        return None
    match = _match_canonical(line)
    if match is None:
        return None
    client, path, count = match.groups()
    return client.replace(b";", b":"), path, int(count, 16)


# Entry._trusted without its attribute-name lookups (the fast path's hot spot).
_new_object = object.__new__
_set_client = Entry.__dict__["client"].__set__
_set_path = Entry.__dict__["path"].__set__
_set_count = Entry.__dict__["count"].__set__


def _parse_canonical(line: bytes) -> Optional[Entry]:
    """The Entry of an already canonical line, or None (see :func:`_canonical_fields`)."""
    fields = _canonical_fields(line)
    if fields is None:
        return None
    self = _new_object(Entry)
    _set_client(self, fields[0])
    _set_path(self, fields[1])
    _set_count(self, fields[2])
    return self


def parse_line(line: Union[bytes, bytearray, memoryview]) -> Union[Entry, Rejected]:
    """Parse one rmtab line (with or without its ``\\n``). Never raises.

    Returns an :class:`Entry` in normal form or a :class:`Rejected` with the
    original bytes (less the final ``\\n``) and the reason. Another bytes-like
    object (``bytearray``, ``memoryview``) is copied to ``bytes`` first, so what
    comes back never shares a buffer the caller may change; anything else (a
    ``str``) is a ``TypeError``.
    """
    data = line if type(line) is bytes else memoryview(line).tobytes()
    return _parse_canonical(data) or _parse_full(data)


def _parse_full(line: bytes) -> Union[Entry, Rejected]:
    """:func:`parse_line` for every line, canonical or not (no fast path)."""
    raw = line[:-1] if line.endswith(b"\n") else line
    body = raw[:-1] if raw.endswith(b"\r") else raw
    if not body.strip():
        return Rejected(raw, Reason.BLANK)
    if b"\n" in body:
        return Rejected(raw, Reason.EMBEDDED_NEWLINE)
    if b"\0" in body:
        return Rejected(raw, Reason.NUL_BYTE)
    if body[0] == 0x23:  # '#'
        return Rejected(raw, Reason.COMMENT)
    if b":" not in body:
        return Rejected(raw, Reason.NO_COLON)

    client, rest = _split_client(body)
    path, sep, field = rest.partition(b":")
    count = parse_count(field) if sep else 1
    if count is None:
        # mountd would cut the path at this ':'. If what follows does not even
        # start like a number, the ':' was part of the path, not a separator.
        starts_numeric = field[:1].isdigit() or field[:1] in (b"+", b"-", b"")
        starts_numeric = starts_numeric or field[:1] in (b" ", b"\t")
        why = Reason.BAD_COUNT if starts_numeric else Reason.PATH_COLON
        if not client:
            why = Reason.EMPTY_CLIENT
        elif not path.startswith(b"/"):
            why = Reason.PATH_NOT_ABSOLUTE
        return Rejected(raw, why)

    client = client.replace(b";", b":")
    reason = _check(client, path, count)
    if reason is not None:
        return Rejected(raw, reason)
    return Entry._trusted(client, path, count)


def format_entry(entry: Entry) -> bytes:
    """The canonical line for ``entry``: ``client:path:0x%08x\\n``, IPv6 ':' as ';'."""
    return b"%s:%s:0x%08x\n" % (entry.client.replace(b":", b";"), entry.path, entry.count)


def stops_mountd(line: bytes, *, terminated: bool = True) -> bool:
    """Would rpc.mountd's parser stop reading the file at this line?

    mountd ends its parse at the first line that has no ':' in the part it sees
    (a C string: up to a NUL), and reads lines with fgets() in pieces of at most
    ``MAX_LINE`` bytes, the ``\\n`` included, each parsed as a line of its own.
    So a line of exactly ``MAX_LINE`` bytes before its ``\\n`` stops mountd: the
    ``\\n`` is read alone, as a blank line.

    ``line`` may come with or without its ``\\n``; it is taken to be terminated
    by one in the file unless ``terminated`` is false (the last line of a file
    that lacks its final newline).
    """
    raw = line[:-1] if line.endswith(b"\n") else line
    if not raw:
        return True
    if terminated:
        raw += b"\n"
    for start in range(0, len(raw), MAX_LINE):
        piece = raw[start : start + MAX_LINE]
        if b":" not in piece.split(b"\0", 1)[0]:
            return True
    return False

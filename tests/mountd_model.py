"""A reference model of how rpc.mountd (nfs-utils) reads and writes rmtab.

Written from ../shared/rmtab-reference.md and nfs-utils' ``support/nfs/rmtab.c``
(``fgetrmtabent``, ``fputrmtabent``) and ``utils/mountd/rmtab.c``
(``mountlist_del``), NOT from rmtabtool: the tests use it as an independent
oracle, so it must never import rmtabtool. It is deliberately literal: one
function per C step, C-string semantics (a NUL ends a string), no cleverness.

What it models:

* ``fgets(buf, sizeof(buf) - 1, fp)`` with ``char buf[2048]``: at most 2046
  bytes per call, stopping after a ``\\n``. A longer line comes back in pieces,
  each parsed as an entry of its own.
* client = text before the first ``:``; path = text up to the next ``:``;
  count = ``strtol(rest, NULL, 0)``; no second ``:`` means count 1. A piece
  with no ``:`` (a blank line included) ends the whole parse.
* client and path are cut to 1024 bytes (``strncpy`` into
  ``r_client[NFSCLNT_IDMAX + 1]`` / ``r_path[NFS_MAXPATHLEN + 1]``).
* the writer: ``fprintf(fp, "%s:%s:0x%.8x\\n", client, path, count)``.
* UMNT: re-read with the parser, decrement every match, drop the ones that
  reach 0, write every survivor canonically (the whole file is rewritten).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Optional

__all__ = [
    "C_WHITESPACE",
    "FGETS_MAX",
    "NFSCLNT_IDMAX",
    "NFS_MAXPATHLEN",
    "MountdEntry",
    "MountdView",
    "fgetrmtabent",
    "fgets_pieces",
    "mountd_format",
    "mountd_read",
    "mountd_stops",
    "mountd_umnt",
    "strtol",
    "to_r_count",
]

#: ``char buf[2048]; fgets(buf, sizeof(buf) - 1, fp)`` stores at most
#: ``2047 - 1`` bytes of the line (the last byte is the terminating NUL).
FGETS_MAX = 2048 - 1 - 1
#: ``r_client[NFSCLNT_IDMAX + 1]`` and ``strncpy(..., sizeof - 1)``.
NFSCLNT_IDMAX = 1024
#: ``r_path[NFS_MAXPATHLEN + 1]`` and ``strncpy(..., sizeof - 1)``.
NFS_MAXPATHLEN = 1024

#: isspace() in the C locale: what strtol skips before the number.
C_WHITESPACE = b" \t\n\v\f\r"

LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)
UINT_MASK = 0xFFFFFFFF

_HEX = b"0123456789abcdefABCDEF"


class MountdEntry(NamedTuple):
    """What ``struct rmtabent`` holds: the on-disk client (IPv6 ``:`` as ``;``),
    the path, and the count as ``%x`` prints it (0 .. 0xffffffff)."""

    r_client: bytes
    r_path: bytes
    r_count: int


class MountdView(NamedTuple):
    """Result of a whole-file read, as ``mountlist_list``/``mountlist_del`` see it."""

    #: entries in file order, one per fgets piece that had a ':'
    entries: list[MountdEntry]
    #: 1-based file line holding the piece that ended the parse, None if EOF was reached
    stopped_at_line: Optional[int]


def c_string(data: bytes) -> bytes:
    """A C string stops at its first NUL: strchr/strtol/strncpy never see past it."""
    return data.split(b"\0", 1)[0]


def fgets_pieces(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, piece)`` exactly as repeated fgets() calls return them.

    Each piece is at most :data:`FGETS_MAX` bytes and ends with ``\\n`` unless the
    line was longer (the rest comes in the next piece, same line number) or the
    file ended without a newline. fgets does not stop at NUL bytes.
    """
    pos = 0
    line = 1
    end = len(data)
    while pos < end:
        nl = data.find(b"\n", pos, pos + FGETS_MAX)
        stop = pos + FGETS_MAX if nl < 0 else nl + 1
        piece = data[pos:stop]
        yield line, piece
        if piece.endswith(b"\n"):
            line += 1
        pos += len(piece)


def strtol(text: bytes) -> int:
    """glibc ``strtol(text, NULL, 0)`` on a C string, with a 64-bit ``long``.

    Leading C whitespace skipped, optional sign, then base 0: ``0x``/``0X``
    followed by a hex digit is hex, a leading ``0`` is octal, anything else
    decimal. Parsing stops at the first byte that is not a digit of the base
    (trailing junk is ignored); no digits at all gives 0. Out of range saturates
    at LONG_MAX / LONG_MIN (ERANGE).
    """
    s = c_string(text)
    i = 0
    n = len(s)
    while i < n and s[i] in C_WHITESPACE:
        i += 1
    negative = False
    if i < n and s[i] in b"+-":
        negative = s[i] == ord("-")
        i += 1
    if s[i : i + 2] in (b"0x", b"0X") and s[i + 2 : i + 3] != b"" and s[i + 2] in _HEX:
        base = 16
        i += 2
    elif s[i : i + 1] == b"0":
        base = 8
    else:
        base = 10
    digits = {16: _HEX, 8: b"01234567", 10: b"0123456789"}[base]
    start = i
    while i < n and s[i] in digits:
        i += 1
    if i == start:
        return 0
    value = int(s[start:i], base)
    if negative:
        value = -value
    return max(LONG_MIN, min(LONG_MAX, value))


def to_r_count(value: int) -> int:
    """The ``long`` from strtol stored in ``int r_count`` and printed with ``%x``.

    Per the reference, values past 32 bits end up as 0xffffffff (so we clamp:
    glibc saturates at LONG_MAX, whose low 32 bits are 0xffffffff). A negative
    value is an ``int`` that ``%x`` prints in two's complement (``-1`` ->
    ``ffffffff``). Note: nfs-utils' C assigns the long to an int, which for
    values between 2**32 and LONG_MAX keeps only the low 32 bits; the reference
    and issue 2 state the clamp, and that is what this model follows.
    """
    if value > UINT_MASK:
        return UINT_MASK
    return value & UINT_MASK


def fgetrmtabent(piece: bytes) -> Optional[MountdEntry]:
    """Parse one fgets piece; None when it has no ':' (mountd ends the parse there)."""
    host = c_string(piece)
    newline = host.find(b"\n")
    if newline >= 0:
        host = host[:newline]
    colon = host.find(b":")
    if colon < 0:
        return None
    client = host[:colon]
    path = host[colon + 1 :]
    colon = path.find(b":")
    if colon >= 0:
        count = to_r_count(strtol(path[colon + 1 :]))
        path = path[:colon]
    else:
        count = 1
    return MountdEntry(client[:NFSCLNT_IDMAX], path[:NFS_MAXPATHLEN], count)


def mountd_read(data: bytes) -> MountdView:
    """Every entry mountd sees in a whole file, and where (if anywhere) it stopped."""
    entries: list[MountdEntry] = []
    for line, piece in fgets_pieces(data):
        entry = fgetrmtabent(piece)
        if entry is None:
            return MountdView(entries, line)
        entries.append(entry)
    return MountdView(entries, None)


def mountd_stops(data: bytes) -> bool:
    """Does mountd's parse end before the end of ``data``?"""
    return mountd_read(data).stopped_at_line is not None


def mountd_format(entry: MountdEntry) -> bytes:
    """``fprintf(fp, "%s:%s:0x%.8x\\n", r_client, r_path, r_count)``."""
    client, path, count = entry
    return b"%s:%s:0x%08x\n" % (c_string(client), c_string(path), count & UINT_MASK)


def mountd_umnt(data: bytes, client: bytes, path: bytes) -> bytes:
    """The new rmtab after ``mountlist_del(client, path)`` on a file holding ``data``.

    ``client`` is the on-disk spelling (IPv6 with ``;``). Everything after the
    line where the parse stopped is lost, exactly as with the real daemon.
    """
    out = []
    for r_client, r_path, r_count in mountd_read(data).entries:
        match = r_client == client and r_path == path
        if match:
            r_count = (r_count - 1) & UINT_MASK  # int r_count--: 0 becomes -1 (ffffffff)
        if not match or r_count:
            out.append(mountd_format(MountdEntry(r_client, r_path, r_count)))
    return b"".join(out)

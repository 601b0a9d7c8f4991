"""What the real rpc.mountd does with rmtab files, driven over the MOUNT protocol.

Library-only baseline (no CLI): files written with ``rmtabtool.format_entry`` or
``read_table(...).table.to_bytes()`` (what ``rmtabtool dedupe`` writes) next to
files as they are found in the wild. Every test gets its own daemon; see
conftest.py. mountd acts only on lines of the CALLER's address (127.0.0.1 here):
lines of other clients are observed through DUMP and through mountd's rewrite.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from rmtabtool import Entry, format_entry, read_bytes

from .conftest import Mountd
from .mountproto import MNT3_OK, MNT3ERR_ACCES, MNT3ERR_NOENT, RpcError, getport

pytestmark = [pytest.mark.mountd, pytest.mark.root]

LOCAL = b"127.0.0.1"


def _file(entries: list[Entry]) -> bytes:
    return b"".join(format_entry(e) for e in entries)


def _dump_of(entries: list[Entry]) -> list[tuple[bytes, bytes]]:
    """What DUMP answers for a file of ``entries``: reverse file order, ':' spelling."""
    return [(e.client, e.path) for e in reversed(entries)]


def test_harness_daemons_answer_in_their_private_namespace(mountd: Mountd) -> None:
    assert mountd.alive()
    assert getport(100005, 3, netns=mountd.netns) == mountd.port
    with mountd.client(privileged=True) as client:
        assert client.source_port < 1024
        client.null()
        assert client.export() == [(mountd.export, [b"*"])]
    assert mountd.startup_seconds < 5


def test_dump_returns_exactly_the_entries_format_entry_wrote(mountd: Mountd) -> None:
    export = mountd.export
    odd = export + b"/caf\xc3\xa9-\xff\xfe"  # UTF-8 then bytes that are not UTF-8
    entries = [
        Entry(b"10.0.0.1", export, 1),
        Entry(b"fe80::1", export, 2),
        Entry(b"2001:db8::5%eth0", odd, 1),
        Entry(b"::1", export, 1),
        Entry(LOCAL, odd, 3),
        Entry(b"192.168.200.17", b"/srv/other", 0xFFFFFFFF),
    ]
    mountd.write_rmtab(_file(entries))
    assert b"fe80;;1:" in mountd.read_rmtab()  # on disk IPv6 uses ';'

    dump = mountd.dump()

    # mountd hands IPv6 clients back with ':' (it turns ';' back), in REVERSE file
    # order, and paths as raw bytes.
    assert dump == _dump_of(entries)
    assert (b"2001:db8::5%eth0", odd) in dump
    assert "malformed" not in mountd.log_text()


def test_showmount_agrees_with_our_dump_client(mountd: Mountd) -> None:
    export = mountd.export
    entries = [Entry(b"10.0.0.2", export), Entry(b"10.0.0.1", export), Entry(b"10.0.0.2", export)]
    mountd.write_rmtab(_file(entries))

    shown = subprocess.run(
        mountd.nsenter("showmount", "--no-headers", "-a", "127.0.0.1"),
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout

    # showmount sorts and de-duplicates what DUMP sent (duplicates included)
    assert mountd.dump() == _dump_of(entries)
    assert shown.splitlines() == [b"10.0.0.1:" + export, b"10.0.0.2:" + export]


def _seed_like(export: bytes) -> tuple[bytes, list[Entry], list[Entry]]:
    """A file grown by the 2012 resource agent: doubled blocks, a blank line inside.

    Returns (file, entries before the blank, entries after it).
    """
    sub = export + b"/projects"
    before = [
        Entry(b"10.0.0.1", export, 1),
        Entry(LOCAL, export, 1),
        Entry(b"fe80::7", sub, 1),
        Entry(LOCAL, sub, 1),
    ]
    after = [
        Entry(b"10.0.0.1", export, 2),  # a remount on the other node: count 2
        Entry(b"10.0.0.9", export, 1),  # only ever seen after the blank line
        Entry(b"2001:db8::9", sub, 1),
        Entry(LOCAL, export, 1),
    ]
    head = _file(before) * 64  # 6 doublings, as 6 failovers of the old agent
    tail = _file(after) * 64
    return head + b"\n" + tail, before, after


def test_blank_line_hides_the_rest_and_umnt_destroys_it(mountd: Mountd) -> None:
    export = mountd.export
    (mountd.export_dir / "projects").mkdir()
    data, before, _ = _seed_like(export)
    mountd.write_rmtab(data)

    # DUMP stops at the blank line: only the lines before it, duplicates and all
    assert mountd.dump() == _dump_of(before * 64)
    assert "malformed entry in rmtab file" in mountd.log_text()

    mountd.umnt(export + b"/projects")

    survivors = read_bytes(mountd.read_rmtab())
    assert survivors.rejected == []
    clients = {e.client for e in survivors.table}
    # everything from the blank line on is gone: clients only seen there vanished,
    # and the count-2 remount of 10.0.0.1 fell back to the copy before the blank
    assert b"10.0.0.9" not in clients
    assert b"2001:db8::9" not in clients
    assert survivors.table.get(b"10.0.0.1", export) == Entry(b"10.0.0.1", export, 1)
    # what is left: the lines before the blank, canonical, LOCAL's sub mounts dropped
    kept = [e for e in before if e.key != (LOCAL, export + b"/projects")]
    assert mountd.read_rmtab() == _file(kept) * 64


def test_after_library_dedupe_every_other_entry_survives_umnts(mountd: Mountd) -> None:
    export = mountd.export
    sub = export + b"/projects"
    (mountd.export_dir / "projects").mkdir()
    data, _, _ = _seed_like(export)
    result = read_bytes(data)
    cleaned = result.table.to_bytes()  # what `rmtabtool dedupe` writes
    assert [r.reason.value for r in result.rejected] == ["blank"]
    model = list(result.table)
    assert len(model) == 6
    mountd.write_rmtab(cleaned)
    assert mountd.dump() == _dump_of(model)

    mountd.umnt(sub)  # (127.0.0.1, sub) had count 1: dropped
    mountd.umnt(export)  # (127.0.0.1, export) had count 1: dropped

    expected = [e for e in model if e.client != LOCAL]
    assert mountd.read_rmtab() == _file(expected)
    mountd.new_mtime_second()
    assert mountd.dump() == _dump_of(expected)
    assert "malformed" not in mountd.log_text()


def test_dump_of_a_bloated_rmtab_kills_mountd(mountd: Mountd) -> None:
    # mountd XDR-encodes the DUMP list recursively: one stack frame per line it
    # read. With an 8 MiB stack it dies between 57,500 and 60,000 lines (seen),
    # duplicates included; the seed incident's file had tens of millions.
    line = format_entry(Entry(b"10.0.0.1", mountd.export))
    mountd.write_rmtab(line * 100_000)

    with pytest.raises((RpcError, OSError)):
        mountd.dump()  # what `showmount -a` asks for

    assert mountd.mountd_exit_status(timeout=5) == -signal.SIGSEGV
    mountd.stop(allow_exited=True)
    # the same file deduplicated is one line
    assert read_bytes(line * 100_000).table.to_bytes() == line


def test_umnt_decrements_drops_at_zero_and_canonicalises_every_line(mountd: Mountd) -> None:
    export = mountd.export
    sub = export + b"/a"
    (mountd.export_dir / "a").mkdir()
    mountd.write_rmtab(
        b"10.0.0.1:%(E)s:1\n"  # short count
        b"%(L)s:%(E)s:0x00000003\n"
        b"10.0.0.2:/elsewhere\n"  # no count: 1
        b"%(L)s:%(S)s:0x00000001\n"
        b"10.0.0.3:/octal:010\n"  # strtol base 0: octal 8
        b"10.0.0.4:/junk:0x5 trailing junk\n"  # strtol ignores the rest
        b"fe80;;1:%(E)s:2\n" % {b"E": export, b"L": LOCAL, b"S": sub}
    )
    with mountd.rmtab.open("rb") as before:  # held open: its inode cannot be reused
        mountd.umnt(export)
        mountd.umnt(sub)
        replaced = os.fstat(before.fileno()).st_nlink == 0

    assert mountd.read_rmtab() == (
        b"10.0.0.1:%(E)s:0x00000001\n"
        b"%(L)s:%(E)s:0x00000002\n"
        b"10.0.0.2:/elsewhere:0x00000001\n"
        b"10.0.0.3:/octal:0x00000008\n"
        b"10.0.0.4:/junk:0x00000005\n"
        b"fe80;;1:%(E)s:0x00000002\n" % {b"E": export, b"L": LOCAL}
    )
    assert replaced  # a new file (rmtab.tmp) was renamed over rmtab
    assert not (mountd.statedir / "rmtab.tmp").exists()
    assert mountd.lockfile.exists()  # mountd's .rmtab.lock, kept while it runs


def test_umnt_of_a_path_that_is_not_exported_is_ignored(mountd: Mountd) -> None:
    original = LOCAL + b":/not/exported:1\n10.0.0.1:/srv:1\n"
    mountd.write_rmtab(original)

    mountd.umnt(b"/not/exported")

    assert mountd.read_rmtab() == original  # not even rewritten


def test_umntall_matches_the_callers_hostname_not_its_address(mountd: Mountd) -> None:
    export = mountd.export
    mountd.write_rmtab(
        b"localhost:%(E)s:0x00000003\n"
        b"localhost:/not/exported:0x00000001\n"
        b"%(L)s:%(E)s:0x00000002\n" % {b"E": export, b"L": LOCAL}
    )

    with mountd.client() as client:
        client.umntall()

    # mountd looks the caller up (127.0.0.1 -> localhost) and drops whole lines of
    # that NAME under an export, whatever their count; the numeric lines that MNT
    # itself writes are left alone.
    assert mountd.read_rmtab() == (
        b"localhost:/not/exported:0x00000001\n%(L)s:%(E)s:0x00000002\n"
        % {b"E": export, b"L": LOCAL}
    )


def test_dump_cache_keys_on_the_mtime_second(mountd: Mountd) -> None:
    first = Entry(b"10.1.1.1", b"/a")
    second = Entry(b"10.2.2.2", b"/b")
    mountd.write_rmtab(_file([first]))
    second_of_first = os.stat(mountd.rmtab).st_mtime_ns // 10**9
    assert mountd.dump() == _dump_of([first])

    # a rewrite (new inode, new size) 0.9 s later but within the same second
    tmp = mountd.statedir / "rewrite"
    tmp.write_bytes(_file([second, second]))
    os.replace(tmp, mountd.rmtab)
    same_second = second_of_first * 10**9 + 900_000_000
    os.utime(mountd.rmtab, ns=(same_second, same_second))
    assert mountd.dump() == _dump_of([first])  # stale: not re-read

    os.utime(mountd.rmtab, (second_of_first + 1, second_of_first + 1))
    assert mountd.dump() == _dump_of([second, second])


def test_first_dump_never_reads_an_rmtab_with_mtime_zero(mountd: Mountd) -> None:
    # mountd's cache starts as "mtime 0 already loaded, empty"
    mountd.write_rmtab(_file([Entry(b"10.9.9.9", b"/zero")]))
    os.utime(mountd.rmtab, (0, 0))
    assert mountd.dump() == []
    os.utime(mountd.rmtab, (1, 1))
    assert mountd.dump() == [(b"10.9.9.9", b"/zero")]


def test_mnt_is_refused_without_kernel_nfs(mountd: Mountd) -> None:
    with mountd.client() as client:
        assert client.mnt(mountd.export).status == MNT3ERR_ACCES
    assert mountd.read_rmtab() == b""


def test_mnt_bumps_in_place_and_appends_on_a_canonical_file(mountd_mnt: Mountd) -> None:
    export = mountd_mnt.export
    sub = export + b"/sub"
    (mountd_mnt.export_dir / "sub").mkdir()
    entries = [Entry(b"10.0.0.1", export), Entry(LOCAL, export), Entry(b"fe80::2", export, 7)]
    cleaned = read_bytes(_file(entries) * 3).table.to_bytes()
    mountd_mnt.write_rmtab(cleaned)

    with mountd_mnt.rmtab.open("rb") as before, mountd_mnt.client() as client:
        assert client.mnt(export).status == MNT3_OK
        assert client.mnt(export).status == MNT3_OK
        assert client.mnt(sub).status == MNT3_OK
        assert client.mnt(export + b"/missing").status == MNT3ERR_NOENT
        assert client.mnt(b"/etc").status == MNT3ERR_ACCES
        # written in place: still the same file
        assert os.path.samestat(os.fstat(before.fileno()), os.stat(mountd_mnt.rmtab))
    assert mountd_mnt.read_rmtab() == _file(
        [
            Entry(b"10.0.0.1", export),
            Entry(LOCAL, export, 3),
            Entry(b"fe80::2", export, 7),
            Entry(LOCAL, sub),
        ]
    )


@pytest.mark.parametrize(
    ("line", "damaged_next"),
    [
        (b":0x1\n", b"1:/x:0x00000001\n"),  # short count: overwrite eats "10.0.0."
        (b"\n", b":0x00000001\n"),  # no count: the client of the next line is gone
    ],
    ids=["short-count", "no-count"],
)
def test_mnt_in_place_bump_corrupts_the_next_line_of_a_non_canonical_file(
    mountd_mnt: Mountd, line: bytes, damaged_next: bytes
) -> None:
    export = mountd_mnt.export
    mountd_mnt.write_rmtab(LOCAL + b":" + export + line + b"10.0.0.1:/x:0x00000001\n")

    with mountd_mnt.client() as client:
        assert client.mnt(export).status == MNT3_OK

    assert mountd_mnt.read_rmtab() == LOCAL + b":" + export + b":0x00000002\n" + damaged_next


def test_mnt_append_is_glued_to_a_last_line_without_newline(mountd_mnt: Mountd) -> None:
    export = mountd_mnt.export
    mountd_mnt.write_rmtab(b"10.0.0.1:/x:0x00000001")

    with mountd_mnt.client() as client:
        assert client.mnt(export).status == MNT3_OK

    glued = b"10.0.0.1:/x:0x00000001" + LOCAL + b":" + export + b":0x00000001\n"
    assert mountd_mnt.read_rmtab() == glued

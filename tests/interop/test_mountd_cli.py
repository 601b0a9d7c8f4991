"""The INSTALLED rmtabtool command against the real rpc.mountd: what it writes, mountd reads.

Every test runs the ``rmtabtool`` console script as a subprocess (``dedupe``,
``restore``, ``merge --into``, ``forget``, with ``--rmtab`` pointing at the
daemon's live rmtab, so it takes mountd's lock) and then asks mountd over the
MOUNT protocol: DUMP must list exactly the entries rmtabtool reported (its JSON
record and ``rmtabtool stats``), with no line hidden behind a stop and no bogus
entry split off an over-long line, IPv6 clients and non-UTF-8 paths included.
DUMP is asked right after the rewrite, with no help for mountd's mtime-second
cache: the rewrite itself must make mountd re-read the file.

UMNTs come from several loopback addresses (127.0.0.2, ... and ``::1``): mountd
acts only on the lines of the caller's address, so each address plays one NFS
client. Expected results are written out by hand (or computed by the small
first-seen/max model below), never by rmtabtool's own parser.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from rmtabtool import Entry, format_entry
from rmtabtool.locking import ToolLock
from rmtabtool.safefile import resolve_target

from .conftest import Mountd, rmtabtool_command, rmtabtool_env, run_rmtabtool

pytestmark = [pytest.mark.mountd, pytest.mark.root]

LOCAL = b"127.0.0.1"


def _file(entries: Iterable[Entry]) -> bytes:
    return b"".join(format_entry(e) for e in entries)


def _dump_of(entries: list[Entry]) -> list[tuple[bytes, bytes]]:
    """What DUMP answers for a file of ``entries``: reverse file order, ':' spelling."""
    return [(e.client, e.path) for e in reversed(entries)]


def _show(data: bytes) -> str:
    """How rmtabtool's JSON spells bytes (UTF-8 where it is, \\xNN otherwise)."""
    return data.decode("utf-8", "backslashreplace")


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {"client": _show(entry.client), "path": _show(entry.path), "count": entry.count}


def _model(entries: Iterable[Entry]) -> list[Entry]:
    """Reference dedupe: one entry per (client, path), first-seen order, max count."""
    table: dict[tuple[bytes, bytes], Entry] = {}
    for entry in entries:
        old = table.get(entry.key)
        if old is None or entry.count > old.count:
            table[entry.key] = entry if old is None else old.with_count(entry.count)
    return list(table.values())


def _cli(m: Mountd, command: str, *args: str) -> dict[str, Any]:
    """``rmtabtool COMMAND ARGS --rmtab <mountd's rmtab> --json`` (must exit 0)."""
    return run_rmtabtool(command, *args, "--rmtab", str(m.rmtab))


def _umnt_once(m: Mountd, entries: list[Entry], client: str, path: bytes) -> list[Entry]:
    """UMNT through mountd from ``client``; returns the model after it (decrement, drop at 0)."""
    m.umnt(path, source=client)
    key = (client.encode(), path)
    after = []
    for entry in entries:
        if entry.key != key:
            after.append(entry)
        elif entry.count > 1:
            after.append(entry.with_count(entry.count - 1))
    return after


def _assert_mountd_sees_exactly(m: Mountd, model: list[Entry], result: dict[str, Any]) -> None:
    """DUMP, the file, rmtabtool's JSON record and ``rmtabtool stats`` all say ``model``.

    DUMP comes first and without ``new_mtime_second()``: the rewrite alone must
    have refreshed mountd's view.
    """
    malformed_before = m.log_text().count("malformed")
    assert m.dump() == _dump_of(model)
    assert m.log_text().count("malformed") == malformed_before  # mountd read every line
    assert m.read_rmtab() == _file(model)
    assert result["entries_out"] == len(model)

    stats = run_rmtabtool("stats", "--rmtab", str(m.rmtab))
    assert stats["entries"] == stats["lines"] == len(model)
    assert stats["mountd_stops_at_line"] is None
    assert stats["mountd_hidden_lines"] == 0
    assert stats["rejected"] == 0
    per_path: dict[bytes, tuple[set[bytes], int]] = {}
    for entry in model:
        clients, mounts = per_path.get(entry.path, (set(), 0))
        per_path[entry.path] = (clients | {entry.client}, mounts + entry.count)
    assert {p["path"]: (p["clients"], p["mounts"]) for p in stats["paths"]} == {
        _show(path): (len(clients), mounts) for path, (clients, mounts) in per_path.items()
    }


# ------------------------------------------------------------------------ dedupe


def test_dedupe_leaves_exactly_the_reported_entries_for_dump(mountd: Mountd) -> None:
    export = mountd.export
    sub = export + b"/sub"
    odd = export + b"/caf\xc3\xa9-\xff\xfe"  # UTF-8, then bytes that are not UTF-8
    long_line = b"10.0.0.7:" + export + b"/" + b"x" * 2100 + b":0x00000001\n"
    comment = b"# saved by node1: do not edit\n"
    lines = [
        b"10.0.0.1:%(E)s:0x00000001\n",
        b"fe80;;1:%(E)s:1\n",  # short count
        comment,
        b"10.0.0.1:%(E)s:0x00000002\n",  # a remount: count 2 wins
        b"fe80::1:%(E)s:0x00000003\n",  # raw IPv6: mountd reads client 'fe80', path ''
        b"2001;db8;;5%%eth0:%(O)s\n",  # no count field: 1
        long_line,  # mountd splits it into two entries
        b";;1:%(S)s:0x00000001\n",
        b"10.0.0.2:%(E)s:010\n",  # strtol base 0: octal 8
        b"\n",  # mountd stops reading here
        b"10.0.0.9:%(S)s:0x00000001\n",  # only ever after the blank line
        b"10.0.0.1:%(E)s:0x00000001\n",
        b"fe80;;1:%(E)s:0x00000001\n",
    ]
    names = {b"E": export, b"S": sub, b"O": odd}
    mountd.write_rmtab(
        b"".join(line if line in (comment, long_line) else line % names for line in lines)
    )
    model = [
        Entry(b"10.0.0.1", export, 2),
        Entry(b"fe80::1", export, 3),
        Entry(b"2001:db8::5%eth0", odd, 1),
        Entry(b"::1", sub, 1),
        Entry(b"10.0.0.2", export, 8),
        Entry(b"10.0.0.9", sub, 1),
    ]

    # before: bogus entries, and everything after the blank line is hidden
    before = mountd.dump()
    assert (b"fe80", b"") in before
    assert (b"# saved by node1", b" do not edit") in before
    assert any(path == b"0x00000001" for _, path in before)  # the long line's tail
    assert (b"10.0.0.9", sub) not in before

    result = _cli(mountd, "dedupe")

    assert result["changed"] is True
    assert result["lines_in"] == 13
    assert result["rejected"] == 3
    assert result["rejected_by_reason"] == {"comment": 1, "path-too-long": 1, "blank": 1}
    assert result["duplicates_removed"] == 13 - 3 - len(model)
    assert result["rejects_file"] == f"{mountd.rmtab}.rejects"
    rejects = (mountd.statedir / "rmtab.rejects").read_bytes()
    assert sorted(rejects.splitlines(keepends=True)) == sorted([comment, long_line, b"\n"])
    _assert_mountd_sees_exactly(mountd, model, result)


# ------------------------------------------------------------------------ restore


def test_restore_merges_the_backup_and_dump_lists_exactly_the_result(mountd: Mountd) -> None:
    export = mountd.export
    sub = export + b"/sub"
    cafe = export + b"/caf\xc3\xa9"
    odd = export + b"/\xff\xfe-raw"
    mountd.write_rmtab(
        _file(
            [Entry(b"10.0.0.1", export), Entry(b"fe80::1", sub), Entry(b"10.5.5.5", b"/srv/other")]
        )
    )
    (mountd.export_dir / ".rmtab").write_bytes(
        b"10.0.0.1:%(E)s:0x00000002\n"  # higher count: max wins
        b"2001;db8;;5%%eth0:%(O)s:0x00000001\n"
        b";;1:%(C)s:1\n"
        b"10.6.6.6:/srv/other:0x00000001\n"  # another export: ignored
        b"fe80;;1:%(S)s:0x00000001\n" % {b"E": export, b"S": sub, b"C": cafe, b"O": odd}
    )
    model = [
        Entry(b"10.0.0.1", export, 2),
        Entry(b"fe80::1", sub),
        Entry(b"10.5.5.5", b"/srv/other"),
        Entry(b"2001:db8::5%eth0", odd),
        Entry(b"::1", cafe),
    ]
    mountd.dump()  # mountd has the old file cached

    result = _cli(mountd, "restore", str(mountd.export_dir))

    assert result["changed"] is True
    assert result["ignored_outside_export"] == 1
    _assert_mountd_sees_exactly(mountd, model, result)

    again = _cli(mountd, "restore", str(mountd.export_dir))
    assert again["changed"] is False  # restore twice == restore once
    assert mountd.dump() == _dump_of(model)

    # --replace: the other node's backup is authoritative for this export
    authoritative = mountd.root / "node2.rmtab"
    authoritative.write_bytes(_file([Entry(b"10.0.0.1", export), Entry(b"::1", cafe)]))
    replaced = _cli(
        mountd, "restore", str(mountd.export_dir), "--from", str(authoritative), "--replace"
    )
    gone = [Entry(b"fe80::1", sub), Entry(b"2001:db8::5%eth0", odd)]
    assert replaced["removed"] == [_entry_json(e) for e in gone]
    model = [Entry(b"10.0.0.1", export, 1), Entry(b"10.5.5.5", b"/srv/other"), Entry(b"::1", cafe)]
    _assert_mountd_sees_exactly(mountd, model, replaced)


# ------------------------------------------------------------------------ merge --into


def test_merge_into_the_live_rmtab_gives_mountd_exactly_the_union(mountd: Mountd) -> None:
    export = mountd.export
    sub = export + b"/sub"
    (mountd.export_dir / "sub").mkdir()
    odd = export + b"/caf\xc3\xa9-\xff"
    mountd.write_rmtab(_file([Entry(LOCAL, export), Entry(b"10.0.0.1", export)]))
    node1 = mountd.root / "node1.rmtab"
    node1.write_bytes(
        b"10.0.0.1:%(E)s:0x00000002\n10.0.0.1:%(E)s:0x00000001\n\n;;1:%(S)s:1\n"
        % {b"E": export, b"S": sub}
    )
    node2 = mountd.root / "node2.rmtab"
    node2.write_bytes(
        b"fe80;;1:%(E)s:0x00000001\n2001:db8::5%%eth0:%(O)s\n" % {b"E": export, b"O": odd}
    )
    model = [
        Entry(LOCAL, export),
        Entry(b"10.0.0.1", export, 2),
        Entry(b"::1", sub),  # after node1's blank line: merge still finds it
        Entry(b"fe80::1", export),
        Entry(b"2001:db8::5%eth0", odd),  # written with raw colons in node2
    ]
    mountd.dump()

    result = _cli(mountd, "merge", str(node1), str(node2), "--into", str(mountd.rmtab))

    assert result["changed"] is True
    assert result["rejected_by_reason"] == {"blank": 1}  # node1's, only reported
    assert result["rejects_file"] is None
    assert node1.read_bytes().count(b"\n\n") == 1  # sources are read-only
    _assert_mountd_sees_exactly(mountd, model, result)

    # mountd's own UMNTs match what rmtabtool wrote (IPv6 from ::1 included)
    model = _umnt_once(mountd, model, "127.0.0.1", export)
    model = _umnt_once(mountd, model, "::1", sub)
    assert mountd.read_rmtab() == _file(model)
    assert model == [
        Entry(b"10.0.0.1", export, 2),
        Entry(b"fe80::1", export),
        Entry(b"2001:db8::5%eth0", odd),
    ]


# ------------------------------------------------------------------------ forget


def test_forget_removes_what_it_reports_and_dump_agrees_after_each_run(mountd: Mountd) -> None:
    export = mountd.export
    sub = export + b"/sub"
    odd = export + b"/\xe9t\xe9"  # Latin-1: not UTF-8
    model = [
        Entry(b"10.0.0.1", export),
        Entry(b"fe80::1", export, 2),
        Entry(b"fe80::1", sub),
        Entry(b"2001:db8::5%eth0", odd),
        Entry(b"::1", sub),
        Entry(b"10.0.0.2", sub),
        Entry(LOCAL, export),
    ]
    mountd.write_rmtab(_file(model))
    mountd.dump()

    # three runs in quick succession: each DUMP must already see the run before it
    for args, gone in [
        (["--client", "fe80;;1", "--path", os.fsdecode(sub)], [Entry(b"fe80::1", sub)]),
        (["--client", "2001:db8::5%eth0"], [Entry(b"2001:db8::5%eth0", odd)]),
        (["--export", os.fsdecode(sub)], [Entry(b"::1", sub), Entry(b"10.0.0.2", sub)]),
    ]:
        result = _cli(mountd, "forget", *args)
        assert result["removed"] == [_entry_json(e) for e in gone]
        model = [e for e in model if e not in gone]
        _assert_mountd_sees_exactly(mountd, model, result)


# ------------------------------------------------------------------------ mtime second


def _sleep_to_next_second() -> None:
    time.sleep(1.0 - time.time() % 1.0 + 0.005)


def _rewrite_in_the_second_of(
    m: Mountd, before: Callable[[], None], *args: str, warmup: float
) -> tuple[dict[str, Any], int, int]:
    """Run ``rmtabtool ARGS`` so that its rewrite lands in the wall-clock second of ``before``.

    Starting the command takes ~0.5 s (more on a loaded machine), too long to fit
    reliably in what is left of a second. So it is started while we hold ITS lock
    (the one two rmtabtool runs take; mountd never sees it): it starts up and
    waits, as it would for a cron run of itself. At the start of a wall-clock
    second S, ``before()`` runs (mountd writes rmtab, a DUMP caches S), then the
    lock is released and rmtabtool reads, rebuilds and renames at once.

    Returns (its JSON record, S, the second of the rewrite: the new rmtab's ctime).
    """
    argv = [*rmtabtool_command(), *args, "--rmtab", str(m.rmtab), "--json", "--lock-timeout", "60"]
    with ToolLock(resolve_target(m.rmtab), timeout=5):
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rmtabtool_env()
        )
        try:
            time.sleep(warmup)
            _sleep_to_next_second()
            second = int(time.time())
            before()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    result = json.loads(out)
    assert isinstance(result, dict)
    assert result["lock_wait_seconds"] > 0  # it really waited at the gate
    return result, second, os.stat(m.rmtab).st_ctime_ns // 10**9


def test_dump_shows_a_rewrite_made_in_the_same_second_as_the_dump_before_it(
    mountd: Mountd,
) -> None:
    """UMNT (mountd writes rmtab: mtime second S), DUMP (caches S), rmtabtool rewrites
    within the same wall-clock second S, DUMP: the change must be visible. mountd
    compares whole seconds only, so the new file must not carry second S."""
    export = mountd.export
    victims = [f"10.0.1.{i}" for i in range(1, 5)]
    model = [Entry(b"127.0.0.2", export, 100)] + [Entry(v.encode(), export) for v in victims]
    mountd.write_rmtab(_file(model))
    same_second = []

    def umnt_and_dump() -> None:
        nonlocal model
        model = _umnt_once(mountd, model, "127.0.0.2", export)
        assert mountd.dump() == _dump_of(model)  # mountd now caches the UMNT's second
        same_second.append(os.stat(mountd.rmtab).st_mtime_ns // 10**9 == int(time.time()))

    for victim, warmup in zip(victims, (1.0, 2.0, 4.0, 8.0)):
        result, second, rewritten = _rewrite_in_the_second_of(
            mountd, umnt_and_dump, "forget", "--client", victim, warmup=warmup
        )

        assert result["removed"] == [_entry_json(Entry(victim.encode(), export))]
        model = [e for e in model if e.client != victim.encode()]
        assert mountd.read_rmtab() == _file(model)
        assert mountd.dump() == _dump_of(model)  # visible at once
        shown = subprocess.run(
            mountd.nsenter("showmount", "--no-headers", "-a", "127.0.0.1"),
            capture_output=True,
            check=True,
            timeout=10,
        ).stdout
        assert shown.splitlines() == sorted({b"%s:%s" % e.key for e in model})
        # rmtabtool never leaves the new file in S: it is restamped (ctime) in S+1
        if same_second[-1] and rewritten in (second, second + 1):
            # the case this test is about happened: the new file left second S,
            # and not for a second ahead of the clock
            st = os.stat(mountd.rmtab)
            assert st.st_mtime_ns // 10**9 != second
            assert st.st_mtime_ns <= time.time_ns()
            break
    else:
        pytest.fail(f"no rewrite fell in the same second as the DUMP before it ({same_second})")


# ------------------------------------------------------------------------ the seed file


# Each NFS client here is a loopback address that can send UMNT; 10.x, fe80::7 and
# 2001:db8::9 cannot: they are the lines that must survive everybody else's UMNTs.
_UMNT_CAPABLE = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "::1")


def _styled(entry: Entry, style: int) -> bytes:
    """One line as the wild writes them: canonical, a short count, or no count."""
    client = entry.client.replace(b":", b";")
    if style == 1:
        return b"%s:%s:%d\n" % (client, entry.path, entry.count)
    if style == 2 and entry.count == 1:
        return b"%s:%s\n" % (client, entry.path)
    return format_entry(entry)


def _seed_like(export: bytes) -> tuple[bytes, list[Entry], list[Entry]]:
    """A file grown by the 2012 resource agent, generated.

    Two nodes' blocks doubled over and over (grep > backup; cat backup >> rmtab on
    every failover), counts that differ between copies (a client remounted on the
    other node), and a blank line in the middle (a truncated append) after which a
    tail holds entries found nowhere before it.

    Returns (file, entries in file order before the blank, entries after it).
    """
    projects = export + b"/projects"
    home = export + b"/home"
    node_a = [
        Entry(b"10.0.0.1", export),
        Entry(b"127.0.0.2", export),
        Entry(b"127.0.0.3", projects),
        Entry(b"::1", export),
        Entry(b"fe80::7", projects),
        Entry(b"127.0.0.3", export),
    ]
    node_b = [  # the same mounts, two of them remounted (count 2) on the other node
        Entry(b"10.0.0.1", export, 2),
        Entry(b"127.0.0.2", export),
        Entry(b"127.0.0.3", projects),
        Entry(b"::1", export),
        Entry(b"fe80::7", projects),
        Entry(b"127.0.0.3", export, 2),
    ]
    tail_block = [
        Entry(b"127.0.0.4", home),  # only after the blank line
        Entry(b"10.0.0.9", export),  # only after the blank line
        Entry(b"2001:db8::9", projects),  # only after the blank line
        Entry(b"::1", home, 2),  # only after the blank line, count 2
        Entry(b"127.0.0.2", export),
        Entry(b"127.0.0.3", projects, 2),  # count 1 before the blank, 2 after
    ]
    head = [e for i in range(128) for e in (node_a if i % 2 == 0 else node_b)]
    tail = tail_block * 64
    data = b"".join(_styled(e, i % 3) for i, e in enumerate(head))
    data += b"\n" + b"".join(_styled(e, i % 3) for i, e in enumerate(tail))
    return data, head, tail


def test_seed_umnt_destroys_the_tail_but_after_rmtabtool_dedupe_every_entry_survives(
    mountd: Mountd,
) -> None:
    export = mountd.export
    for name in ("projects", "home"):
        (mountd.export_dir / name).mkdir()
    data, head, tail = _seed_like(export)
    assert data.count(b"\n") > 1000
    assert b"\n\n" in data

    # -- as found: mountd sees the head only, and one UMNT destroys the tail
    mountd.write_rmtab(data)
    assert mountd.dump() == _dump_of(head)
    assert "malformed entry in rmtab file" in mountd.log_text()

    _umnt_once(mountd, head, "127.0.0.2", export)

    left = mountd.read_rmtab()
    assert left == _file(e for e in head if e.key != (b"127.0.0.2", export))
    only_in_tail = {e.key for e in tail} - {e.key for e in head}
    assert len(only_in_tail) == 4
    for client, path in only_in_tail:
        assert b"\n%s:%s:" % (client.replace(b":", b";"), path) not in b"\n" + left
    # the count-2 remount seen after the blank line fell back to count 1
    assert b"127.0.0.3:%s/projects:0x00000002" % export not in left

    # -- a fresh copy of the same file, cleaned by rmtabtool first
    mountd.write_rmtab(data)
    mountd.dump()
    malformed = mountd.log_text().count("malformed")
    model = _model(head + tail)
    assert len(model) == 10

    result = _cli(mountd, "dedupe")

    assert result["changed"] is True
    assert result["rejected_by_reason"] == {"blank": 1}
    assert result["lines_in"] == len(head) + 1 + len(tail)
    assert result["duplicates_removed"] == len(head) + len(tail) - len(model)
    _assert_mountd_sees_exactly(mountd, model, result)

    # Every UMNT-capable client unmounts everything it has, one UMNT at a time
    # (twice for a count of 2): after each, every other entry is still there.
    survivors = [e for e in model if e.client.decode() not in _UMNT_CAPABLE]
    assert len(survivors) == 4
    for entry in [e for e in model if e.client.decode() in _UMNT_CAPABLE]:
        for _ in range(entry.count):
            model = _umnt_once(mountd, model, entry.client.decode(), entry.path)
            assert mountd.read_rmtab() == _file(model)
    assert model == survivors
    mountd.new_mtime_second()  # mountd's own rewrites came within one second
    assert mountd.dump() == _dump_of(survivors)
    assert mountd.log_text().count("malformed") == malformed  # none since the dedupe

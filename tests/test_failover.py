"""Failover simulation: two nodes, one shared export, many rounds (issue 4, "Tests").

Models the life of an rmtab under ocf:heartbeat:exportfs: each node has its own
statedir (``/var/lib/nfs`` of that node) holding ``rmtab``; the export lives on
shared storage together with its backup ``EXPORT/.rmtab``. On the active node
clients mount and unmount (the file is edited the way rpc.mountd edits it), the
agent's monitor saves the export's entries, then the cluster fails over and the
other node restores them. Then the other way round, and so on.

The installed ``rmtabtool`` command runs in a subprocess, with ``--rmtab`` in
tmp_path. The same loop with the resource agent's old restore (``cat >>``, and
upstream's ``sort -u``) shows, in this file's own assertions, why the tool exists:
the doubling of the 2012 seed incident and the duplicates ``sort -u`` keeps.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cliutil
import pytest

Key = tuple[bytes, bytes]

#: one canonical rmtab line, as rpc.mountd's ``%s:%s:0x%.8x`` writes it (no newline)
CANONICAL = re.compile(rb"([^:\n]+):(/[^:\n]*):0x([0-9a-f]{8})")
#: IPv4, IPv6 (stored with ';'), a hostname from a very old file
CLIENTS = (
    b"10.0.0.1",
    b"10.0.0.2",
    b"10.0.0.3",
    b"10.0.0.4",
    b"10.0.0.5",
    b"192.168.7.20",
    b"fe80::1",
    b"2001:db8::42",
    b"client-a.example",
)
#: clients mount the export itself and sub-directories of it (each gets its own line)
SUBDIRS = (b"", b"/sub", b"/sub/deep", b"/other-sub")
#: another export on the same node: a restore must never touch its entries
OTHER_EXPORT = b"/srv/other-export"


def rmtabtool(*args: str | Path) -> dict[str, Any]:
    """Run the installed command with --json; it must succeed with one JSON object."""
    env = cliutil.clean_env(drop=("RMTABTOOL_RMTAB",), drop_prefixes=())
    return cliutil.run_json(*args, env=env, timeout=60)


# ---------------------------------------------------------------- rpc.mountd, as a model


def on_disk(client: bytes) -> bytes:
    """mountd writes IPv6 colons as ';'."""
    return client.replace(b":", b";")


def canonical(client: bytes, path: bytes, count: int) -> bytes:
    return b"%s:%s:0x%08x\n" % (on_disk(client), path, count)


def parse_lines(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """Every line of a file this simulation produced; each must be canonical."""
    assert data == b"" or data.endswith(b"\n"), data[-80:]
    rows = []
    for line in data.split(b"\n")[:-1]:
        match = CANONICAL.fullmatch(line)
        assert match is not None, f"not a canonical rmtab line: {line!r}"
        rows.append((match[1].replace(b";", b":"), match[2], int(match[3], 16)))
    return rows


def read_lines(path: Path) -> list[tuple[bytes, bytes, int]]:
    return parse_lines(path.read_bytes()) if path.exists() else []


def mountd_mnt(rmtab: Path, client: bytes, path: bytes) -> None:
    """``mountlist_add``: bump the FIRST matching line in place, else append one."""
    data = rmtab.read_bytes() if rmtab.exists() else b""
    offset = 0
    for line in data.split(b"\n")[:-1]:
        match = CANONICAL.fullmatch(line)
        if match and match[1] == on_disk(client) and match[2] == path:
            with rmtab.open("r+b") as f:  # same inode, full-width record
                f.seek(offset)
                f.write(canonical(client, path, int(match[3], 16) + 1))
            return
        offset += len(line) + 1
    with rmtab.open("ab") as f:
        f.write(canonical(client, path, 1))


def mountd_umnt(rmtab: Path, client: bytes, path: bytes) -> None:
    """``mountlist_del``: decrement EVERY matching line, drop at 0, rewrite all via rename."""
    survivors = []
    for c, p, count in read_lines(rmtab):
        if (c, p) == (client, path):
            count -= 1
            if count == 0:
                continue
        survivors.append(canonical(c, p, count))
    tmp = rmtab.with_name("rmtab.tmp")
    tmp.write_bytes(b"".join(survivors))
    os.replace(tmp, rmtab)


# ---------------------------------------------------------------- the cluster


@dataclass
class Node:
    name: str
    statedir: Path

    @property
    def rmtab(self) -> Path:
        return self.statedir / "rmtab"


@dataclass
class Cluster:
    export: Path
    nodes: tuple[Node, Node]
    #: what the clients really hold: MNTs minus UMNTs per (client, path)
    world: Counter[Key] = field(default_factory=Counter)
    active: int = 0

    @property
    def backup(self) -> Path:
        return self.export / ".rmtab"

    @property
    def here(self) -> Node:
        return self.nodes[self.active]

    @property
    def there(self) -> Node:
        return self.nodes[1 - self.active]

    def mnt(self, client: bytes, path: bytes) -> None:
        mountd_mnt(self.here.rmtab, client, path)
        self.world[client, path] += 1

    def umnt(self, client: bytes, path: bytes) -> None:
        mountd_umnt(self.here.rmtab, client, path)
        self.world[client, path] -= 1

    def mounted(self) -> dict[Key, int]:
        return {k: n for k, n in self.world.items() if n > 0}

    def in_export(self, path: bytes) -> bool:
        export = os.fsencode(self.export)
        return path == export or path.startswith(export + b"/")


def make_cluster(tmp_path: Path) -> Cluster:
    export = tmp_path / "shared" / "export"
    export.mkdir(parents=True)
    nodes = (
        Node("A", tmp_path / "nodeA" / "varlibnfs"),
        Node("B", tmp_path / "nodeB" / "varlibnfs"),
    )
    for node in nodes:
        node.statedir.mkdir(parents=True)
        # each node also serves a local export the failover must never touch
        node.rmtab.write_bytes(canonical(b"10.9.9.9", OTHER_EXPORT, 1))
    return Cluster(export=export, nodes=nodes)


def client_traffic(cluster: Cluster, rng: random.Random) -> None:
    """A few MNT/UMNT calls on the active node: new mounts, remounts, unmounts."""
    export = os.fsencode(cluster.export)
    for _ in range(rng.randint(2, 6)):
        mounted = sorted(cluster.mounted())
        if mounted and rng.random() < 0.45:
            cluster.umnt(*rng.choice(mounted))
        else:
            cluster.mnt(rng.choice(CLIENTS), export + rng.choice(SUBDIRS))


def assert_exact_table(path: Path) -> list[tuple[bytes, bytes, int]]:
    """Canonical, and never more lines than distinct (client, path) entries."""
    rows = read_lines(path)
    keys = [(c, p) for c, p, _ in rows]
    dups = [k for k, n in Counter(keys).items() if n > 1]
    assert not dups, f"{path}: duplicate (client, path) lines: {dups}"
    return rows


def other_export_lines(cluster: Cluster, node: Node) -> list[tuple[bytes, bytes, int]]:
    return [row for row in read_lines(node.rmtab) if not cluster.in_export(row[1])]


# ---------------------------------------------------------------- rmtabtool's failover


def monitor(cluster: Cluster) -> dict[str, Any]:
    """The agent's monitor (and stop) on the active node: save the export's entries."""
    before = read_lines(cluster.here.rmtab)
    result = rmtabtool("backup", cluster.export, "--rmtab", cluster.here.rmtab)
    saved = assert_exact_table(cluster.backup)
    # exactly the live rmtab's entries for this export, sub-directories included
    assert saved == [row for row in before if cluster.in_export(row[1])]
    assert result["entries_out"] == len(saved)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("replace", [False, True], ids=["merge", "replace"])
def test_thirty_failovers_keep_rmtab_exact_and_lose_no_active_mount(
    tmp_path: Path, replace: bool
) -> None:
    cluster = make_cluster(tmp_path)
    rng = random.Random(20120425)
    all_keys = {(c, os.fsencode(cluster.export) + s) for c in CLIENTS for s in SUBDIRS}
    came_back_prevented = 0
    for round_no in range(30):
        client_traffic(cluster, rng)
        assert_exact_table(cluster.here.rmtab)
        monitor(cluster)
        if round_no % 10 == 0:
            monitor(cluster)  # the monitor runs every 10 s: saving again changes nothing

        # failover: the other node takes the export over and restores
        target = cluster.there
        local_before = {(c, p): n for c, p, n in read_lines(target.rmtab) if cluster.in_export(p)}
        others_before = other_export_lines(cluster, target)
        backup_keys = {(c, p) for c, p, _ in read_lines(cluster.backup)}
        args: list[str | Path] = ["restore", cluster.export, "--rmtab", target.rmtab]
        if replace:
            args.append("--replace")
        result = rmtabtool(*args)
        cluster.active = 1 - cluster.active

        rows = assert_exact_table(target.rmtab)
        table = {(c, p): n for c, p, n in rows}
        assert len(rows) <= len(all_keys) + 1, "the rmtab grew beyond its distinct entries"
        for key, count in cluster.mounted().items():
            assert key in table, f"round {round_no}: active mount {key} lost by the restore"
            assert table[key] >= count, f"round {round_no}: {key} count {table[key]} < {count}"
        assert other_export_lines(cluster, target) == others_before, "another export was touched"

        if replace:
            # the backup is authoritative for the export: nothing local that it lacks survives
            export_keys = {k for k in table if cluster.in_export(k[1])}
            assert export_keys == backup_keys, f"round {round_no}"
            # ... and its counts: the export's entries are exactly what the clients hold
            export_table = {k: n for k, n in table.items() if cluster.in_export(k[1])}
            assert export_table == cluster.mounted(), f"round {round_no}"
            gone = {k for k in local_before if k not in backup_keys}
            removed = {
                (os.fsencode(e["client"]), os.fsencode(e["path"])) for e in result["removed"]
            }
            assert removed == gone, f"round {round_no}: removed list {removed} != {gone}"
            # clients that unmounted while the other node was active do NOT come back
            came_back_prevented += sum(1 for k in gone if k not in cluster.mounted())
        else:
            # plain restore only adds: the local entries of the export are all still there
            assert set(local_before) <= set(table)
            assert result["removed"] == []

        if round_no % 10 == 9:
            # restoring k times gives the same file as restoring once
            once = target.rmtab.read_bytes()
            again = rmtabtool(*args)
            assert again["changed"] is False
            assert target.rmtab.read_bytes() == once

    if replace:
        assert came_back_prevented > 0, "the simulation never exercised the stale-client case"


def test_plain_restore_brings_back_a_client_that_unmounted_elsewhere(tmp_path: Path) -> None:
    """Why --replace exists: restore merges, so a stale local entry survives failback."""
    cluster = make_cluster(tmp_path)
    export = os.fsencode(cluster.export)
    cluster.mnt(b"10.0.0.1", export)
    monitor(cluster)
    rmtabtool("restore", cluster.export, "--rmtab", cluster.there.rmtab)
    cluster.active = 1  # on B, the client unmounts
    cluster.umnt(b"10.0.0.1", export)
    monitor(cluster)
    assert read_lines(cluster.backup) == []
    # fail back to A, whose rmtab still remembers the mount
    rmtabtool("restore", cluster.export, "--rmtab", cluster.there.rmtab)
    assert (b"10.0.0.1", export, 1) in read_lines(cluster.there.rmtab)
    replaced = rmtabtool("restore", cluster.export, "--rmtab", cluster.there.rmtab, "--replace")
    assert (b"10.0.0.1", export, 1) not in read_lines(cluster.there.rmtab)
    assert [(e["client"], e["path"]) for e in replaced["removed"]] == [
        ("10.0.0.1", os.fsdecode(export))
    ]


def test_restore_replace_takes_the_backups_count(tmp_path: Path) -> None:
    """A count that went down on the other node must not come back up on failback:
    with the max of both, the client's last UMNT would leave a stale line behind."""
    cluster = make_cluster(tmp_path)
    export = os.fsencode(cluster.export)
    cluster.mnt(b"10.0.0.1", export)
    cluster.mnt(b"10.0.0.1", export)  # the client rebooted and remounted: count 2
    monitor(cluster)
    rmtabtool("restore", cluster.export, "--rmtab", cluster.there.rmtab, "--replace")
    cluster.active = 1
    cluster.umnt(b"10.0.0.1", export)  # on B: count 1
    monitor(cluster)
    rmtabtool("restore", cluster.export, "--rmtab", cluster.there.rmtab, "--replace")
    cluster.active = 0
    assert (b"10.0.0.1", export, 1) in read_lines(cluster.here.rmtab)
    cluster.umnt(b"10.0.0.1", export)  # the last mount goes: nothing stale remains
    assert not [row for row in read_lines(cluster.here.rmtab) if cluster.in_export(row[1])]


# ---------------------------------------------------------------- the old restores, for contrast


def agent_shell(script: str, rmtab: Path, export: Path) -> None:
    """The resource agent's own shell lines, with its variables."""
    subprocess.run(
        ["sh", "-c", script],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "rmtab": str(rmtab),
            "dir": str(export),
        },
        check=True,
    )


#: resource-agents 3.9.1/3.9.2 (Ubuntu 12.04): backup_rmtab / restore_rmtab
OLD_BACKUP = 'grep ":$dir:" "$rmtab" > "$dir/.rmtab"; true'
OLD_RESTORE = 'cat "$dir/.rmtab" >> "$rmtab"'
#: upstream since 3.9.3: sort -u, then install over the rmtab
UPSTREAM_RESTORE = (
    'tmpf=$(mktemp) && sort -u "$dir/.rmtab" "$rmtab" > "$tmpf" '
    '&& install -m 644 "$tmpf" "$rmtab" && rm -f "$tmpf"'
)


def fib(n: int) -> int:
    a, b = 1, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_old_cat_restore_grows_the_file_geometrically(tmp_path: Path) -> None:
    """The seed incident: ``cat backup >> rmtab`` on every failover."""
    cluster = make_cluster(tmp_path)
    rng = random.Random(7)
    # a long-lived mount outside the random traffic: it never unmounts
    anchor = (b"10.0.0.99", os.fsencode(cluster.export))
    mountd_mnt(cluster.here.rmtab, *anchor)
    sizes = []
    for round_no in range(12):
        client_traffic(cluster, rng)
        if rng.random() < 0.5:
            mountd_mnt(cluster.here.rmtab, *anchor)  # the client rebooted and remounted
        agent_shell(OLD_BACKUP, cluster.here.rmtab, cluster.export)
        agent_shell(OLD_RESTORE, cluster.there.rmtab, cluster.export)
        cluster.active = 1 - cluster.active
        rows = read_lines(cluster.here.rmtab)
        anchor_lines = sum(1 for c, p, _ in rows if (c, p) == anchor)
        # MNT bumps only the first line and a UMNT of another client leaves these
        # alone, so with two nodes alternating the anchor's lines follow Fibonacci:
        # 1, 2, 3, 5, 8, ... (a restart on the same node doubles them exactly)
        assert anchor_lines == fib(round_no + 1), (round_no, anchor_lines)
        sizes.append(len(rows))
    distinct = {(c, p) for c, p, _ in read_lines(cluster.here.rmtab)}
    assert sizes[-1] >= fib(12) == 233
    assert sizes[-1] > 10 * len(distinct), (sizes, len(distinct))
    assert sizes[-1] > 1.5 * sizes[-3], sizes

    # rmtabtool collapses the bloated file back to its distinct entries
    rmtabtool("dedupe", cluster.here.rmtab, "--rmtab", cluster.here.rmtab)
    assert len(assert_exact_table(cluster.here.rmtab)) == len(distinct)


def test_old_cat_restore_doubles_on_a_restart_of_the_same_node(tmp_path: Path) -> None:
    for tool in ("agent", "rmtabtool"):
        cluster = make_cluster(tmp_path / tool)
        for client in CLIENTS[:3]:
            cluster.mnt(client, os.fsencode(cluster.export))
        first = cluster.here.rmtab.read_bytes()
        assert len(read_lines(cluster.here.rmtab)) == 1 + 3  # the other export + 3 mounts
        for restart in range(1, 11 if tool == "agent" else 4):
            # stop (backup) then start (restore) on the same node
            if tool == "agent":
                agent_shell(OLD_BACKUP, cluster.here.rmtab, cluster.export)
                agent_shell(OLD_RESTORE, cluster.here.rmtab, cluster.export)
                assert len(read_lines(cluster.here.rmtab)) == 1 + 3 * 2**restart
            else:
                rmtabtool("backup", cluster.export, "--rmtab", cluster.here.rmtab)
                rmtabtool("restore", cluster.export, "--rmtab", cluster.here.rmtab)
                assert cluster.here.rmtab.read_bytes() == first


def test_upstream_sort_u_keeps_duplicates_that_differ_only_in_the_count(tmp_path: Path) -> None:
    """resource-agents >= 3.9.3: ``sort -u`` only removes byte-identical lines."""
    old = make_cluster(tmp_path / "sort-u")
    new = make_cluster(tmp_path / "rmtabtool")
    rng = random.Random(3)
    rounds_with_count_twins = []
    subdir_lost = False
    for round_no in range(12):
        # the same traffic on both clusters, plus two long-lived clients that
        # remount (reboot) on whichever node is active and never unmount
        state = rng.getstate()
        for cluster in (old, new):
            rng.setstate(state)
            client_traffic(cluster, rng)
            mountd_mnt(cluster.here.rmtab, b"10.0.0.99", os.fsencode(cluster.export))
            mountd_mnt(cluster.here.rmtab, b"10.0.0.98", os.fsencode(cluster.export) + b"/sub")

        agent_shell(OLD_BACKUP, old.here.rmtab, old.export)
        agent_shell(UPSTREAM_RESTORE, old.there.rmtab, old.export)
        rmtabtool("backup", new.export, "--rmtab", new.here.rmtab)
        rmtabtool("restore", new.export, "--rmtab", new.there.rmtab)
        old.active = new.active = 1 - old.active

        old_rows = read_lines(old.here.rmtab)
        assert len(set(old_rows)) == len(old_rows), "sort -u does remove byte-identical lines"
        anchor = (b"10.0.0.99", os.fsencode(old.export))
        counts = [n for c, p, n in old_rows if (c, p) == anchor]
        if len(counts) > 1:
            # the same (client, path) twice, differing only in the count
            rounds_with_count_twins.append(round_no)
            assert len({(c, p) for c, p, _ in old_rows}) < len(old_rows)
        # grep ":$dir:" misses sub-directory mounts: an active mount is lost
        sub = (b"10.0.0.98", os.fsencode(old.export) + b"/sub")
        subdir_lost = subdir_lost or all((c, p) != sub for c, p, _ in old_rows)

        # rmtabtool under the very same traffic: one line per entry, none lost
        new_rows = assert_exact_table(new.here.rmtab)
        new_keys = {(c, p) for c, p, _ in new_rows}
        for client, path in new.mounted():
            assert (client, path) in new_keys
        assert (b"10.0.0.98", os.fsencode(new.export) + b"/sub") in new_keys
        assert (b"10.0.0.99", os.fsencode(new.export)) in new_keys
    # the remount on B after the first failover gives A 0x1 and 0x2 side by side
    assert 1 in rounds_with_count_twins, rounds_with_count_twins
    assert subdir_lost

"""The real ocf:heartbeat:exportfs agent, failing over between two "nodes".

A node is a state directory bound onto /var/lib/nfs inside its own private mount
namespace (``unshare -m --propagation private``), with its own HA_RSCTMP (where the
agent records that it runs) and an empty etab; both nodes share one export
directory, as two cluster nodes share the exported filesystem. Each agent call is
one ``unshare`` process, so the host's /var/lib/nfs is never touched. Between
calls, NFS clients mount and unmount on the active node the way rpc.mountd records
it (``tests/mountd_like.py``: in-place bump or append on MNT, decrement and drop
on UMNT, under mountd's lock), and a small model remembers what the clients did.

* The agent converted by ``contrib/exportfs-rmtabtool.sh``, exactly as
  docs/pacemaker.md tells admins, runs many failovers (clean stops and crashes):
  the rmtab stays canonical, one line per (client, path), nothing more than what
  the clients hold, nothing lost, no unmounted client back, other exports alone.
* The unmodified Debian agent runs the same way for fewer rounds, and the test
  asserts what the reference says is seen with it.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import mountd_like
import pytest

REPO = Path(__file__).resolve().parents[2]
CONVERT = REPO / "contrib" / "exportfs-rmtabtool.sh"
PACEMAKER_MD = REPO / "docs" / "pacemaker.md"
OCF_ROOT = Path("/usr/lib/ocf")
STOCK_AGENT = OCF_ROOT / "resource.d" / "heartbeat" / "exportfs"
#: where ``rmtabtool`` is installed for this interpreter: the agent finds it on PATH
VENV_BIN = os.path.dirname(sys.executable)

ROUNDS = 21  # failovers with the rmtabtool drop-in; every third one a crash
STOCK_ROUNDS = 8

OCF_SUCCESS = 0
OCF_NOT_RUNNING = 7

Key = tuple[bytes, bytes]

CLIENTS = [b"10.0.0.%d" % i for i in range(1, 9)] + [b"fe80;;5%eth0", b"2001;db8;;7"]
SUBDIRS = [b"", b"/projects", b"/scratch/run 1"]  # clients mount sub-directories too
#: another export's client, in the first node's rmtab: restores must leave it alone
OTHER = (b"10.9.9.9", b"/srv/other-export", 3)

DROPIN = re.compile(r"^# BEGIN rmtabtool drop-in.*?^# END rmtabtool drop-in\n", re.S | re.M)


def _missing_prerequisite() -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root (private mount namespaces and bind mounts)"
    if not STOCK_AGENT.is_file():
        return f"{STOCK_AGENT} missing: apt-get install resource-agents"
    for tool in ("unshare", "mount", "exportfs", "awk"):
        if shutil.which(tool) is None:
            return f"{tool} not found (exportfs: apt-get install nfs-kernel-server)"
    if not os.access(os.path.join(VENV_BIN, "rmtabtool"), os.X_OK):
        return f"rmtabtool is not installed beside {sys.executable}"
    return None


@dataclass
class Node:
    name: str
    home: Path

    @property
    def statedir(self) -> Path:  # what the agent sees as /var/lib/nfs
        return self.home / "varlibnfs"

    @property
    def rsctmp(self) -> Path:
        return self.home / "rsctmp"

    @property
    def rmtab(self) -> Path:
        return self.statedir / "rmtab"

    def setup(self) -> None:
        self.statedir.mkdir(parents=True)
        self.rsctmp.mkdir()
        (self.statedir / "etab").write_bytes(b"")  # exportfs needs one

    def crash(self) -> None:
        """Power loss and reboot: /run (HA_RSCTMP) and the kernel's exports are
        gone; /var/lib/nfs/rmtab is on disk and keeps what it had."""
        for f in self.rsctmp.iterdir():
            f.unlink()
        (self.statedir / "etab").write_bytes(b"")


@dataclass
class Cluster:
    agent: Path
    export: Path
    a: Node
    b: Node
    calls: int = 0
    seconds: float = 0.0

    def run(
        self, node: Node, action: str, extra: Optional[dict[str, str]] = None
    ) -> subprocess.CompletedProcess[str]:
        # What pacemaker-execd gives an agent: a small environment, the
        # parameters as OCF_RESKEY_*, and rmtabtool on the PATH.
        env = {
            "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C",
            "OCF_ROOT": str(OCF_ROOT),
            "OCF_RESOURCE_INSTANCE": "nfs-export",
            "OCF_RESKEY_directory": str(self.export),
            "OCF_RESKEY_fsid": "1",
            "OCF_RESKEY_clientspec": "192.0.2.0/24",
            "OCF_RESKEY_options": "rw",
            "OCF_RESKEY_unlock_on_stop": "0",  # no /proc/fs/nfsd here
            "HA_RSCTMP": str(node.rsctmp),
            **(extra or {}),
        }
        script = 'mount --bind "$1" /var/lib/nfs && exec "$2" "$3"'
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
        t0 = time.monotonic()
        proc = subprocess.run(
            [*cmd, str(node.statedir), str(self.agent), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.calls += 1
        self.seconds += time.monotonic() - t0
        return proc

    def op(
        self,
        node: Node,
        action: str,
        expect: int = OCF_SUCCESS,
        extra: Optional[dict[str, str]] = None,
    ) -> str:
        """Run an action, check its OCF code, return what the agent logged."""
        proc = self.run(node, action, extra)
        assert proc.returncode == expect, (
            f"{node.name} {action}: exit {proc.returncode}, expected {expect}\n{proc.stderr}"
        )
        return proc.stderr


@dataclass
class Clients:
    """NFS clients mounting and unmounting through the active node's mountd."""

    export: Path
    rng: random.Random
    held: dict[Key, int] = field(default_factory=dict)  # what the clients hold

    def keys(self) -> list[Key]:
        base = os.fsencode(self.export)
        return [(c, base + s) for c in CLIENTS for s in SUBDIRS]

    def mnt(self, node: Node, key: Key) -> None:
        assert mountd_like.mnt(node.statedir, *key)
        self.held[key] = self.held.get(key, 0) + 1

    def umnt(self, node: Node, key: Key) -> None:
        assert mountd_like.umnt(node.statedir, *key)
        self.held[key] -= 1
        if not self.held[key]:
            del self.held[key]

    def work(self, node: Node, ops: int) -> None:
        """MNT (a new client, or a remount: the count goes up) or UMNT."""
        for _ in range(ops):
            if self.held and self.rng.random() < 0.4:
                self.umnt(node, self.rng.choice(sorted(self.held)))
            else:
                self.mnt(node, self.rng.choice(self.keys()))


def read_rmtab(path: Path) -> list[tuple[bytes, bytes, int]]:
    """Every line of an rmtab, checked to be what mountd itself would write."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    parsed = [(c, p, n) for c, p, n, _ in mountd_like.parse(data)]
    assert len(parsed) == len(lines), f"{path}: rpc.mountd would not see every line"
    for (c, p, n), line in zip(parsed, lines):
        assert mountd_like.record(c, p, n) == line, f"{path}: not canonical: {line!r}"
    return parsed


def under(path: bytes, export: Path) -> bool:
    base = os.fsencode(export)
    return path == base or path.startswith(base + b"/")


def export_entries(path: Path, export: Path) -> dict[Key, int]:
    """The (client, path) -> count of one export, asserting one line per key."""
    rows = read_rmtab(path)
    keys = [(c, p) for c, p, _ in rows]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    assert not dupes, f"{path}: several lines for {dupes}"
    return {(c, p): n for c, p, n in rows if under(p, export)}


@pytest.fixture
def cluster_home(tmp_path: Path) -> Path:
    reason = _missing_prerequisite()
    if reason:
        pytest.skip(reason)
    return tmp_path


def make_cluster(home: Path, agent: Path) -> Cluster:
    export = (home / "shared" / "export").resolve()
    for sub in SUBDIRS:
        (export / os.fsdecode(sub.lstrip(b"/"))).mkdir(parents=True, exist_ok=True)
    a, b = Node("node1", home / "node1"), Node("node2", home / "node2")
    a.setup()
    b.setup()
    # node1 has served another export's client before; node2 is a fresh node.
    a.rmtab.write_bytes(mountd_like.record(*OTHER))
    return Cluster(agent, export, a, b)


def converted_agent(home: Path) -> Path:
    """docs/pacemaker.md's installation step, into a private provider directory."""
    target = home / "ocf" / "resource.d" / "rmtabtool" / "exportfs"
    proc = subprocess.run(
        ["sh", str(CONVERT), str(STOCK_AGENT), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return target


def counting_rmtabtool(home: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose ``rmtabtool`` logs each run's subcommand, then runs the real one."""
    bindir, log = home / "counting-bin", home / "rmtabtool-runs"
    bindir.mkdir()
    wrapper = bindir / "rmtabtool"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> "{log}"\nexec "{VENV_BIN}/rmtabtool" "$@"\n')
    wrapper.chmod(0o755)
    log.write_text("")
    return {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"}, log


def _report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n    {text}")


# ------------------------------------------------------------------ the drop-in


def test_docs_show_exactly_the_drop_in_the_script_installs() -> None:
    doc = DROPIN.findall(PACEMAKER_MD.read_text())
    script = DROPIN.findall(CONVERT.read_text())
    assert len(script) == 1
    assert doc, "docs/pacemaker.md lost the drop-in block"
    assert all(block == script[0] for block in doc), (
        "docs/pacemaker.md and contrib/exportfs-rmtabtool.sh disagree on the drop-in"
    )


@pytest.mark.agent
@pytest.mark.root
def test_conversion_replaces_only_the_two_functions_and_is_repeatable(
    cluster_home: Path,
) -> None:
    target = converted_agent(cluster_home)
    stock = STOCK_AGENT.read_text()
    converted = target.read_text()
    (block,) = DROPIN.findall(converted)
    assert "grep" not in block
    assert "sort -u" not in block
    assert ">>" not in block
    assert converted.count("\nbackup_rmtab() {\n") == 1
    assert converted.count("\nrestore_rmtab() {\n") == 1
    # outside the block, nothing but the two old functions went away
    fn = re.compile(r"^(?:backup|restore)_rmtab\(\) \{\n.*?^\}\n", re.S | re.M)
    assert fn.sub("", stock).replace("\n\n\n", "\n\n") == converted.replace(block, "").replace(
        "\n\n\n", "\n\n"
    )
    again = converted_agent(cluster_home)  # running it on the result changes nothing
    assert again.read_text() == converted


# ------------------------------------------------------- failovers with rmtabtool


@pytest.mark.agent
@pytest.mark.root
def test_rmtab_stays_exact_through_failovers_with_the_rmtabtool_drop_in(
    cluster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = make_cluster(cluster_home, converted_agent(cluster_home))
    export, backup = cluster.export, cluster.export / ".rmtab"
    clients = Clients(export, random.Random(2012))
    other = {cluster.a.name: {OTHER[:2]: OTHER[2]}, cluster.b.name: {}}
    active, standby = cluster.b, cluster.a  # start on the fresh node
    path, runs = counting_rmtabtool(cluster_home)

    def op(node: Node, action: str, expect: int = OCF_SUCCESS) -> str:
        """An agent call that runs rmtabtool once, and only once (a probe: never)."""
        before = runs.read_text().split()
        log = cluster.op(node, action, expect, extra=path)
        ran = runs.read_text().split()[len(before) :]
        wanted = {"start": ["restore"], "stop": ["backup"], "monitor": ["backup"]}[action]
        assert ran == (wanted if expect == OCF_SUCCESS else []), (action, ran)
        return log

    # First start, on a node that has no rmtab: no backup yet (one warning).
    log = op(active, "start")
    assert "WARNING: rmtabtool restore" in log
    assert str(backup) in log
    # No rmtab (no NFSv3 mount yet): the monitor is silent and writes no backup.
    assert op(active, "monitor") == ""
    assert not active.rmtab.exists()
    assert not backup.exists()

    resurrections_prevented = 0
    count_changes_carried = 0
    largest = 0
    crashes = 0
    for rnd in range(ROUNDS):
        kind = ("stop", "monitor+stop", "monitor+crash")[rnd % 3]
        clients.work(active, 5)
        if kind.startswith("monitor"):
            # the recurring monitor: quiet, and the backup is the export's part
            assert op(active, "monitor") == ""
            assert export_entries(backup, export) == clients.held
            assert all(under(p, export) for _, p, _ in read_rmtab(backup))
        if kind.endswith("crash"):
            active.crash()  # no stop: the standby takes over from the last monitor
            crashes += 1
        else:
            clients.work(active, 3)  # still mounting when the stop comes
            log = op(active, "stop")
            assert not re.search("WARNING|ERROR", log), log
            assert export_entries(backup, export) == clients.held
        # What the standby had from its own last turn, before it restores:
        before = export_entries(standby.rmtab, export)
        resurrections_prevented += len(before.keys() - clients.held.keys())
        count_changes_carried += sum(
            1 for k, n in before.items() if k in clients.held and clients.held[k] != n
        )
        log = op(standby, "start")
        assert not re.search("WARNING|ERROR", log), log
        # Nothing lost, nothing back from the dead, counts as the clients hold
        # them, one canonical line each, and the other export untouched.
        assert export_entries(standby.rmtab, export) == clients.held
        rows = read_rmtab(standby.rmtab)
        assert {(c, p): n for c, p, n in rows if not under(p, export)} == other[standby.name]
        assert len(rows) == len(clients.held) + len(other[standby.name])
        largest = max(largest, standby.rmtab.stat().st_size)
        # the old node no longer runs it (a probe)
        op(active, "monitor", OCF_NOT_RUNNING)
        active, standby = standby, active

    op(active, "stop")
    assert export_entries(backup, export) == clients.held
    # The rounds really exercised what the stock agent gets wrong.
    assert crashes >= 5
    assert resurrections_prevented > 0
    assert count_changes_carried > 0
    _report(
        capsys,
        f"rmtabtool drop-in: {ROUNDS} failovers ({crashes} crashes), "
        f"{cluster.calls} agent calls in {cluster.seconds:.1f}s; rmtab always "
        f"== the clients' {len(clients.held)} entries (+1 other export), largest "
        f"{largest} bytes; {resurrections_prevented} stale entries removed, "
        f"{count_changes_carried} count changes carried",
    )


# ------------------------------------------------- parameters and failure modes


@pytest.mark.agent
@pytest.mark.root
def test_rmtab_backup_none_disables_both_functions(cluster_home: Path) -> None:
    cluster = make_cluster(cluster_home, converted_agent(cluster_home))
    # rmtabtool is not even on the PATH: it must not be called at all
    extra = {"OCF_RESKEY_rmtab_backup": "none", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    assert "rmtabtool" not in cluster.op(cluster.a, "start", extra=extra)
    mountd_like.mnt(cluster.a.statedir, b"10.0.0.1", os.fsencode(cluster.export))
    assert "rmtabtool" not in cluster.op(cluster.a, "monitor", extra=extra)
    assert "rmtabtool" not in cluster.op(cluster.a, "stop", extra=extra)
    assert sorted(p.name for p in cluster.export.iterdir()) == ["projects", "scratch"]


@pytest.mark.agent
@pytest.mark.root
def test_without_rmtabtool_start_fails_but_monitor_and_stop_never_do(
    cluster_home: Path,
) -> None:
    cluster = make_cluster(cluster_home, converted_agent(cluster_home))
    no_tool = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    OCF_ERR_INSTALLED = 5
    log = cluster.op(cluster.a, "start", OCF_ERR_INSTALLED, extra=no_tool)
    assert "ocf-exit-reason:rmtabtool is not installed or too old" in log
    assert "ERROR: rmtabtool restore cannot run (exit 127)" in log
    # Pacemaker now stops it here (and starts it elsewhere): the stop must work.
    log = cluster.op(cluster.a, "monitor", extra=no_tool)
    assert "ERROR: rmtabtool backup cannot run (exit 127)" in log
    cluster.op(cluster.a, "stop", extra=no_tool)
    cluster.op(cluster.a, "monitor", OCF_NOT_RUNNING, extra=no_tool)
    assert (cluster.a.statedir / "etab").read_bytes() == b""  # unexported


@pytest.mark.agent
@pytest.mark.root
def test_absolute_backup_path_and_several_directories(cluster_home: Path) -> None:
    cluster = make_cluster(cluster_home, converted_agent(cluster_home))
    second = (cluster_home / "shared" / "export2").resolve()
    (second / "sub").mkdir(parents=True)
    first = os.fsencode(cluster.export)
    both = {"OCF_RESKEY_directory": f"{cluster.export} {second}", "OCF_RESKEY_fsid": "10"}

    # Relative (the default): one backup per directory, each with its own entries.
    cluster.op(cluster.a, "start", extra=both)
    mountd_like.mnt(cluster.a.statedir, b"10.0.0.1", first)
    mountd_like.mnt(cluster.a.statedir, b"10.0.0.2", os.fsencode(second / "sub"))
    cluster.op(cluster.a, "stop", extra=both)
    assert read_rmtab(cluster.export / ".rmtab") == [(b"10.0.0.1", first, 1)]
    assert read_rmtab(second / ".rmtab") == [(b"10.0.0.2", os.fsencode(second / "sub"), 1)]
    cluster.op(cluster.b, "start", extra=both)
    assert sorted(read_rmtab(cluster.b.rmtab)) == sorted(
        read_rmtab(cluster.export / ".rmtab") + read_rmtab(second / ".rmtab")
    )
    cluster.b.crash()  # cheaper than a stop, and the same for what follows

    # Absolute: used as it is (not under the directory)...
    backup = cluster_home / "shared" / "rmtab-backups" / "export.rmtab"
    backup.parent.mkdir()
    one = {"OCF_RESKEY_rmtab_backup": str(backup)}
    cluster.op(cluster.a, "start", extra=one)
    mountd_like.mnt(cluster.a.statedir, b"10.0.0.3", first)
    cluster.op(cluster.a, "stop", extra=one)
    assert (b"10.0.0.3", first, 1) in read_rmtab(backup)
    cluster.op(cluster.b, "start", extra=one)
    assert (b"10.0.0.3", first, 1) in read_rmtab(cluster.b.rmtab)
    cluster.b.crash()

    # ... but one file cannot hold the backups of several directories.
    OCF_ERR_CONFIGURED = 6
    log = cluster.op(cluster.a, "start", OCF_ERR_CONFIGURED, extra={**both, **one})
    assert "ocf-exit-reason:rmtab_backup must be relative" in log
    cluster.op(cluster.a, "stop", extra={**both, **one})


@pytest.mark.agent
@pytest.mark.root
def test_busy_mountd_lock_is_a_warning_well_inside_the_monitor_timeout(
    cluster_home: Path,
) -> None:
    cluster = make_cluster(cluster_home, converted_agent(cluster_home))
    cluster.op(cluster.a, "start")
    mountd_like.mnt(cluster.a.statedir, b"10.0.0.1", os.fsencode(cluster.export))
    cluster.op(cluster.a, "monitor")
    saved = (cluster.export / ".rmtab").read_bytes()
    with mountd_like.holding(cluster.a.statedir / ".rmtab.lock", "lockf-ex"):
        t0 = time.monotonic()
        log = cluster.op(cluster.a, "monitor")  # a hung rpc.mountd holds its lock
        took = time.monotonic() - t0
    assert "WARNING: rmtabtool backup (exit 75)" in log
    assert took < 15, f"monitor took {took:.1f}s of its 20s timeout"
    assert (cluster.export / ".rmtab").read_bytes() == saved  # the old backup stays
    cluster.op(cluster.a, "stop")


# --------------------------------------------------- the stock agent, for contrast


@pytest.mark.agent
@pytest.mark.root
def test_stock_agent_keeps_stale_lines_and_brings_unmounted_clients_back(
    cluster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = make_cluster(cluster_home, STOCK_AGENT)
    export, backup = cluster.export, cluster.export / ".rmtab"
    a, b = cluster.a, cluster.b
    clients = Clients(export, random.Random(2012))
    base = os.fsencode(export)
    c1, c2, c3 = (b"10.0.0.1", base), (b"10.0.0.2", base), (b"10.0.0.3", base + b"/projects")

    log = cluster.op(a, "start")
    assert "WARNING: rmtab backup" in log
    assert "not found" in log
    for key in (c1, c2, c3):
        clients.mnt(a, key)
    cluster.op(a, "monitor")
    # grep ":$dir:" misses the client that mounted a sub-directory
    assert {(c, p) for c, p, _ in read_rmtab(backup)} == {c1, c2}
    cluster.op(a, "stop")
    # node2 has no rmtab yet: sort fails on it, nothing is restored, and the
    # start still reports success (the failure is hidden).
    log = cluster.op(b, "start")
    assert not b.rmtab.exists()
    assert "No such file" in log

    # While node2 runs it: c1 remounts twice (count 2), c2 unmounts.
    clients.mnt(b, c1)
    clients.mnt(b, c1)
    clients.umnt(b, c2)
    cluster.op(b, "monitor")
    cluster.op(b, "stop")
    cluster.op(a, "start")  # failback
    rows = read_rmtab(a.rmtab)
    # the counter change leaves both lines side by side...
    assert [n for c, p, n in rows if (c, p) == c1] == [1, 2]
    # ...and the client that unmounted on node2 is back
    assert c2 in {(c, p) for c, p, _ in rows}
    assert c2 not in clients.held

    active, standby = a, b
    for _ in range(STOCK_ROUNDS - 2):
        clients.work(active, 8)
        cluster.op(active, "monitor")
        cluster.op(active, "stop")
        cluster.op(standby, "start")
        active, standby = standby, active
    rows = read_rmtab(active.rmtab)
    mine = [(c, p) for c, p, _ in rows if under(p, export)]
    assert len(mine) > len(set(mine)), "expected duplicate (client, path) lines"
    stale = set(mine) - clients.held.keys()
    assert stale, "expected entries of clients that unmounted"
    _report(
        capsys,
        f"stock agent: after {STOCK_ROUNDS} failovers {active.name}'s rmtab has "
        f"{len(mine)} lines for the export ({len(set(mine))} distinct, "
        f"{len(stale)} of them unmounted) while the clients hold {len(clients.held)}",
    )

"""Symlink and hard-link tricks in a world-writable export directory.

``rmtabtool backup EXPORT`` runs as root (from the resource agent's monitor,
every 10 s) and writes ``EXPORT/.rmtab``. An export directory is often writable
by its users, sometimes by everybody (``1777`` like /tmp, or ``0777``). Anybody
who can write there can plant names before root comes by. What is defended, and
what is not, checked here with the installed command:

* temp files: random 64-bit names, created ``O_CREAT|O_EXCL|O_NOFOLLOW`` in the
  target's directory, so a symlink planted at any name we might use is never
  followed; names that look like our stale temps are unlinked (the link, never
  what it points to);
* the lock file: for a target in a directory others can write in (or that
  belongs to another user), it lives in a private per-node directory
  (``/run/rmtabtool`` for root; see ``locking._private_lock_directory``), named
  after a hash of the target: nothing predictable is opened in the export
  directory, and a lock file is never opened through a symbolic link (checked
  with ``O_NOFOLLOW`` before filelock sees it, whatever filelock's version);
* a hard link of ``.rmtab`` to a file elsewhere: the rename replaces the link,
  the other file keeps its content and inode;
* a symlinked ``.rmtab`` made by root (or by the caller) is followed, like
  rpc.mountd follows a symlinked rmtab. A link that belongs to anyone else is
  refused (exit 77) wherever it is, a stricter rule than the kernel's
  fs.protected_symlinks, applied by rmtabtool itself (it resolves links on its
  own): tests/test_safefile_hardening.py;
* the rejects file (``EXPORT/.rmtab.rejects``, appended in place by dedupe,
  merge --into, restore, forget): links followed under the same owner rule,
  opened ``O_NOFOLLOW``, FIFOs and devices refused without hanging or writing,
  a hard link refused where others can create names beside it;
* restore reads a backup an attacker may have written: only entries under the
  export are taken, rejected lines never reach the live rmtab, and the content
  of an unrelated file the backup links to is not echoed.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cliutil
import pytest

from rmtabtool.locking import tool_lock_path
from rmtabtool.safefile import temp_name_pattern

ATTACKER = 1000
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to own files as another user")


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = cliutil.clean_env(PYTHONDONTWRITEBYTECODE="1")
    return cliutil.run(*args, env=env, timeout=timeout, fail_on_hang=False)


def filelock_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("filelock").split(".")[:3] if p.isdigit())


@dataclass
class Site:
    """A node: a statedir with the live rmtab, a world-writable export, and a
    root-only directory standing in for /etc."""

    live: Path
    export: Path
    etc: Path

    @property
    def backup(self) -> Path:
        return self.export / ".rmtab"

    def entries(self) -> bytes:
        """The export's entries, as backup must write them."""
        e = os.fsencode(self.export)
        return b"10.0.0.1:%s:0x00000001\n10.0.0.2:%s/sub:0x00000002\n" % (e, e)


@pytest.fixture(params=[0o1777, 0o777], ids=["sticky-1777", "open-0777"])
def site(tmp_path: Path, request: pytest.FixtureRequest) -> Site:
    statedir = tmp_path / "varlibnfs"
    statedir.mkdir()
    export = tmp_path / "srv" / "export"
    export.mkdir(parents=True)
    os.chmod(export, request.param)
    etc = tmp_path / "etc"
    etc.mkdir()
    s = Site(statedir / "rmtab", export, etc)
    s.live.write_bytes(s.entries() + b"10.0.0.3:/srv/elsewhere:0x00000001\n")
    return s


def victim(site: Site, name: str, content: bytes = b"root:x:0:0:root:/root:/bin/bash\n") -> Path:
    path = site.etc / name
    path.write_bytes(content)
    os.chmod(path, 0o644)
    return path


def identity(path: Path) -> tuple[bytes, int, int, int, int]:
    st = path.lstat()
    return path.read_bytes(), st.st_ino, stat.S_IMODE(st.st_mode), st.st_uid, st.st_nlink


def plant_symlink(link: Path, to: Path) -> None:
    """A symlink as the attacker would leave it (owned by them)."""
    link.symlink_to(to)
    if IS_ROOT:
        os.lchown(link, ATTACKER, ATTACKER)


# ---------------------------------------------------------------- temp names


def test_symlinks_planted_at_temp_names_are_never_followed(site: Site) -> None:
    pattern = temp_name_pattern(site.backup)
    guesses = ["0" * 16, "f" * 16, *(secrets.token_hex(8) for _ in range(64))]
    planted = {}
    for i, guess in enumerate(guesses):
        name = f"..rmtab.rmtabtool-{guess}.tmp"
        assert pattern.fullmatch(name)
        target = victim(site, f"victim-{i}")
        plant_symlink(site.export / name, target)
        planted[site.export / name] = (target, identity(target))
    # names other tools (or a careless guess) might use, pointing at files and
    # at a file that does not exist yet in a root-only directory
    others = {}
    for name in ("rmtab.tmp", ".rmtab.tmp", "..rmtab.tmp", ".rmtab.new", ".rmtab~"):
        target = victim(site, f"other-{name}")
        plant_symlink(site.export / name, target)
        others[site.export / name] = (target, identity(target))
    plant_symlink(site.export / ".rmtab.swp", site.etc / "created-by-root")

    proc = run("backup", site.export, "--rmtab", site.live)

    assert proc.returncode == 0, proc.stderr
    assert site.backup.read_bytes() == site.entries()
    st = site.backup.lstat()
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o644)
    for target, before in [*planted.values(), *others.values()]:
        assert identity(target) == before, f"{target} was written through a planted link"
    assert not (site.etc / "created-by-root").exists()
    # Links named like our stale temps are removed (the link, not its target);
    # every other name is left alone.
    assert not any(link.is_symlink() for link in planted)
    assert all(link.is_symlink() for link in others)


# ---------------------------------------------------------------- the lock file


def test_no_lock_file_is_opened_in_a_directory_others_write_in(site: Site) -> None:
    """The lock of a target in a world-writable directory lives in a private
    per-node directory (0700, ours): links planted at the names a lock file
    beside the backup would have are neither followed nor even opened."""
    lock = tool_lock_path(site.backup)
    assert lock.parent != site.export
    st = os.lstat(lock.parent)
    assert (st.st_uid, stat.S_IMODE(st.st_mode) & 0o077) == (os.geteuid(), 0)
    victims = {}
    for name in ("..rmtab.rmtabtool-lock", ".rmtab.rmtabtool-lock"):
        target = victim(site, f"passwd-{name}")
        plant_symlink(site.export / name, target)
        victims[target] = identity(target)
    proc = run("backup", site.export, "--rmtab", site.live)
    assert proc.returncode == 0, proc.stderr
    for target, before in victims.items():
        assert identity(target) == before
    assert site.backup.read_bytes() == site.entries()


HOLD_FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_lock_file_held_by_another_user_blocks_backups_but_redirects_nothing(
    site: Site,
) -> None:
    """Denial of service, documented: the backup gives up with exit 75."""
    site.backup.write_bytes(b"10.0.0.9:/old:0x00000001\n")
    before = identity(site.backup)
    lock = tool_lock_path(site.backup)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FLOCK, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        if IS_ROOT:
            os.chown(lock, ATTACKER, ATTACKER)
        proc = run("backup", site.export, "--rmtab", site.live, "--lock-timeout", "0.5")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    assert proc.returncode == 75, proc.stderr
    assert "another rmtabtool run" in proc.stderr.decode()
    assert identity(site.backup) == before


# ---------------------------------------------------------------- hard links


def test_a_hard_linked_backup_is_replaced_and_the_other_file_stays_intact(site: Site) -> None:
    target = victim(site, "shadow-like", b"secret:$6$salt$hash:19000:0:99999:7:::\n")
    os.link(target, site.backup)  # same filesystem; an admin could, or a user with
    before = identity(target)  # fs.protected_hardlinks=0 or owning the file
    assert before[4] == 2
    proc = run("backup", site.export, "--rmtab", site.live)
    assert proc.returncode == 0, proc.stderr
    content, ino, mode, uid, nlink = identity(target)
    assert (content, ino, mode, uid) == before[:4]
    assert nlink == 1  # the link was replaced by rename, not written through
    assert site.backup.read_bytes() == site.entries()
    assert site.backup.stat().st_ino != ino


def test_a_hard_linked_live_rmtab_is_replaced_and_the_other_name_keeps_the_old_content(
    site: Site,
) -> None:
    old = site.live.read_bytes() * 3  # bloated: dedupe will rewrite it
    site.live.write_bytes(old)
    other = site.etc / "rmtab-copy"
    os.link(site.live, other)
    proc = run("dedupe", "--rmtab", site.live)
    assert proc.returncode == 0, proc.stderr
    assert other.read_bytes() == old
    assert other.stat().st_nlink == 1
    assert site.live.read_bytes().count(b"\n") == 3


# ---------------------------------------------------------------- symlinks


def test_a_symlinked_backup_made_by_root_is_followed_like_mountd_follows_rmtab(
    tmp_path: Path,
) -> None:
    """The intended use: .rmtab -> a file on shared storage, link made by root in a
    directory only root writes. The link stays; its target gets the backup."""
    statedir = tmp_path / "varlibnfs"
    statedir.mkdir()
    export = tmp_path / "export"
    export.mkdir(mode=0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    stored = shared / "rmtab-export"
    stored.write_bytes(b"10.0.0.9:/old:0x00000001\n")
    os.chmod(stored, 0o640)
    (export / ".rmtab").symlink_to(stored)
    e = os.fsencode(export)
    (statedir / "rmtab").write_bytes(b"10.0.0.1:%s:0x00000001\n" % e)
    proc = run("backup", export, "--rmtab", statedir / "rmtab")
    assert proc.returncode == 0, proc.stderr
    assert (export / ".rmtab").is_symlink()
    assert stored.read_bytes() == b"10.0.0.1:%s:0x00000001\n" % e
    assert stat.S_IMODE(stored.stat().st_mode) == 0o640  # its metadata kept
    assert [n for n in os.listdir(shared) if temp_name_pattern(stored).fullmatch(n)] == []


# ---------------------------------------------------------------- restore of a hostile backup


def test_restore_takes_only_entries_under_its_export_from_a_hostile_backup(site: Site) -> None:
    e = os.fsencode(site.export)
    hostile = b"".join(
        [
            b"10.6.6.6:/etc:0x00000001\n",  # another export: never injected
            b"10.6.6.6:/srv/elsewhere:0x00000009\n",
            b"\n",  # a blank line would stop rpc.mountd reading the live rmtab
            b"# comment\n",
            b"10.6.6.6:%s:0x00000005\n" % e,  # under the export: taken, as written
            b"x" * 5000 + b"\n",
        ]
    )
    site.backup.write_bytes(hostile)
    before_live = site.live.read_bytes()
    proc = run("restore", site.export, "--rmtab", site.live, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    live = site.live.read_bytes()
    assert live.startswith(before_live)
    added = live[len(before_live) :].splitlines()
    assert b"10.6.6.6:%s:0x00000005" % e in added
    assert all(line.split(b":")[1].startswith(e) for line in added), added
    assert b"\n\n" not in live
    assert not live.startswith(b"\n")
    assert not Path(f"{site.live}.rejects").exists()  # a read-only source's rejects
    assert result["rejected"] == 3
    assert result["ignored_outside_export"] == 2


def test_restore_from_a_backup_linked_to_a_secret_neither_merges_nor_echoes_it(
    site: Site,
) -> None:
    secret = victim(site, "shadow", b"root:$6$s3cr3t$0123456789abcdef:19000:0:99999:7:::\n")
    os.chmod(secret, 0o600)
    plant_symlink(site.backup, secret)
    before_live = site.live.read_bytes()
    proc = run("restore", site.export, "--rmtab", site.live, "--json")
    assert proc.returncode == 0, proc.stderr
    assert site.live.read_bytes() == before_live
    assert b"s3cr3t" not in proc.stdout + proc.stderr
    assert identity(secret)[0].startswith(b"root:$6$s3cr3t$")


# ---------------------------------------------------------------- the rejects file

#: a line rmtabtool rejects (no colon), appended byte-exact to <file>.rejects: in a
#: crontab it would be a job
EVIL = b"* * * * * root evil-command"


def rewrite_in_place(site: Site, command: str) -> tuple[str | Path, ...]:
    """A command that rewrites ``EXPORT/.rmtab`` in place, whose rejected lines go to
    ``EXPORT/.rmtab.rejects``: every in-place command appends rejects."""
    other = site.etc / "other-backup"
    other.write_bytes(b"10.0.0.7:%s:0x00000001\n" % os.fsencode(site.export))
    return {
        "dedupe": ("dedupe", site.backup),
        "merge-into": ("merge", other, "--into", site.backup),
        "restore": ("restore", site.export, "--from", other, "--rmtab", site.backup),
        "forget": ("forget", "--client", "10.0.0.1", "--rmtab", site.backup),
    }[command]


def plant_rejected_line(site: Site) -> bytes:
    content = site.entries() * 2 + EVIL + b"\n"
    site.backup.write_bytes(content)
    return content


IN_PLACE = ["dedupe", "merge-into", "restore", "forget"]


@needs_root
@pytest.mark.parametrize("command", IN_PLACE)
def test_a_rejects_symlink_planted_by_another_user_is_refused(site: Site, command: str) -> None:
    """uid 1000 plants EXPORT/.rmtab.rejects -> a root-owned file and a colon-less
    line in EXPORT/.rmtab; root's in-place rewrite must not append that line to
    the file the link points at (exit 77 like every refused link, nothing written)."""
    target = victim(site, "cron-job", b"# root's crontab\n")
    before = identity(target)
    content = plant_rejected_line(site)
    link = Path(f"{site.backup}.rejects")
    plant_symlink(link, target)
    proc = run(*rewrite_in_place(site, command))
    assert identity(target) == before, "rejected line appended through the link"
    assert proc.returncode == 77, proc.stderr
    assert str(link) in proc.stderr.decode()
    assert site.backup.read_bytes() == content  # refused before the rename
    assert link.is_symlink()


@needs_root
def test_a_dangling_rejects_symlink_planted_by_another_user_creates_nothing(site: Site) -> None:
    plant_rejected_line(site)
    created = site.etc / "cron.d-evil"
    plant_symlink(Path(f"{site.backup}.rejects"), created)
    proc = run("dedupe", site.backup)
    assert proc.returncode == 77, proc.stderr
    assert not created.exists()


def test_a_rejects_symlink_made_by_root_is_followed(site: Site) -> None:
    """The owner rule, not a ban on links: root's own link is followed."""
    plant_rejected_line(site)
    stored = site.etc / "rejects-kept-elsewhere"
    Path(f"{site.backup}.rejects").symlink_to(stored)
    proc = run("dedupe", site.backup)
    assert proc.returncode == 0, proc.stderr
    assert stored.read_bytes() == EVIL + b"\n"
    assert site.backup.read_bytes() == site.entries()


def test_a_fifo_at_the_rejects_name_neither_hangs_nor_is_written(site: Site) -> None:
    """A FIFO nobody reads would block open(O_WRONLY) forever; one somebody reads
    would receive the rejected lines. Either way: refused (exit 66, like a FIFO
    planted as any other output), nothing written."""
    content = plant_rejected_line(site)
    fifo = Path(f"{site.backup}.rejects")
    os.mkfifo(fifo)
    proc = run("dedupe", site.backup, timeout=20)  # a hang fails the test
    assert proc.returncode == 66, proc.stderr
    assert "not a regular file" in proc.stderr.decode()
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        proc = run("dedupe", site.backup, timeout=20)
        assert proc.returncode == 66, proc.stderr
        assert os.read(reader, 4096) == b"", "rejected lines written into the FIFO"
    finally:
        os.close(reader)
    assert site.backup.read_bytes() == content


def test_a_device_at_the_rejects_name_is_never_written(site: Site) -> None:
    """A link (made by root, so followed) to a device: the device is not even opened."""
    content = plant_rejected_line(site)
    Path(f"{site.backup}.rejects").symlink_to("/dev/full")
    proc = run("dedupe", site.backup)
    assert proc.returncode == 66, proc.stderr
    assert "not a regular file" in proc.stderr.decode()
    assert site.backup.read_bytes() == content


def test_a_hard_linked_rejects_file_in_a_directory_others_write_in_is_refused(
    site: Site,
) -> None:
    """``ln /etc/cron.d/job EXPORT/.rmtab.rejects`` (possible where
    fs.protected_hardlinks is 0, or for a file the attacker may read and write):
    the rejects file is appended in place, so a second name there would be written
    through. Refused (77) when others can create names in its directory."""
    target = victim(site, "cron-job", b"# root's crontab\n")
    content = plant_rejected_line(site)
    os.link(target, f"{site.backup}.rejects")
    before = identity(target)
    proc = run("dedupe", site.backup)
    assert proc.returncode == 77, proc.stderr
    assert "link" in proc.stderr.decode()
    assert identity(target) == before
    assert site.backup.read_bytes() == content


def test_a_hard_linked_rejects_file_in_a_directory_only_root_writes_is_appended(
    tmp_path: Path,
) -> None:
    """In a directory where only root (and the caller) create names, a second name
    can only be root's own doing (a hard-link snapshot of /var/lib/nfs): kept working."""
    statedir = tmp_path / "varlibnfs"
    statedir.mkdir(mode=0o755)
    live = statedir / "rmtab"
    live.write_bytes(b"10.0.0.1:/srv/a:0x00000001\n" * 2 + EVIL + b"\n")
    snapshot = tmp_path / "snapshot-rmtab.rejects"
    snapshot.write_bytes(b"old\n")
    os.link(snapshot, f"{live}.rejects")
    proc = run("dedupe", "--rmtab", live)
    assert proc.returncode == 0, proc.stderr
    assert Path(f"{live}.rejects").read_bytes() == b"old\n" + EVIL + b"\n"

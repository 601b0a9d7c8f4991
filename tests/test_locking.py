"""The two locks: mountd's POSIX lock on .rmtab.lock, and our own filelock."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mountd_like import RaisedInChild, command, holding, in_child

from rmtabtool import errors
from rmtabtool.locking import MOUNTD_LOCK_NAME, MountdLock, ToolLock, tool_lock_path
from rmtabtool.safefile import read_snapshot, rewrite_file

BLOATED = b"10.0.0.1:/srv/a:0x00000001\n" * 30
CANONICAL = b"10.0.0.1:/srv/a:0x00000001\n"


def dedupe(snapshot: object) -> list[bytes]:
    return [CANONICAL]


@pytest.fixture
def statedir(tmp_path: Path) -> Path:
    d = tmp_path / "nfs"
    d.mkdir()
    (d / "rmtab").write_bytes(BLOATED)
    old = 1_000_000_000 * 1_000_000_000  # 2001: long settled
    os.utime(d / "rmtab", ns=(old, old))
    return d


def others_can_lock(lockfile: Path, how: str = "lockf-ex") -> bool:
    """Can another process take ``how`` on ``lockfile`` right now?"""
    op = {
        "lockf-ex": "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        "lockf-sh": "fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)",
    }[how]
    code = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(lockfile)!r}, os.O_RDWR)\n"
        f"try:\n    {op}\nexcept OSError:\n    sys.exit(1)\n"
    )
    return subprocess.run([command()[0], "-c", code], check=False).returncode == 0


def fds_open_on(path: Path) -> int:
    """How many descriptors of this process refer to ``path``'s inode."""
    st = os.stat(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            fst = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
            count += 1
    return count


# ------------------------------------------------------------------ against mountd


def test_lockf_holder_makes_the_rewrite_wait_then_time_out(statedir: Path) -> None:
    rmtab = statedir / "rmtab"
    lockfile = statedir / MOUNTD_LOCK_NAME
    with holding(lockfile, "lockf-ex") as holder:
        with pytest.raises(errors.LockTimeout) as info:
            rewrite_file(rmtab, dedupe, mountd_statedir=statedir, timeout=0.3)
        message = str(info.value)
        assert str(lockfile) in message
        assert "rpc.mountd" in message
        assert "rmtabtool" in message
        assert f"pid {holder.pid}" in message  # who holds it, when the kernel says
        assert "\n" not in message
    assert info.value.exit_code == 75
    assert rmtab.read_bytes() == BLOATED
    assert [n for n in os.listdir(statedir) if n.endswith(".tmp")] == []


def test_shared_holder_like_dump_blocks_rewrites_but_not_reads(statedir: Path) -> None:
    rmtab = statedir / "rmtab"
    with holding(statedir / MOUNTD_LOCK_NAME, "lockf-sh"):
        result, _ = read_snapshot(rmtab, mountd_statedir=statedir, timeout=1)
        assert result.lines == 30
        with pytest.raises(errors.LockTimeout):
            rewrite_file(rmtab, dedupe, mountd_statedir=statedir, timeout=0.2)
    assert rmtab.read_bytes() == BLOATED


def test_exclusive_holder_blocks_consistent_reads(statedir: Path) -> None:
    with holding(statedir / MOUNTD_LOCK_NAME, "lockf-ex"), pytest.raises(errors.LockTimeout):
        read_snapshot(statedir / "rmtab", mountd_statedir=statedir, timeout=0.2)


def test_flock_holder_does_not_block_proving_the_posix_lock_is_used(statedir: Path) -> None:
    # mountd ignores flock(2) locks; so must we, else we would be using the wrong lock.
    rmtab = statedir / "rmtab"
    with holding(statedir / MOUNTD_LOCK_NAME, "flock-ex"):
        report = rewrite_file(rmtab, dedupe, mountd_statedir=statedir, timeout=2)
    assert report.changed
    assert rmtab.read_bytes() == CANONICAL


def test_rewrite_waits_for_mountd_and_then_proceeds(statedir: Path) -> None:
    rmtab = statedir / "rmtab"
    with holding(statedir / MOUNTD_LOCK_NAME, "lockf-ex") as holder:
        assert holder.stdin is not None
        timer = threading.Timer(0.2, holder.stdin.close)  # mountd finishes its UMNT
        timer.start()
        try:
            report = rewrite_file(rmtab, dedupe, mountd_statedir=statedir, timeout=30)
        finally:
            timer.join()
    assert report.changed
    assert report.lock_wait_seconds > 0
    assert rmtab.read_bytes() == CANONICAL


def test_mountd_lock_is_exclusive_against_other_processes(statedir: Path) -> None:
    lockfile = statedir / MOUNTD_LOCK_NAME
    with MountdLock(statedir, 1) as lock:
        assert lock.locked
        assert not others_can_lock(lockfile, "lockf-sh")
    assert lock.hold_seconds >= 0
    assert others_can_lock(lockfile)
    with MountdLock(statedir, 1, shared=True):
        assert others_can_lock(lockfile, "lockf-sh")
        assert not others_can_lock(lockfile, "lockf-ex")


def test_lock_file_is_created_like_mountd_does(tmp_path: Path) -> None:
    with MountdLock(tmp_path, 1):
        pass
    st = os.stat(tmp_path / ".rmtab.lock")
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 0


def test_lock_file_is_opened_once_per_process(statedir: Path, tmp_path: Path) -> None:
    # Closing ANY descriptor of the file drops the process's POSIX locks on it:
    # every MountdLock of the process must share one descriptor.
    lockfile = statedir / MOUNTD_LOCK_NAME
    (tmp_path / "alias").symlink_to(statedir)
    with MountdLock(statedir, 1):
        assert fds_open_on(lockfile) == 1
        with MountdLock(tmp_path / "alias", 1, shared=True):  # another spelling, nested
            assert fds_open_on(lockfile) == 1
        assert not others_can_lock(lockfile)  # the inner exit did not unlock the outer
        with MountdLock(statedir, 1):  # re-entered exclusive
            pass
        assert not others_can_lock(lockfile)
    assert others_can_lock(lockfile)
    for _ in range(3):
        with MountdLock(statedir, 1):
            pass
    assert fds_open_on(lockfile) == 1


def test_upgrading_a_held_shared_lock_is_refused(statedir: Path) -> None:
    with MountdLock(statedir, 1, shared=True), pytest.raises(RuntimeError, match="upgrade"):
        MountdLock(statedir, 1).acquire()


def test_other_threads_wait_like_other_processes(statedir: Path) -> None:
    outcome: list[BaseException] = []

    def other() -> None:
        try:
            with MountdLock(statedir, 0.2):
                pass
        except BaseException as exc:
            outcome.append(exc)

    with MountdLock(statedir, 1):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(outcome) == 1
    assert isinstance(outcome[0], errors.LockTimeout)


def test_forked_child_does_not_inherit_the_lock(statedir: Path) -> None:
    # POSIX locks are not inherited: a child must really lock, not think it
    # already holds the lock because its thread id matches the parent's.
    with MountdLock(statedir, 1):
        code, value = in_child(lambda: MountdLock(statedir, 0.2).acquire() and "locked")
    assert code == 0
    assert isinstance(value, RaisedInChild)
    assert value.name == "LockTimeout"
    code, value = in_child(lambda: MountdLock(statedir, 1).acquire() and "locked")
    assert value == "locked"


def test_lock_file_removed_by_an_exiting_mountd_is_recreated(statedir: Path) -> None:
    lockfile = statedir / MOUNTD_LOCK_NAME
    with MountdLock(statedir, 1):
        pass
    lockfile.unlink()  # mountd removes it when it exits; a new mountd makes a new one
    with holding(lockfile, "lockf-ex"), pytest.raises(errors.LockTimeout):
        MountdLock(statedir, 0.2).acquire()  # we lock the file mountd now uses
    with MountdLock(statedir, 1):
        assert not others_can_lock(lockfile)
    assert fds_open_on(lockfile) == 1


def test_lock_file_swapped_while_waiting_is_noticed(statedir: Path) -> None:
    lockfile = statedir / MOUNTD_LOCK_NAME
    with MountdLock(statedir, 1):
        pass
    # Our registered descriptor still points at the old inode; mountd then
    # unlinks it and creates a new one between our lookup and our lock.
    old = statedir / "old-lock"
    os.link(lockfile, old)
    lockfile.unlink()
    lockfile.touch(mode=0o600)
    with MountdLock(statedir, 1):
        assert not others_can_lock(lockfile)


@pytest.fixture
def public_statedir() -> Iterator[Path]:
    """A root-owned state directory that other users can reach (pytest's is 0700)."""
    top = Path(tempfile.mkdtemp(prefix="rmtabtool-test-"))
    try:
        os.chmod(top, 0o755)
        d = top / "nfs"
        d.mkdir(mode=0o755)
        (d / "rmtab").write_bytes(BLOATED)
        os.chmod(d / "rmtab", 0o644)
        yield d
    finally:
        shutil.rmtree(top)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_lock_file_not_openable_is_permission_denied(public_statedir: Path) -> None:
    statedir = public_statedir

    def as_nobody() -> object:
        os.setgid(65534)
        os.setuid(65534)
        try:
            MountdLock(statedir, 1).acquire()
        except errors.PermissionDenied as exc:
            denied = str(exc)
        # A reader who may not lock still gets a consistent read (settled, unlocked).
        result, _ = read_snapshot(statedir / "rmtab", mountd_statedir=statedir, timeout=1)
        return denied, result.lines

    code, value = in_child(as_nobody)
    assert code == 0
    assert isinstance(value, tuple), value
    denied, lines = value
    assert ".rmtab.lock" in denied
    assert "Permission denied" in denied
    assert lines == 30


def test_missing_statedir_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(errors.OutputError, match=r"rmtab\.lock"):
        MountdLock(tmp_path / "missing", 1).acquire()


# ------------------------------------------------------------------ ours


def test_tool_lock_lives_beside_the_target_and_is_not_mountds(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    assert tool_lock_path(tmp_path / "rmtab") == tmp_path / ".rmtab.rmtabtool-lock"
    # one leading dot for a hidden name: not "..rmtab.rmtabtool-lock"
    assert tool_lock_path(tmp_path / ".rmtab") == tmp_path / ".rmtab.rmtabtool-lock"
    assert tool_lock_path(tmp_path / "rmtab").name != MOUNTD_LOCK_NAME
    with ToolLock(tmp_path / "rmtab", 1) as lock:
        assert lock.locked
    assert not (tmp_path / MOUNTD_LOCK_NAME).exists()


def test_tool_lock_names_of_long_target_names_fit_name_max(tmp_path: Path) -> None:
    """``.<name>.rmtabtool-lock`` has 16 bytes more than the name: a target name
    over 239 bytes made it longer than NAME_MAX (255), and every writing command
    on such a file failed with ENAMETOOLONG (exit 74). Such names now keep their
    first 100 bytes and a hash of the whole name; shorter ones keep the plain
    name, which other rmtabtool versions use too."""
    os.chmod(tmp_path, 0o755)
    plain = "r" * 239
    assert tool_lock_path(tmp_path / plain).name == f".{plain}.rmtabtool-lock"
    first, second = "\u20ac" * 80 + "a", "\u20ac" * 80 + "b"  # 241 bytes, same start
    locks = [tool_lock_path(tmp_path / name) for name in (first, second, "x" * 255)]
    assert len({lock.name for lock in locks}) == 3
    for lock in locks:
        assert lock.parent == tmp_path
        assert len(os.fsencode(lock.name)) <= 255
        assert lock.name.endswith(".rmtabtool-lock")
    for name in (first, second, "x" * 255):
        with ToolLock(tmp_path / name, 1) as held:
            assert held.locked
    # the hidden and the plain spelling still share their lock, long or short
    assert tool_lock_path(tmp_path / ("." + "y" * 250)) == tool_lock_path(tmp_path / ("y" * 250))


def test_another_rmtabtool_run_makes_us_time_out(statedir: Path) -> None:
    rmtab = statedir / "rmtab"
    with holding(tool_lock_path(rmtab), "flock-ex"):
        with pytest.raises(errors.LockTimeout) as info:
            rewrite_file(rmtab, dedupe, mountd_statedir=statedir, timeout=0.2)
        assert "another rmtabtool run" in str(info.value)
        assert str(tool_lock_path(rmtab)) in str(info.value)
    assert rmtab.read_bytes() == BLOATED


def test_tool_lock_excludes_within_one_process(tmp_path: Path) -> None:
    with ToolLock(tmp_path / "x", 1), pytest.raises(errors.LockTimeout):
        ToolLock(tmp_path / "x", 0.1).acquire()


def test_tool_lock_in_a_missing_directory_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(errors.OutputError):
        ToolLock(tmp_path / "missing" / "x", 1).acquire()
    assert not (tmp_path / "missing").exists()


def test_posix_lock_dropped_by_closing_another_descriptor_is_real(statedir: Path) -> None:
    # Why MountdLock keeps a registry: the kernel rule it guards against.
    lockfile = statedir / MOUNTD_LOCK_NAME
    lockfile.touch()
    fd1 = os.open(lockfile, os.O_RDWR)
    fcntl.lockf(fd1, fcntl.LOCK_EX)
    assert not others_can_lock(lockfile)
    os.close(os.open(lockfile, os.O_RDONLY))  # open+close of a second descriptor...
    assert others_can_lock(lockfile)  # ...silently dropped the lock
    os.close(fd1)


@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o775])
def test_tool_lock_of_a_target_in_a_directory_others_write_is_private(
    tmp_path: Path, mode: int
) -> None:
    # A predictable name in an export directory (1777/0777, or group-writable)
    # would let its users plant a link root then opens, or hold the lock.
    shared = tmp_path / "export"
    shared.mkdir()
    os.chmod(shared, mode)
    lock = tool_lock_path(shared / ".rmtab")
    assert lock.parent != shared
    st = os.lstat(lock.parent)
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0
    assert lock == tool_lock_path(shared / ".rmtab")  # stable: one lock per target
    assert lock != tool_lock_path(shared / "other")
    with ToolLock(shared / ".rmtab", 1):
        assert lock.is_file()
    assert [n for n in os.listdir(shared) if "rmtabtool-lock" in n] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_tool_lock_of_a_target_in_another_users_directory_is_private(tmp_path: Path) -> None:
    # 0755 but not ours: its owner could swap a link in at the lock's name
    # between our O_NOFOLLOW check and filelock's own open.
    theirs = tmp_path / "export"
    theirs.mkdir()
    os.chmod(theirs, 0o755)
    os.chown(theirs, 1000, 1000)
    lock = tool_lock_path(theirs / ".rmtab")
    assert lock.parent != theirs
    with ToolLock(theirs / ".rmtab", 1):
        assert lock.is_file()
    assert [n for n in os.listdir(theirs) if "rmtabtool-lock" in n] == []
    # root's own 0755 directory keeps the lock beside the target
    os.chown(theirs, 0, 0)
    assert tool_lock_path(theirs / ".rmtab").parent == theirs


def test_a_symlink_at_the_lock_file_name_is_refused_not_followed(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.chmod(victim, 0o644)
    lock = tool_lock_path(tmp_path / "rmtab")
    lock.symlink_to(victim)
    with pytest.raises(errors.OutputError, match="symbolic link") as info:
        ToolLock(tmp_path / "rmtab", 1).acquire()
    assert str(lock) in str(info.value)
    assert victim.read_bytes() == b"precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_a_directory_at_the_lock_file_name_is_refused(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    tool_lock_path(tmp_path / "rmtab").mkdir()
    with pytest.raises(errors.RmtabError):
        ToolLock(tmp_path / "rmtab", 1).acquire()

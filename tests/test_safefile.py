"""Atomic replacement: content, metadata, symlinks, no-op rewrites, mtime, folding in."""

from __future__ import annotations

import errno
import os
import secrets
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

import pytest
from mountd_like import command

from rmtabtool import errors
from rmtabtool import safefile as sf
from rmtabtool.locking import MountdLock, ToolLock
from rmtabtool.safefile import (
    AtomicWriter,
    FileState,
    clean_stale_temps,
    is_same_file,
    read_snapshot,
    resolve_target,
    rewrite_file,
    temp_name_pattern,
)
from rmtabtool.table import ReadResult, read_bytes

BLOATED = (
    b"10.0.0.1:/srv/a:0x00000001\n" * 50
    + b"10.0.0.2:/srv/b:0x00000002\n" * 20
    + b"10.0.0.1:/srv/a:0x00000003\n"
)
CANONICAL = b"10.0.0.1:/srv/a:0x00000003\n10.0.0.2:/srv/b:0x00000002\n"
SECOND = 1_000_000_000


def dedupe(snapshot: Optional[ReadResult]) -> Iterator[bytes]:
    if snapshot is None:
        return iter(())
    return snapshot.table.lines()


def const(data: bytes) -> sf.Build:
    return lambda _snapshot: [data]


def temps(directory: Path) -> list[str]:
    """Our temp files, and mountd's, anywhere in ``directory``."""
    return sorted(n for n in os.listdir(directory) if ".rmtabtool-" in n and n.endswith(".tmp"))


@pytest.fixture
def rmtab(tmp_path: Path) -> Path:
    statedir = tmp_path / "nfs"
    statedir.mkdir()
    path = statedir / "rmtab"
    path.write_bytes(BLOATED)
    settle(path)
    return path


def settle(path: Path) -> None:
    """Date the file an hour back: not modified "just now" (see the racy tests)."""
    old = time.time_ns() - 3600 * SECOND
    os.utime(path, ns=(old, old))


# ------------------------------------------------------------------ basic rewrite


@pytest.mark.parametrize("live", [True, False], ids=["live", "other-file"])
def test_rewrite_replaces_content_by_rename(rmtab: Path, live: bool) -> None:
    before = os.stat(rmtab)
    report = rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent if live else None, timeout=5)
    assert rmtab.read_bytes() == CANONICAL
    assert report.changed
    assert not report.created
    assert report.path == rmtab
    assert report.snapshot is not None
    assert report.snapshot.lines == 71
    assert report.new_size == len(CANONICAL)
    assert report.rereads == 0
    assert os.stat(rmtab).st_ino != before.st_ino  # a new file, renamed in
    assert temps(rmtab.parent) == []
    assert not (rmtab.parent / "rmtab.tmp").exists()  # that name is mountd's
    assert (report.lock_acquisitions == 1) is live
    assert (report.lock_hold_seconds > 0) is live


@pytest.mark.parametrize("live", [True, False], ids=["live", "other-file"])
def test_temp_file_is_fsynced_before_the_rename_and_the_directory_after(
    rmtab: Path, monkeypatch: pytest.MonkeyPatch, live: bool
) -> None:
    """Crash safety rests on this order: the new data is on disk before its name
    replaces the old file (else a crash can leave an empty or partial rmtab under
    the real name), and the directory is synced after the rename (else the
    rename itself may be lost). Every fsync and rename is recorded, with what
    each fsync was for (the file by its inode, the directory)."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        events.append(("fsync", kind, f"{st.st_dev}:{st.st_ino}"))
        real_fsync(fd)

    def rename(src: str, dst: str, **kwargs: int) -> None:
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    report = rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent if live else None, timeout=5)
    monkeypatch.undo()
    assert report.changed
    new, directory = os.stat(rmtab), os.stat(rmtab.parent)
    assert len(events) == 3, events
    assert events[0] == ("fsync", "file", f"{new.st_dev}:{new.st_ino}")  # the data, then
    op, temp, dst = events[1]
    assert (op, dst) == ("rename", "rmtab")  # its name (dir_fd-relative), then
    assert temp_name_pattern(rmtab).fullmatch(temp)
    assert events[2] == ("fsync", "dir", f"{directory.st_dev}:{directory.st_ino}")  # the dir


def test_identical_content_is_not_written_at_all(
    rmtab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rmtab.write_bytes(CANONICAL)
    rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5)  # lock files appear
    listing = sorted(os.listdir(rmtab.parent))
    before = os.stat(rmtab)
    dir_before = os.stat(rmtab.parent)
    taken: list[bool] = []  # shared?
    real_acquire = MountdLock.acquire

    def spy(lock: MountdLock) -> None:
        taken.append(lock.shared)
        real_acquire(lock)

    monkeypatch.setattr(MountdLock, "acquire", spy)
    report = rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5)
    monkeypatch.undo()

    after = os.stat(rmtab)
    assert not report.changed
    assert report.snapshot is not None
    # mountd's exclusive lock is never taken: only the shared one, for a stat
    # confirming the read was of a complete file (as a pure read does)
    assert taken == [True]
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
    assert sorted(os.listdir(rmtab.parent)) == listing
    assert os.stat(rmtab.parent).st_mtime_ns == dir_before.st_mtime_ns  # no temp file either


def test_identical_big_content_is_not_written(rmtab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "MEMORY_OUTPUT_MAX", 100)  # spills to a temp file early
    data = b"".join(b"10.1.%d.%d:/srv/x:0x00000001\n" % (i // 250, i % 250) for i in range(2000))
    rmtab.write_bytes(data)
    before = os.stat(rmtab)
    report = rewrite_file(
        rmtab,
        lambda s: [data[i : i + 999] for i in range(0, len(data), 999)],
        mountd_statedir=rmtab.parent,
        timeout=5,
    )
    assert not report.changed
    after = os.stat(rmtab)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert temps(rmtab.parent) == []


def test_content_that_differs_only_at_the_end_is_written(rmtab: Path) -> None:
    rmtab.write_bytes(CANONICAL)
    report = rewrite_file(
        rmtab, const(CANONICAL + b"h:/p:0x00000001\n"), mountd_statedir=None, timeout=5
    )
    assert report.changed
    rmtab.write_bytes(CANONICAL)
    report = rewrite_file(rmtab, const(CANONICAL[:-1]), mountd_statedir=None, timeout=5)
    assert report.changed
    assert rmtab.read_bytes() == CANONICAL[:-1]


def test_missing_target_is_created_0644_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "rmtab"
    seen: list[Optional[ReadResult]] = []

    def build(snapshot: Optional[ReadResult]) -> list[bytes]:
        seen.append(snapshot)
        return [b""]

    old = os.umask(0o077)
    try:
        report = rewrite_file(target, build, mountd_statedir=tmp_path, timeout=5)
    finally:
        os.umask(old)
    assert seen == [None]
    assert report.created
    assert report.changed
    assert target.read_bytes() == b""  # an existing empty file means: no mounts
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644


@pytest.mark.parametrize("dry_run", [False, True])
def test_missing_directory_is_an_output_error(tmp_path: Path, dry_run: bool) -> None:
    with pytest.raises(errors.OutputError, match="nope"):
        rewrite_file(
            tmp_path / "nope" / "rmtab", dedupe, mountd_statedir=None, timeout=1, dry_run=dry_run
        )
    assert not (tmp_path / "nope").exists()


def test_missing_live_rmtab_in_a_missing_statedir_is_input_missing(tmp_path: Path) -> None:
    statedir = tmp_path / "var-lib-nfs"  # /var/lib/nfs not mounted
    with pytest.raises(errors.InputMissing):
        read_snapshot(statedir / "rmtab", mountd_statedir=statedir, timeout=1)
    assert not statedir.exists()


def test_mode_is_kept(rmtab: Path) -> None:
    os.chmod(rmtab, 0o640)
    rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5)
    assert stat.S_IMODE(os.stat(rmtab).st_mode) == 0o640


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_owner_and_group_are_kept(rmtab: Path) -> None:
    os.chown(rmtab, 1234, 2345)
    os.chmod(rmtab, 0o600)
    rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5)
    st = os.stat(rmtab)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 2345, 0o600)


def test_posix_acl_is_kept_where_supported(rmtab: Path) -> None:
    # user::rw- user:1234:r-- group::r-- mask::r-- other::--- (ACL xattr version 2)
    entries = [
        (0x01, 6, 0xFFFFFFFF),
        (0x02, 4, 1234),
        (0x04, 4, 0xFFFFFFFF),
        (0x10, 4, 0xFFFFFFFF),
        (0x20, 0, 0xFFFFFFFF),
    ]
    acl = (2).to_bytes(4, "little") + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + qual.to_bytes(4, "little")
        for tag, perm, qual in entries
    )
    try:
        os.setxattr(rmtab, "system.posix_acl_access", acl)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on this filesystem: {exc.strerror}")
    rewrite_file(rmtab, dedupe, mountd_statedir=None, timeout=5)
    assert os.getxattr(rmtab, "system.posix_acl_access") == acl


SELINUX_LABEL = b"system_u:object_r:nfs_var_lib_t:s0\x00"


@pytest.mark.parametrize("live", [True, False], ids=["live", "other-file"])
def test_selinux_label_is_kept(rmtab: Path, live: bool) -> None:
    """The new file gets the old one's security.selinux, not the label a new file
    in that directory would get (without it, an enforcing policy can deny
    rpc.mountd its own rmtab). Without SELinux the attribute is stored as is, so
    root can set it on ext4/xfs/tmpfs: CI runs this as root and must not skip."""
    try:
        os.setxattr(rmtab, "security.selinux", SELINUX_LABEL)
    except OSError as exc:
        pytest.skip(
            f"setxattr(security.selinux) refused here ({errno.errorcode.get(exc.errno or 0)}: "
            f"{exc.strerror}): needs root (CAP_SYS_ADMIN) or SELinux, and a filesystem "
            "with security xattrs"
        )
    old_ino = os.stat(rmtab).st_ino
    report = rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent if live else None, timeout=5)
    assert report.changed
    assert os.stat(rmtab).st_ino != old_ino  # a new file...
    assert os.getxattr(rmtab, "security.selinux") == SELINUX_LABEL  # ...with the old label


# ------------------------------------------------------------------ symlinks


def test_symlinked_target_is_followed_and_the_link_stays(tmp_path: Path) -> None:
    real_dir = tmp_path / "shared" / "nfs"
    real_dir.mkdir(parents=True)
    real = real_dir / "rmtab"
    real.write_bytes(BLOATED)
    statedir = tmp_path / "var-lib-nfs"
    statedir.mkdir()
    link = statedir / "rmtab"
    link.symlink_to(os.path.relpath(real, statedir))  # relative to the link's directory

    report = rewrite_file(link, dedupe, mountd_statedir=statedir, timeout=5)

    assert link.is_symlink()
    assert os.readlink(link) == os.path.relpath(real, statedir)
    assert real.read_bytes() == CANONICAL
    assert report.path == real_dir / "rmtab"  # canonical: no "var-lib-nfs/.."
    assert (statedir / ".rmtab.lock").exists()  # mountd's lock lives where mountd looks
    assert temps(real_dir) == []
    assert temps(statedir) == []


def test_chain_of_links_to_a_missing_file_creates_the_final_target(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to(tmp_path / "sub" / "c")
    (tmp_path / "sub").mkdir()
    report = rewrite_file(tmp_path / "a", const(CANONICAL), mountd_statedir=None, timeout=5)
    assert report.created
    assert report.path == tmp_path / "sub" / "c"
    assert (tmp_path / "sub" / "c").read_bytes() == CANONICAL
    assert (tmp_path / "a").is_symlink()
    assert (tmp_path / "b").is_symlink()


def test_symlink_loop_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(errors.OutputError, match="symbolic links"):
        resolve_target(tmp_path / "a")


def test_is_same_file(tmp_path: Path) -> None:
    real = tmp_path / "rmtab"
    real.write_bytes(b"")
    (tmp_path / "link").symlink_to("rmtab")
    os.link(real, tmp_path / "hard")
    (tmp_path / "dirlink").symlink_to(tmp_path)
    other = tmp_path / "other"
    other.write_bytes(b"")
    assert is_same_file(real, tmp_path / "link")
    assert is_same_file(tmp_path / "hard", tmp_path / "link")
    assert is_same_file(tmp_path / "dirlink" / "rmtab", real)
    assert not is_same_file(real, other)
    assert not is_same_file(real, tmp_path / "missing")
    assert is_same_file(tmp_path / "missing", tmp_path / "dirlink" / "missing")
    assert not is_same_file(tmp_path / "missing", tmp_path / "missing2")
    assert is_same_file(tmp_path / "x" / "missing", tmp_path / "x" / "missing")


# ------------------------------------------------------------------ mtime second


def test_live_rewrite_moves_the_mtime_second_forward(rmtab: Path) -> None:
    # Last written in the current second: mountd's DUMP cache would not see a
    # same-second change, so once the clock has left that second the new file is
    # restamped with the current time -- never dated ahead of the clock, which
    # would hide mountd's own next change made in that later second.
    old_second = time.time_ns() // SECOND
    os.utime(rmtab, ns=(old_second * SECOND + 5, old_second * SECOND + 5))
    report = rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5)
    assert report.changed
    new = os.stat(rmtab).st_mtime_ns
    assert new // SECOND > old_second
    assert new <= time.time_ns()  # not in the future
    assert report.mtime_bumped
    assert report.mtime_wait_seconds > 0
    assert report.lock_hold_seconds < report.mtime_wait_seconds or report.lock_hold_seconds < 1


def test_live_rewrite_of_a_file_dated_ahead_is_dated_now(rmtab: Path) -> None:
    # (as an older rmtabtool left it, or after the clock was stepped back)
    future = (time.time_ns() // SECOND + 100) * SECOND + 5
    os.utime(rmtab, ns=(future, future))
    report = rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5)
    assert report.changed
    new = os.stat(rmtab).st_mtime_ns
    assert new // SECOND != future // SECOND
    assert new <= time.time_ns()
    assert not report.mtime_bumped


def test_writer_leave_second_waits_for_a_new_second_instead_of_dating_ahead(
    tmp_path: Path,
) -> None:
    with AtomicWriter(tmp_path / "f") as writer:
        writer.write(b"x\n")
        writer.finish()
        now = time.time_ns()
        waited = writer.leave_second(now)
        mtime = os.fstat(writer._fd).st_mtime_ns
        assert mtime // SECOND > now // SECOND
        assert mtime <= time.time_ns()
        assert waited > 0
        assert writer.leave_second(0) == 0.0  # another second already: nothing to do


def test_live_rewrite_keeps_the_natural_mtime_of_a_new_second(rmtab: Path) -> None:
    os.utime(rmtab, ns=(10 * SECOND, 10 * SECOND))  # 1970
    report = rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5)
    assert not report.mtime_bumped
    assert abs(os.stat(rmtab).st_mtime_ns - time.time_ns()) < 3600 * SECOND


def test_other_files_keep_their_natural_mtime(rmtab: Path) -> None:
    future = (time.time_ns() // SECOND + 1000) * SECOND
    os.utime(rmtab, ns=(future, future))
    report = rewrite_file(rmtab, dedupe, mountd_statedir=None, timeout=5)
    assert not report.mtime_bumped
    assert os.stat(rmtab).st_mtime_ns < future


# ------------------------------------------------------------------ dry run, errors


def test_dry_run_writes_nothing_not_even_lock_files(rmtab: Path) -> None:
    listing = sorted(os.listdir(rmtab.parent))
    before = os.stat(rmtab)
    report = rewrite_file(rmtab, dedupe, mountd_statedir=None, timeout=5, dry_run=True)
    assert report.changed
    assert report.dry_run
    assert report.new_size == len(CANONICAL)
    assert sorted(os.listdir(rmtab.parent)) == listing
    assert rmtab.read_bytes() == BLOATED
    assert os.stat(rmtab).st_mtime_ns == before.st_mtime_ns

    rmtab.write_bytes(CANONICAL)
    report = rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5, dry_run=True)
    assert not report.changed

    report = rewrite_file(
        rmtab.parent / "new", dedupe, mountd_statedir=None, timeout=5, dry_run=True
    )
    assert report.created
    assert report.changed
    assert not (rmtab.parent / "new").exists()


def test_build_error_propagates_and_nothing_is_left(rmtab: Path) -> None:
    def build(snapshot: Optional[ReadResult]) -> list[bytes]:
        raise errors.InputMissing("cannot read /backup/.rmtab: No such file or directory")

    with pytest.raises(errors.InputMissing, match="backup"):
        rewrite_file(rmtab, build, mountd_statedir=rmtab.parent, timeout=5)
    assert rmtab.read_bytes() == BLOATED
    assert temps(rmtab.parent) == []


@pytest.mark.parametrize("exc", [errors.RejectedLinesError("bad"), KeyboardInterrupt()])
def test_failure_in_the_middle_of_a_big_output_removes_the_temp(
    rmtab: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    monkeypatch.setattr(sf, "MEMORY_OUTPUT_MAX", 10)
    created: list[Path] = []
    original_init = AtomicWriter.__init__

    def spy(self: AtomicWriter, target: sf.StrPath, **kw: int) -> None:
        original_init(self, target, **kw)
        created.append(self.temp_path)

    monkeypatch.setattr(AtomicWriter, "__init__", spy)

    def build(snapshot: Optional[ReadResult]) -> Iterator[bytes]:
        yield b"x:/y:0x00000001\n" * 1000
        assert created
        assert created[0].exists()  # the temp file really was there
        raise exc

    with pytest.raises(type(exc)):
        rewrite_file(rmtab, build, mountd_statedir=rmtab.parent, timeout=5)
    assert rmtab.read_bytes() == BLOATED
    assert temps(rmtab.parent) == []


def test_before_commit_sees_the_snapshot_and_can_veto(rmtab: Path) -> None:
    seen: list[Optional[ReadResult]] = []

    def before_commit(snapshot: Optional[ReadResult]) -> None:
        seen.append(snapshot)
        assert snapshot is not None
        assert snapshot.lines == 71
        raise errors.PermissionDenied("cannot write rmtab.rejects: Permission denied")

    with pytest.raises(errors.PermissionDenied):
        rewrite_file(
            rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5, before_commit=before_commit
        )
    assert len(seen) == 1
    assert rmtab.read_bytes() == BLOATED
    assert temps(rmtab.parent) == []


def test_build_must_yield_bytes(rmtab: Path) -> None:
    with pytest.raises(TypeError, match="bytes"):
        rewrite_file(rmtab, lambda s: ["text"], mountd_statedir=None, timeout=5)  # type: ignore[list-item]
    assert temps(rmtab.parent) == []


def test_directory_or_fifo_target_is_refused_without_hanging(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(errors.InputMissing, match="directory"):
        rewrite_file(tmp_path / "dir", dedupe, mountd_statedir=None, timeout=1)
    with pytest.raises(errors.InputMissing, match="not a regular file"):
        rewrite_file(tmp_path / "fifo", dedupe, mountd_statedir=None, timeout=1)
    with pytest.raises(errors.InputMissing):
        read_snapshot(tmp_path / "fifo", mountd_statedir=tmp_path, timeout=1)


# ------------------------------------------------------------------ temp files


def test_temp_files_are_hidden_ours_and_unpredictable(tmp_path: Path) -> None:
    target = tmp_path / "rmtab"
    with AtomicWriter(target) as one, AtomicWriter(target) as two:
        names = {one.temp_name, two.temp_name}
        assert len(names) == 2
        for name in names:
            assert name.startswith(".rmtab.rmtabtool-")
            assert name != "rmtab.tmp"
            assert temp_name_pattern(target).fullmatch(name)
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
        one.write(b"a:/b:0x00000001\n")
        two.discard()
    assert target.read_bytes() == b"a:/b:0x00000001\n"
    assert temps(tmp_path) == []


def test_a_planted_symlink_with_our_temp_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    tokens = iter(["0123456789abcdef", "fedcba9876543210"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(tokens))
    planted = tmp_path / ".rmtab.rmtabtool-0123456789abcdef.tmp"
    planted.symlink_to(victim)
    with AtomicWriter(tmp_path / "rmtab") as writer:
        assert writer.temp_name == ".rmtab.rmtabtool-fedcba9876543210.tmp"
        writer.write(b"new")
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "rmtab").read_bytes() == b"new"


def test_writer_error_inside_with_discards(tmp_path: Path) -> None:
    target = tmp_path / "rmtab"
    target.write_bytes(b"old")

    def fail_midway() -> None:
        with AtomicWriter(target) as writer:
            writer.write(b"new")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_midway()
    assert target.read_bytes() == b"old"
    assert temps(tmp_path) == []


def test_stale_temps_are_cleaned_by_the_next_run_and_only_ours(rmtab: Path) -> None:
    d = rmtab.parent
    ours = [
        d / ".rmtab.rmtabtool-00112233445566ff.tmp",
        d / ".rmtab.rmtabtool-aaaaaaaaaaaaaaaa.tmp",
    ]
    not_ours = [
        d / "rmtab.tmp",  # mountd's
        d / ".rmtab.lock",
        d / ".rmtab.rmtabtool-lock",
        d / ".rmtab.rmtabtool-xyz.tmp",
        d / ".other.rmtabtool-00112233445566ff.tmp",  # another target's
        d / ".rmtab.rmtabtool-00112233445566FF.tmp",
    ]
    for p in ours + not_ours:
        p.write_bytes(b"junk")
    report = rewrite_file(rmtab, dedupe, mountd_statedir=None, timeout=5)
    assert sorted(report.stale_temps_removed) == sorted(ours)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in not_ours)
    assert clean_stale_temps(rmtab) == []


# ------------------------------------------------------------------ reading


LONG = "rmtab-backup-of-" + "x" * 84  # 100 characters, then what tells them apart


def test_long_names_sharing_their_first_100_characters_do_not_share_temp_names(
    tmp_path: Path,
) -> None:
    """Temp names keep only the start of a long target name. Two targets that share
    it must still not match each other's stale-temp pattern: a rewrite of one
    would delete the other's temp file in flight (they hold different locks)."""
    a, b = tmp_path / f"{LONG}-a", tmp_path / f"{LONG}-b"
    a.write_bytes(BLOATED)
    with AtomicWriter(b) as writer:  # b's rewrite, in flight
        writer.write(b"10.0.0.2:/srv/b:0x00000001\n")
        assert not temp_name_pattern(a).fullmatch(writer.temp_name)
        assert temp_name_pattern(b).fullmatch(writer.temp_name)
        report = rewrite_file(a, dedupe, mountd_statedir=None, timeout=5)
        assert report.stale_temps_removed == []
        assert writer.temp_path.exists()
    assert b.read_bytes() == b"10.0.0.2:/srv/b:0x00000001\n"
    assert a.read_bytes() == CANONICAL
    assert temps(tmp_path) == []


def test_temp_names_fit_name_max_for_long_non_ascii_names(tmp_path: Path) -> None:
    """NAME_MAX is 255 bytes. The temp name keeps at most 100 bytes of the target's
    name (it kept 100 characters: 75 three-byte characters made a temp name of 258
    bytes, and the rewrite failed with ENAMETOOLONG)."""
    target = tmp_path / ("\u20ac" * 75)  # 225 bytes in UTF-8
    report = rewrite_file(
        target, const(b"10.0.0.1:/srv/a:0x00000001\n"), mountd_statedir=None, timeout=5
    )
    assert report.created
    assert target.read_bytes() == b"10.0.0.1:/srv/a:0x00000001\n"


def test_a_target_with_the_longest_possible_name_is_rewritten(tmp_path: Path) -> None:
    """A 255-byte name (NAME_MAX): its temp and lock names are cut and hashed;
    nothing derived from it is too long (its lock name was, before)."""
    target = tmp_path / ("n" * 255)
    target.write_bytes(BLOATED)
    report = rewrite_file(target, dedupe, mountd_statedir=None, timeout=5)
    assert report.changed
    assert target.read_bytes() == CANONICAL
    assert temps(tmp_path) == []


def test_stale_temps_of_the_old_cut_name_scheme_are_still_cleaned(tmp_path: Path) -> None:
    """Before the hash, a long name's temps were ``.<first 100 characters>.rmtabtool-
    <16 hex>.tmp``: exactly the temps of a target named by those 100 characters.
    Left by a killed older version, they are removed by the long target's next
    rewrite, but only while no rewrite of that 100-character target can be running
    (its rmtabtool lock is taken at once, or they are left for later)."""
    long_target, short_target = tmp_path / f"{LONG}-a", tmp_path / LONG
    long_target.write_bytes(BLOATED)
    old_style = tmp_path / f".{LONG}.rmtabtool-00112233445566ff.tmp"
    old_style.write_bytes(b"junk")
    assert temp_name_pattern(short_target).fullmatch(old_style.name)  # the ambiguity
    with ToolLock(short_target, timeout=5):  # a rewrite of the short one runs
        report = rewrite_file(long_target, dedupe, mountd_statedir=None, timeout=5)
    assert report.stale_temps_removed == []
    assert old_style.exists()
    long_target.write_bytes(BLOATED)
    report = rewrite_file(long_target, dedupe, mountd_statedir=None, timeout=5)
    assert report.stale_temps_removed == [old_style]
    assert not old_style.exists()


def test_read_snapshot(rmtab: Path) -> None:
    result, state = read_snapshot(rmtab, mountd_statedir=rmtab.parent, timeout=5)
    assert result.lines == 71
    assert len(result.table) == 2
    assert state == FileState.of(rmtab)
    result, _ = read_snapshot(rmtab, mountd_statedir=None, timeout=5)
    assert result.lines == 71
    with pytest.raises(errors.InputMissing, match="missing"):
        read_snapshot(rmtab.parent / "missing", mountd_statedir=rmtab.parent, timeout=5)


# ------------------------------------------------------------------ folding in changes


def _mnt(statedir: Path, client: str, path: str) -> bool:
    """A MNT by another process (non-blocking: False when the lock is busy)."""
    cmd = command("mnt", str(statedir), client, path, "--nonblock")
    return subprocess.run(cmd, check=False).returncode == 0


def test_mnt_between_snapshot_and_rename_is_folded_in(rmtab: Path) -> None:
    statedir = rmtab.parent
    calls: list[Optional[ReadResult]] = []

    def build(snapshot: Optional[ReadResult]) -> Iterable[bytes]:
        calls.append(snapshot)
        if len(calls) == 1:  # mountd serves a MNT while we work
            assert _mnt(statedir, "10.9.9.9", "/srv/new")
            assert _mnt(statedir, "10.0.0.2", "/srv/b")  # bumps a duplicate in place
        return dedupe(snapshot)

    report = rewrite_file(rmtab, build, mountd_statedir=statedir, timeout=5)
    assert report.rereads == 1
    assert len(calls) == 2
    assert report.snapshot is calls[-1]
    final = read_bytes(rmtab.read_bytes()).table
    assert final.get(b"10.9.9.9", b"/srv/new") is not None
    entry = final.get(b"10.0.0.2", b"/srv/b")
    assert entry is not None
    assert entry.count == 3
    assert rmtab.read_bytes().count(b"\n") == 3  # still deduplicated


def test_changes_are_folded_in_without_holding_mountds_lock_meanwhile(rmtab: Path) -> None:
    statedir = rmtab.parent
    calls = 0

    def build(snapshot: Optional[ReadResult]) -> Iterable[bytes]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            assert _mnt(statedir, f"10.8.8.{calls}", "/srv/big")  # lock is free: we wait
        return dedupe(snapshot)

    report = rewrite_file(rmtab, build, mountd_statedir=statedir, timeout=5)
    assert report.rereads == 2
    # Never held while rebuilding (the MNTs inside build got it); a file seen to
    # have changed again before the lock is taken is re-read without taking it.
    assert 1 <= report.lock_acquisitions <= 3 + int(report.mtime_bumped)  # (+ the restamp)
    final = read_bytes(rmtab.read_bytes()).table
    assert final.get(b"10.8.8.1", b"/srv/big") is not None
    assert final.get(b"10.8.8.2", b"/srv/big") is not None


def test_a_file_that_never_holds_still_is_finally_read_under_the_lock(rmtab: Path) -> None:
    statedir = rmtab.parent
    done: list[str] = []

    def build(snapshot: Optional[ReadResult]) -> Iterable[bytes]:
        client = f"10.7.7.{len(done) + 1}"
        if _mnt(statedir, client, "/srv/busy"):  # fails while we hold the lock
            done.append(client)
        return dedupe(snapshot)

    report = rewrite_file(rmtab, build, mountd_statedir=statedir, timeout=5)
    assert report.rereads == sf.OPTIMISTIC_RETRIES + 1
    assert len(done) == sf.OPTIMISTIC_RETRIES + 1  # the build under the lock could not MNT
    final = read_bytes(rmtab.read_bytes()).table
    for client in done:
        assert final.get(client.encode(), b"/srv/busy") is not None


def test_same_tick_in_place_change_of_a_recent_file_is_not_missed(
    rmtab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two writes within one timestamp tick leave size and mtime equal: for a file
    # modified just as we read it, the metadata cannot prove it unchanged, so it
    # is read again. (Normally a read first waits for a just-modified file to age
    # past the tick; switched off here to reach the case it cannot prevent: a
    # change landing between that wait and the read.)
    monkeypatch.setattr(sf, "_settle", lambda path: None)
    rmtab.write_bytes(CANONICAL)
    now = time.time_ns()
    os.utime(rmtab, ns=(now, now))
    calls = 0

    def build(snapshot: Optional[ReadResult]) -> Iterable[bytes]:
        nonlocal calls
        calls += 1
        if calls == 1:
            st = os.stat(rmtab)
            with open(rmtab, "r+b") as f:  # a MNT bump in place, same size...
                f.seek(len(b"10.0.0.1:/srv/a:"))
                f.write(b"0x00000004")
            os.utime(rmtab, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...same tick
        assert snapshot is not None
        return list(snapshot.table.lines())[::-1]

    report = rewrite_file(rmtab, build, mountd_statedir=rmtab.parent, timeout=5)
    assert report.rereads >= 1  # (more while the file stays too recent to trust)
    assert rmtab.read_bytes() == b"10.0.0.2:/srv/b:0x00000002\n10.0.0.1:/srv/a:0x00000004\n"


@pytest.mark.parametrize("verify_max", [1 << 20, 0], ids=["small:bytes", "big:settle"])
def test_a_file_modified_just_now_is_not_reread_needlessly(
    rmtab: Path, monkeypatch: pytest.MonkeyPatch, verify_max: int
) -> None:
    # mountd wrote it a moment ago: a small file is confirmed by its bytes under
    # the lock, a big one is read only once it is old enough for its mtime to count.
    monkeypatch.setattr(sf, "VERIFY_MAX", verify_max)
    now = time.time_ns()
    os.utime(rmtab, ns=(now, now))
    report = rewrite_file(rmtab, dedupe, mountd_statedir=rmtab.parent, timeout=5)
    assert report.rereads == 0
    # (a second, brief one to restamp the file once the clock left its second)
    assert report.lock_acquisitions == (2 if report.mtime_bumped else 1)
    assert rmtab.read_bytes() == CANONICAL


def test_other_file_replaced_meanwhile_is_reread(rmtab: Path) -> None:
    calls = 0

    def build(snapshot: Optional[ReadResult]) -> Iterable[bytes]:
        nonlocal calls
        calls += 1
        if calls == 1:
            (rmtab.parent / "elsewhere").write_bytes(b"h:/p:0x00000001\n" * 3)
            os.replace(rmtab.parent / "elsewhere", rmtab)
        return dedupe(snapshot)

    report = rewrite_file(rmtab, build, mountd_statedir=None, timeout=5)
    assert report.rereads == 1
    assert rmtab.read_bytes() == b"h:/p:0x00000001\n"

"""safefile/locking hardening found by the fault and hostile-path work.

* pure reads of a live rmtab whose state directory is on a read-only filesystem
  (opening ``.rmtab.lock`` O_CREAT fails with EROFS) read without the lock;
* a symlink that belongs to another user (neither root nor the caller) is not
  followed by root, wherever it is (stricter than the kernel's fs.protected_symlinks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import cliutil
import pytest

IS_ROOT = os.geteuid() == 0


#: the installed command, without RMTABTOOL_* and PYTEST* in its environment; a run
#: over 20 s fails the test instead of hanging the suite
run = partial(cliutil.run, timeout=20)


# ------------------------------------------------------------ read-only statedir, pure reads


@pytest.fixture
def read_only_statedir(tmp_path: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """A statedir on a tmpfs remounted read-only, in a private mount namespace."""
    if not IS_ROOT or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs root, unshare and nsenter")
    statedir = tmp_path / "varlibnfs"
    statedir.mkdir()
    script = (
        'mount -t tmpfs -o size=1m tmpfs "$1" && printf "%s" "$2" > "$1/rmtab" '
        '&& mount -o remount,ro "$1" && echo ready && exec cat'
    )
    line = b"10.0.0.1:%s:0x00000001\n" % os.fsencode(tmp_path / "export")
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
    argv += [str(statedir), line.decode()]
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"ready\n"
    try:
        yield statedir, ("nsenter", "--target", str(holder.pid), "--mount", "--")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()


@pytest.mark.parametrize("command", ["stats", "backup", "dedupe-o"])
def test_pure_reads_of_a_live_rmtab_on_a_read_only_filesystem_work(
    tmp_path: Path, read_only_statedir: tuple[Path, tuple[str, ...]], command: str
) -> None:
    """stats / backup / dedupe -o only READ the live rmtab. Reading takes mountd's
    shared lock, and opening <statedir>/.rmtab.lock O_CREAT fails with EROFS there;
    nobody (mountd included) can write a file on a read-only filesystem, so the read
    falls back to a settled read without the lock, like a reader who may not open it
    (an admin inspecting a read-only snapshot, or /var/lib/nfs mounted ro after a fault)."""
    statedir, enter = read_only_statedir
    export = tmp_path / "export"
    export.mkdir()
    live = statedir / "rmtab"
    args: dict[str, list[str | Path]] = {
        "stats": ["stats"],
        "backup": ["backup", export],
        "dedupe-o": ["dedupe", "-o", tmp_path / "out"],
    }
    proc = run(*args[command], "--rmtab", live, prefix=enter)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------ 1. symlink planted by another user


@pytest.mark.skipif(not IS_ROOT, reason="needs root to own a link as another user")
@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_backup_refuses_a_symlink_planted_by_another_user_in_a_world_writable_dir(
    tmp_path: Path, mode: int
) -> None:
    """uid 1000 plants EXPORT/.rmtab -> /etc/passwd-like file; root's backup (the
    resource agent's monitor, every 10 s) must not replace that file.

    rmtabtool resolves the link itself (safefile.resolve_target) and renames into
    the link target's directory, so the kernel's fs.protected_symlinks never
    runs: rmtabtool applies its own rule -- a link is followed only when it is
    ours or root's (exit 77, one line naming the link, nothing written).
    """
    export = tmp_path / "export"
    export.mkdir()
    os.chmod(export, mode)
    etc = tmp_path / "etc"
    etc.mkdir()
    passwd = etc / "passwd"
    passwd.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    link = export / ".rmtab"
    link.symlink_to(passwd)
    os.lchown(link, 1000, 1000)
    live = tmp_path / "rmtab"
    live.write_bytes(b"10.0.0.1:%s:0x00000001\n" % os.fsencode(export))
    proc = run("backup", export, "--rmtab", live)
    assert passwd.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n", "written through the link"
    assert proc.returncode == 77, proc.stderr
    assert str(link) in proc.stderr.decode()
    assert proc.stderr.decode().count("\n") == 1
    assert link.is_symlink()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to own a link as another user")
@pytest.mark.parametrize(
    ("mode", "dir_owner"),
    [
        (0o1777, 1000),  # world-writable, the link made by the directory's owner
        (0o755, 1000),  # a user's own export directory (0755 alice)
        (0o2775, 0),  # group-writable (2775 root:projects), a group member's link
    ],
    ids=["1777-owner", "0755-user", "2775-group"],
)
def test_a_link_by_any_other_user_is_refused_wherever_it_is(
    tmp_path: Path, mode: int, dir_owner: int
) -> None:
    """Whoever owns the link would choose what root's backup replaces: only links
    made by root (or by the user running rmtabtool) are followed. Stricter than
    fs.protected_symlinks, which trusts the directory's owner and ignores
    group-writable directories."""
    export = tmp_path / "export"
    export.mkdir()
    os.chown(export, dir_owner, 1000)
    os.chmod(export, mode)
    victim = tmp_path / "victim"
    victim.write_bytes(b"root:x:0:0\n")
    link = export / ".rmtab"
    link.symlink_to(victim)
    os.lchown(link, 1000, 1000)
    live = tmp_path / "rmtab"
    live.write_bytes(b"10.0.0.1:%s:0x00000001\n" % os.fsencode(export))
    proc = run("backup", export, "--rmtab", live)
    assert proc.returncode == 77, proc.stderr
    assert victim.read_bytes() == b"root:x:0:0\n", "written through the link"
    assert str(link) in proc.stderr.decode()
    assert link.is_symlink()


@pytest.mark.skipif(not IS_ROOT, reason="needs root")
@pytest.mark.parametrize("mode", [0o1777, 0o755])
def test_a_link_made_by_root_is_followed(tmp_path: Path, mode: int) -> None:
    """An admin keeps the backup on shared storage: ``ln -s /shared/x.rmtab EXPORT/.rmtab``."""
    export = tmp_path / "export"
    export.mkdir()
    os.chown(export, 1000, 1000)
    os.chmod(export, mode)
    stored = tmp_path / "stored"
    stored.write_bytes(b"")
    link = export / ".rmtab"
    link.symlink_to(stored)
    live = tmp_path / "rmtab"
    line = b"10.0.0.1:%s:0x00000001\n" % os.fsencode(export)
    live.write_bytes(line)
    proc = run("backup", export, "--rmtab", live)
    assert proc.returncode == 0, proc.stderr
    assert stored.read_bytes() == line
    assert link.is_symlink()


# ------------------------------------------------------------ 2. appending in place (.rejects)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to own a link as another user")
@pytest.mark.parametrize("window", ["after-resolve", "before-open"])
def test_open_append_does_not_follow_a_link_swapped_in_after_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: str
) -> None:
    """The name is judged by resolve_target, then opened: a link another user swaps
    in between (right after the check, or at the last moment before open(2)) is
    not followed (O_NOFOLLOW) but judged again, and refused (77)."""
    from rmtabtool import errors
    from rmtabtool import safefile as sf

    export = tmp_path / "export"
    export.mkdir()
    os.chmod(export, 0o1777)
    victim = tmp_path / "victim"
    victim.write_bytes(b"root:x:0:0\n")
    name = export / ".rmtab.rejects"

    def swap() -> None:
        if not name.is_symlink():  # the attacker wins the race once
            name.symlink_to(victim)
            os.lchown(name, 1000, 1000)

    if window == "after-resolve":
        real_resolve = sf.resolve_target

        def resolve_then_swap(path: sf.StrPath) -> Path:
            resolved = real_resolve(path)
            swap()
            return resolved

        monkeypatch.setattr(sf, "resolve_target", resolve_then_swap)
    else:
        real_open = os.open

        def swap_then_open(path: sf.StrPath, flags: int, mode: int = 0o777) -> int:
            if Path(path) == name and flags & os.O_WRONLY:
                swap()
            return real_open(path, flags, mode)

        monkeypatch.setattr(os, "open", swap_then_open)
    with pytest.raises(errors.PermissionDenied, match="refusing to follow the symbolic link"):
        sf.open_append(name)
    assert victim.read_bytes() == b"root:x:0:0\n"


@pytest.mark.skipif(not IS_ROOT, reason="needs root to own a file as another user")
def test_open_append_refuses_a_hard_link_to_another_users_file_anywhere(tmp_path: Path) -> None:
    """Even where only root creates names: a second name of a file that belongs to
    a third user is not written through."""
    from rmtabtool import errors
    from rmtabtool.safefile import open_append

    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    theirs = tmp_path / "theirs"
    theirs.write_bytes(b"")
    os.chown(theirs, 1000, 1000)
    os.link(theirs, private / "x.rejects")
    with pytest.raises(errors.PermissionDenied, match="hard links"):
        open_append(private / "x.rejects")
    assert theirs.read_bytes() == b""
    # one name only: a file of another user's is appended to (it is that file itself)
    os.unlink(theirs)
    fd, path = open_append(private / "x.rejects")
    os.close(fd)
    assert path == private / "x.rejects"

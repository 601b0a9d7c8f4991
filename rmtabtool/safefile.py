"""Crash-safe replacement of a file rpc.mountd may be using, and consistent reads of it.

Everything rmtabtool writes goes through :func:`rewrite_file` (or, for a plain
new file, :class:`AtomicWriter`), except the one file appended in place,
``<file>.rejects``, which is opened by :func:`open_append` under the same rules
for links:

* the new content is streamed into a hidden temporary file of ours beside the
  real target (``.<name>.rmtabtool-<random>.tmp``, created ``O_EXCL|O_NOFOLLOW``;
  never ``rmtab.tmp``, which is mountd's), given the target's mode, owner and
  SELinux label, fsynced, renamed over the target, and the directory fsynced: at
  every instant the target is the complete old file or the complete new one;
* a symlinked target is followed (the link stays, its target is replaced), as
  mountd does;
* content identical to the file is not written at all (no new inode, no mtime
  change, not even a temporary file when it fits in memory);
* when the target is the live rmtab, the expensive work (reading, collapsing,
  writing the temp file) runs WITHOUT mountd's lock; the lock is taken only to
  check that the file is still the one the new content was built from and to
  rename. If mountd changed it meanwhile the change is folded in (re-read and
  rebuild) before anything is renamed, so no MNT or UMNT is ever lost;
* the live rmtab's mtime second always moves (mountd's DUMP cache keys on it),
  but never ahead of the clock: a new file that would share the old one's second
  is renamed at once and restamped with the current time once the clock has
  left that second (a stat and a utime under the lock; see _restamp);
* mountd's lock is held for a stat, the rename and the caller's ``before_commit``
  only (measured by benchmarks/lock_hold.py: at most ~2 ms for the in-place
  dedupe of a 1.6 GB file; an unchanged file takes only the shared lock, for a
  stat, as a pure read does; the replaced
  file's blocks are freed after the lock is released, not inside rename(2)).
  The exception: a file that mountd keeps changing faster than we can rebuild
  it (OPTIMISTIC_RETRIES lost races, ~70 MNT/UMNT a second on 2,000 lines) is
  re-read, rebuilt and written once while holding the lock (tens of ms);
* SIGTERM/SIGHUP during a rewrite clean up like Ctrl-C (:class:`SignalReceived`);
  after kill -9, the next run removes the stale temp file.

The live-rmtab decision is the caller's: pass ``mountd_statedir`` (the directory
of the live rmtab path as configured) when :func:`is_same_file` says the target is
the live rmtab, ``None`` otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, BinaryIO, Optional, Union

from . import errors
from ._record import FrozenRecord, Record
from .locking import _LONG_NAME_KEEP, MountdLock, ToolLock, _shared_directory, cut_long_name
from .table import CHUNK_SIZE, ReadResult, auto_jobs, read_bytes, read_table

__all__ = [
    "MEMORY_OUTPUT_MAX",
    "OPTIMISTIC_RETRIES",
    "TEMP_MARK",
    "TEMP_SUFFIX",
    "AtomicWriter",
    "Build",
    "FileState",
    "RewriteReport",
    "SignalReceived",
    "clean_stale_temps",
    "is_same_file",
    "open_append",
    "read_snapshot",
    "resolve_target",
    "rewrite_file",
    "temp_name_pattern",
]

StrPath = Union[str, "os.PathLike[str]"]
#: ``build(snapshot)``: the new content, given what the file holds (None: no file).
Build = Callable[[Optional[ReadResult]], Iterable[bytes]]
#: ``progress(bytes_read, bytes_total)``: called while a file is read (a re-read
#: after a change by rpc.mountd starts again from 0)
ReadProgress = Callable[[int, int], None]

#: Temp files are ``.<name>.rmtabtool-<16 hex digits>.tmp`` in the target's directory
#: (a name over _NAME_KEEP bytes: ``.<its first _NAME_KEEP bytes>~<hash>.rmtabtool-...``).
TEMP_MARK = ".rmtabtool-"
TEMP_SUFFIX = ".tmp"
#: A longer target name is cut to this many bytes in its temp names (NAME_MAX is
#: 255) and followed by ``~`` and 12 hex digits of the whole name's SHA-256
#: (:func:`~rmtabtool.locking.cut_long_name`).
_NAME_KEEP = _LONG_NAME_KEEP

#: AtomicWriter's write buffer.
WRITE_BUFFER = 1 << 20
#: New content is held in memory (no temp file) while it still equals the current
#: file, up to this size: an unchanged file costs no directory churn at all.
MEMORY_OUTPUT_MAX = 8 << 20
#: When mountd changed the live rmtab after our snapshot, it is re-read and the
#: content rebuilt WITHOUT mountd's lock up to this many times (after a short
#: randomised pause); then once more while holding it (slow for mountd, but
#: certain to finish: parsing a 2,000-line file alone takes ~30 ms). Measured with
#: ~30 mountd-like UMNT/MNT a second on 2,000 lines: 6 retries end under the lock
#: in 2 runs of 12, 3 retries in 5 of 12.
OPTIMISTIC_RETRIES = 6
#: Randomised pause before a quick retry (growing, capped): out of step with a
#: client stream that is itself periodic.
_BACKOFF_MAX_US = 20_000
#: A file up to this size is kept in memory as read, so that a snapshot taken just
#: after a change (too recent for its mtime to prove anything, see _RACY_NS) is
#: confirmed by comparing bytes under the lock instead of by waiting and re-reading.
VERIFY_MAX = 1 << 20

_NS = 1_000_000_000
# Two modifications within one timestamp tick leave the same mtime, so a file
# modified around the time we read it cannot be proven unchanged by its metadata
# ("racy", as git calls it). Ticks are a few ms (jiffies); filesystems with
# whole-second timestamps (ext4 with 128-byte inodes, FAT, some NFS) get more.
_RACY_NS = 50_000_000
_RACY_COARSE_NS = 2 * _NS

# File timestamps come from the kernel's coarse clock, which may lag the wall
# clock by a tick: aim a little past a second boundary.
_SECOND_MARGIN_NS = 10_000_000


def _sleep_past_second(second: int) -> None:
    """Sleep until the wall clock is (a margin) past the end of ``second``."""
    delay = (second + 1) * _NS + _SECOND_MARGIN_NS - time.time_ns()
    if delay > 0:
        time.sleep(delay / _NS)


#: Signals that become exceptions (KeyboardInterrupt, SignalReceived) at any point.
_INTERRUPTS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back for a few system calls that must not be split.

    Their handlers raise an exception wherever the interpreter happens to be. One
    raised between creating the temp file and remembering its name would leak
    the file; one raised between the rename and recording it would report
    "nothing was changed" about a replaced rmtab. Blocked signals stay pending
    and are delivered (and raised) as soon as the block ends.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_COPIED_XATTRS = ("system.posix_acl_access", "security.selinux")
_NO_XATTR = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})


# --------------------------------------------------------------------------- paths


class FileState(FrozenRecord):
    """What identifies one version of a file: device, inode, size and mtime."""

    __slots__ = ("dev", "ino", "size", "mtime_ns")

    dev: int
    ino: int
    size: int
    mtime_ns: int

    def __init__(self, dev: int, ino: int, size: int, mtime_ns: int) -> None:
        object.__setattr__(self, "dev", dev)
        object.__setattr__(self, "ino", ino)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mtime_ns", mtime_ns)

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileState:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    @classmethod
    def of(cls, path: StrPath) -> Optional[FileState]:
        """The state of ``path`` (symlinks followed), or None when it does not exist."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise errors.from_oserror(exc, path, "stat", reading=True) from exc
        return cls.from_stat(st)


_MAX_SYMLINKS = 40


def resolve_target(path: StrPath) -> Path:
    """The file a rewrite of ``path`` must replace: symlinks followed to the end.

    Like mountd, a symlinked rmtab is not replaced by a regular file: its final
    target is. Relative link targets are taken relative to the link's directory
    (mountd resolves them from its working directory, which is a bug). A missing
    final target is returned as is (it will be created). A link that belongs to
    another user (neither us nor root) is refused (see _check_link_owner).
    The directory part comes back canonical, so every spelling of one file gives
    one path (and one lock).
    """
    current = os.fspath(path)
    if not os.path.isabs(current):
        current = os.path.join(os.getcwd(), current)
    for _ in range(_MAX_SYMLINKS):
        try:
            st = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return _real_directory(current)
        except OSError as exc:
            raise errors.from_oserror(exc, current, "look up") from exc
        if not stat.S_ISLNK(st.st_mode):
            return _real_directory(current)
        _check_link_owner(current, st)
        try:
            link = os.readlink(current)
        except OSError as exc:
            raise errors.from_oserror(exc, current, "read the symbolic link") from exc
        current = link if os.path.isabs(link) else os.path.join(os.path.dirname(current), link)
    raise errors.OutputError(f"cannot resolve {os.fspath(path)}: too many levels of symbolic links")


def _check_link_owner(link: str, st: os.stat_result) -> None:
    """Follow a symbolic link on the way to a file we replace only when it is ours or root's.

    Whoever owns a link chooses which file the next rewrite replaces. A user who
    can create names in an export directory (it is theirs, or it is writable by
    their group or by everybody) could otherwise point root's next ``backup``
    (the resource agent's monitor, every 10 s) at any file root can write
    (``EXPORT/.rmtab -> /etc/shadow``). resolve_target follows links by hand and
    renames into the final target's directory, so the kernel's
    fs.protected_symlinks never runs, and it would not cover a directory owned
    by that user or writable through a group anyway. Links made by root, like a
    symlinked live rmtab or a backup kept on shared storage, are followed as
    rpc.mountd follows them; a user running rmtabtool follows their own links.
    """
    euid = os.geteuid()
    if st.st_uid in (euid, 0):
        return
    trusted = "root" if euid == 0 else f"uid {euid} or root"
    raise errors.PermissionDenied(
        f"refusing to follow the symbolic link {link}: it belongs to uid {st.st_uid}, "
        f"not to {trusted}, so that user would choose which file is replaced; nothing "
        "was written: remove the link (or make it as root)"
    )


def open_append(path: StrPath, mode: int = 0o644) -> tuple[int, Path]:
    """Open ``path`` to append to it in place (created ``mode`` if missing): ``(fd, file)``.

    For the one file rmtabtool writes in place rather than by rename,
    ``<file>.rejects``: its name is reached like every other output's. Symbolic
    links are followed only when they belong to root or to the caller
    (:func:`resolve_target`, exit 77), and the final open is ``O_NOFOLLOW``, so
    a link swapped in afterwards is judged again rather than followed. Anything
    but a regular file is refused (exit 66, like a FIFO or device at any output's
    name; a directory 73) before it is opened when it is already there, so a
    device is never opened; ``O_NONBLOCK`` keeps a FIFO swapped in meanwhile from
    hanging the open. An append writes through every name of the file: one with
    more than one link is refused (77) where someone other than root or the
    caller could have made the second name (see :func:`_check_append_links`).
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(_MAX_SYMLINKS):
        target = resolve_target(path)
        try:
            st: Optional[os.stat_result] = os.lstat(target)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise errors.from_oserror(exc, target, "append to") from exc
        if st is not None:
            if stat.S_ISLNK(st.st_mode):
                continue  # a link appeared since resolve_target: judge it like any link
            _check_appendable(target, st)
        try:
            fd = os.open(target, flags, mode)
        except OSError as exc:
            # the same, a moment later: O_NOFOLLOW gives ELOOP (EACCES in a sticky
            # directory, for another user's link)
            if exc.errno in (errno.ELOOP, errno.EACCES) and os.path.islink(target):
                continue
            if exc.errno == errno.ENXIO:  # a FIFO nobody reads, swapped in meanwhile
                raise errors.InputMissing(f"cannot append to {target}: not a regular file") from exc
            raise errors.from_oserror(exc, target, "append to") from exc
        try:
            _check_appendable(target, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd, target
    raise errors.OutputError(f"cannot open {os.fspath(path)}: symbolic links keep appearing at it")


def _check_appendable(target: Path, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise errors.OutputError(f"cannot append to {target}: it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise errors.InputMissing(f"cannot append to {target}: not a regular file")
    _check_append_links(target, st)


def _check_append_links(target: Path, st: os.stat_result) -> None:
    """Append to a file with several names only when nobody else could have added one.

    A hard link has no owner of its own: ``ln /etc/cron.d/job EXPORT/x.rejects``
    (allowed where fs.protected_hardlinks is 0, or for any file the user may read
    and write) looks exactly like root's own file, and appending to it writes
    that job. Where only root and the caller create names (a state directory), a
    second name is their own doing (a hard-link snapshot) and is written through;
    where others can (group- or world-writable, or another user's directory, the
    rule locking applies to its lock files), or when the file belongs to a third
    user, it is refused. Replaced files need no such rule: rename replaces the name.
    """
    if st.st_nlink <= 1:
        return
    if st.st_uid not in (os.geteuid(), 0):
        why = f"it belongs to uid {st.st_uid}"
    elif _shared_directory(target.parent):
        why = "others can create names in its directory"
    else:
        return
    raise errors.PermissionDenied(
        f"refusing to append to {target}: it has {st.st_nlink} hard links and {why}, so "
        "another name of it may be a file that must not be written; nothing was written: "
        "remove the link"
    )


def _real_directory(path: str) -> Path:
    """``path`` with its directory part canonical (symlinks and ``..`` resolved)."""
    head, name = os.path.split(path)
    return Path(os.path.realpath(head or ".")) / name


def _identity(path: StrPath) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def is_same_file(a: StrPath, b: StrPath) -> bool:
    """Do ``a`` and ``b`` name the same file (like ``os.path.samefile``)?

    Tolerant of missing files: two missing paths are the same when they would
    be created as the same file (same name in the same directory, symlinks
    followed); a missing path is never the same as an existing one.
    """
    try:
        ra, rb = resolve_target(a), resolve_target(b)
    except errors.RmtabError:
        return os.path.normpath(os.fspath(a)) == os.path.normpath(os.fspath(b))
    ia, ib = _identity(ra), _identity(rb)
    if ia is not None or ib is not None:
        return ia == ib
    if ra.name != rb.name:
        return False
    da, db = _identity(ra.parent), _identity(rb.parent)
    if da is not None and db is not None:
        return da == db
    return os.path.normpath(ra) == os.path.normpath(rb)


def _temp_prefix(name: str) -> str:
    """``.<name>.rmtabtool-``, a long name cut to _NAME_KEEP bytes plus ``~<hash>``.

    The hash of the whole name keeps two long names that share their start from
    sharing temp names (a rewrite of one would delete the other's temp file in
    flight), and a cut name's part (_NAME_KEEP + 13 bytes) is never as short as a
    whole one (at most _NAME_KEEP): no temp name belongs to two targets.
    """
    raw = os.fsencode(name)
    if len(raw) <= _NAME_KEEP:
        return f".{name}{TEMP_MARK}"
    return f".{cut_long_name(raw)}{TEMP_MARK}"


def _old_temp_prefix(name: str) -> Optional[str]:
    """The prefix rmtabtool gave a long name's temps before the hash (its first 100
    characters), when it differs from today's: killed older runs left such files."""
    old = f".{name[:_NAME_KEEP]}{TEMP_MARK}"
    return None if old == _temp_prefix(name) else old


def _temp_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(re.escape(prefix) + "[0-9a-f]{16}" + re.escape(TEMP_SUFFIX))


def temp_name_pattern(target: StrPath) -> re.Pattern[str]:
    """The names of our temp files for ``target`` (what :func:`clean_stale_temps` removes)."""
    return _temp_pattern(_temp_prefix(Path(target).name))


def clean_stale_temps(target: StrPath) -> list[Path]:
    """Remove temp files a killed rmtabtool run left beside ``target``; list them.

    Call only while holding the target's :class:`~rmtabtool.locking.ToolLock`
    (a running rmtabtool's temp file looks exactly like a stale one). Names that
    are ours but owned by someone we cannot remove them for are left alone.
    A long name's temps from before the hash are removed too; where they look
    exactly like the temps of the target named by the first 100 characters, only
    when that target's ToolLock can be taken at once (else a later run does it).
    """
    path = Path(target)
    directory = path.parent
    pattern = temp_name_pattern(path)
    old_prefix = _old_temp_prefix(path.name)
    old_pattern = _temp_pattern(old_prefix) if old_prefix is not None else None
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise errors.from_oserror(exc, directory, "open the directory") from exc
    try:
        with os.scandir(dfd) as entries:
            all_names = [e.name for e in entries]
        names = [n for n in all_names if pattern.fullmatch(n)]
        removed = _remove_temps(dfd, directory, names)
        old = [n for n in all_names if old_pattern is not None and old_pattern.fullmatch(n)]
        if old:
            sibling = path.with_name(path.name[:_NAME_KEEP])
            if _temp_prefix(sibling.name) != old_prefix:
                removed += _remove_temps(dfd, directory, old)
            else:  # they may be the sibling's, in flight
                guard = ToolLock(sibling, 0.0)
                try:
                    guard.acquire()
                except errors.RmtabError:
                    return removed
                try:
                    removed += _remove_temps(dfd, directory, old)
                finally:
                    guard.release()
    finally:
        os.close(dfd)
    return removed


def _remove_temps(dfd: int, directory: Path, names: Iterable[str]) -> list[Path]:
    removed: list[Path] = []
    for name in names:
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                continue
            os.unlink(name, dir_fd=dfd)
        except (FileNotFoundError, PermissionError):
            continue
        except OSError as exc:
            raise errors.from_oserror(exc, directory / name, "remove the stale file") from exc
        removed.append(directory / name)
    return removed


# --------------------------------------------------------------------------- writer


class AtomicWriter:
    """Write a new version of ``target`` beside it, then swap it in atomically.

    ``write()`` streams (buffered); ``commit()`` = :meth:`finish` (flush, copy
    the target's mode/owner/ACL/SELinux label -- 0644 for a new file --, fsync),
    :meth:`replace` (rename over the target) and :meth:`sync_dir`. The steps are
    public so that a caller can do the slow ones before taking a lock and only
    the rename under it. Leaving the ``with`` block without a commit, for any
    reason (an error, Ctrl-C), removes the temp file: the target is untouched.
    All failures are :class:`~rmtabtool.errors.RmtabError` naming the target.
    """

    def __init__(self, target: StrPath, *, buffer_size: int = WRITE_BUFFER) -> None:
        self.target = resolve_target(target)
        self.directory = self.target.parent
        self.temp_name = ""
        self.bytes_written = 0
        self.committed = False
        #: leave_second() had to wait for a new second and restamp the file
        self.mtime_bumped = False
        self._buffer = bytearray()
        self._buffer_size = buffer_size
        self._finished = False
        self._discarded = False
        self._fd = -1
        self._dirfd = -1
        try:
            self._dirfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise errors.from_oserror(exc, self.directory, "write in") from exc
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        import secrets  # here, not at the top: 6 ms of start-up (hmac, OpenSSL, random)

        try:
            while True:
                name = f"{_temp_prefix(self.target.name)}{secrets.token_hex(8)}{TEMP_SUFFIX}"
                with _uninterrupted():  # never a file on disk whose name we forgot
                    try:
                        self._fd = os.open(name, flags, 0o600, dir_fd=self._dirfd)
                    except FileExistsError:
                        continue  # 64 random bits: someone planted this exact name
                    self.temp_name = name
                break
        except OSError as exc:
            self._close_dir()
            raise self._error(exc, "create a temporary file beside") from exc
        except BaseException:
            self._close_dir()
            raise

    @property
    def temp_path(self) -> Path:
        return self.directory / self.temp_name

    def _error(self, exc: OSError, action: str) -> errors.RmtabError:
        err = errors.from_oserror(exc, self.target, action)
        if self.committed:
            return err
        return type(err)(f"{err} ({self.target} is unchanged)")

    def write(self, data: bytes) -> None:
        if self._fd < 0 or self._finished:
            raise ValueError("write to a finished or discarded AtomicWriter")
        if not self._buffer and len(data) >= self._buffer_size:
            self._write_all(data)
            return
        self._buffer += data
        if len(self._buffer) >= self._buffer_size:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            self._write_all(data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except OSError as exc:
                self.discard()
                raise self._error(exc, "write a new copy of") from exc
            view = view[n:]
            self.bytes_written += n

    def finish(self, *, newer_than_ns: Optional[int] = None) -> None:
        """Flush, give the temp file the target's metadata, and fsync it.

        ``newer_than_ns``: the mtime of the file being replaced; see
        :meth:`leave_second` (called after the fsync; it may sleep up to a second).
        """
        if self._finished:
            return
        try:
            self._flush()
            self._copy_metadata()
            os.fsync(self._fd)
        except OSError as exc:
            self.discard()
            raise self._error(exc, "write a new copy of") from exc
        except BaseException:
            self.discard()
            raise
        self._finished = True
        if newer_than_ns is not None:
            self.leave_second(newer_than_ns)

    def mtime_second(self) -> int:
        """The whole second of the (unrenamed) new file's mtime."""
        return os.fstat(self._fd).st_mtime_ns // _NS

    def leave_second(self, old_mtime_ns: int) -> float:
        """Make the new file's mtime second differ from ``old_mtime_ns``'s, never in the future.

        mountd's DUMP cache keys on the whole mtime second, so a file replaced in
        the second it was last written stays invisible to ``showmount -a``. The
        new file's natural mtime (when it was written) is kept unless it falls in
        that second; then this waits until the wall clock enters the next second
        and stamps the file with the current time. (Dating it ahead instead, as
        rmtabtool once did, hides mountd's own next change made in that later
        second.) Call it WITHOUT mountd's lock: it may sleep up to a second.
        Returns the seconds waited (0.0: the natural mtime was fine).
        """
        if self._fd < 0:
            raise ValueError("leave_second() on a committed or discarded AtomicWriter")
        old_second = old_mtime_ns // _NS
        start = time.monotonic()
        waited = False
        try:
            while os.fstat(self._fd).st_mtime_ns // _NS == old_second:
                _sleep_past_second(old_second)
                os.utime(self._fd)  # now; checked again: file times use a coarser clock
                waited = self.mtime_bumped = True
        except OSError as exc:
            self.discard()
            raise self._error(exc, "set the modification time of") from exc
        except BaseException:
            self.discard()
            raise
        return time.monotonic() - start if waited else 0.0

    def _copy_metadata(self) -> None:
        try:
            st = os.stat(self.target)
        except FileNotFoundError:
            os.fchmod(self._fd, 0o644)  # a new file: 0644 whatever the umask
            return
        if stat.S_ISDIR(st.st_mode) or not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise errors.OutputError(f"cannot replace {self.target}: it is {kind}")
        mine = os.fstat(self._fd)
        if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid):
            try:
                os.fchown(self._fd, st.st_uid, st.st_gid)
            except PermissionError as exc:
                raise errors.PermissionDenied(
                    f"cannot keep the owner {st.st_uid}:{st.st_gid} of {self.target}: "
                    f"{exc.strerror} (run as root or as its owner; it is unchanged)"
                ) from exc
        os.fchmod(self._fd, stat.S_IMODE(st.st_mode))
        for name in _COPIED_XATTRS:
            try:
                value = os.getxattr(self.target, name)
            except OSError as exc:
                if exc.errno in _NO_XATTR:
                    continue
                raise
            try:
                os.setxattr(self._fd, name, value)
            except OSError as exc:
                if exc.errno not in _NO_XATTR:
                    raise

    def replace(self) -> None:
        """Rename the (finished) temp file over the target."""
        if not self._finished:
            self.finish()
        with _uninterrupted():  # renamed means committed, never one without the other
            try:
                os.rename(
                    self.temp_name,
                    self.target.name,
                    src_dir_fd=self._dirfd,
                    dst_dir_fd=self._dirfd,
                )
            except OSError as exc:
                self.discard()
                raise self._error(exc, "replace") from exc
            self.committed = True
        with contextlib.suppress(OSError):  # the data is fsynced already
            os.close(self._fd)
        self._fd = -1

    def sync_dir(self) -> None:
        """fsync the directory so that the rename itself survives a crash."""
        if self._dirfd < 0:
            return
        try:
            os.fsync(self._dirfd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise errors.IOFailure(
                    f"replaced {self.target} but could not sync its directory: {exc.strerror}"
                ) from exc
        finally:
            self._close_dir()

    def commit(self) -> None:
        """finish(), replace(), sync_dir()."""
        self.finish()
        self.replace()
        self.sync_dir()

    def discard(self) -> None:
        """Drop the temp file (unless committed). Safe to call more than once."""
        with _uninterrupted():
            self._discard()

    def _discard(self) -> None:
        self._discarded = not self.committed
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if not self.committed and self.temp_name and self._dirfd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.temp_name, dir_fd=self._dirfd)
        self._buffer.clear()
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dirfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._dirfd)
            self._dirfd = -1

    def close(self) -> None:
        if self.committed:
            self._close_dir()
        else:
            self.discard()

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None and not self.committed and not self._discarded:
            self.commit()
        self.close()


# --------------------------------------------------------------------------- reading


class _Snapshot:
    """One read of a file: the parsed content and the state it was read at."""

    __slots__ = ("content", "result", "started_ns", "state", "under_lock", "unstable")

    def __init__(
        self,
        result: ReadResult,
        state: FileState,
        started_ns: int,
        unstable: bool,
        content: Optional[bytes],
    ) -> None:
        self.result = result
        self.state = state
        #: wall clock when the read began
        self.started_ns = started_ns
        #: the file visibly changed while it was being read
        self.unstable = unstable
        #: the bytes read, for a file up to VERIFY_MAX
        self.content = content
        #: read while holding mountd's exclusive lock (nothing could change it)
        self.under_lock = False

    def trusted(self, path: Path, current: Optional[FileState], *, strict: bool = True) -> bool:
        """Is the file at ``path``, now in state ``current``, still exactly what was read?

        ``strict``: also refuse a "racy" snapshot, one whose mtime a change made
        since the read began could have reproduced (see :func:`_racy`), unless
        its bytes are at hand to compare. Only worth it against a writer we lock
        out (mountd); other writers are not coordinated with at all.
        """
        if current != self.state or (self.unstable and not self.under_lock):
            return False
        if self.under_lock or not strict:
            return True
        if not _racy(self.state.mtime_ns, self.started_ns, time.time_ns()):
            return True
        return self.content is not None and _content_is(path, self.state, self.content)


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, CHUNK_SIZE)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _content_is(path: Path, state: FileState, content: bytes) -> bool:
    """Does ``path`` (in ``state``) hold exactly ``content``? (a small file, under the lock)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if FileState.from_stat(os.fstat(fd)) != state:
            return False
        return _read_fd(fd) == content
    except OSError:
        return False
    finally:
        os.close(fd)


def _racy_window(mtime_ns: int) -> int:
    return _RACY_COARSE_NS if mtime_ns % _NS == 0 else _RACY_NS


def _racy(mtime_ns: int, started_ns: int, now_ns: int) -> bool:
    """Could a change between ``started_ns`` and ``now_ns`` have left mtime at ``mtime_ns``?

    Changes in that interval get mtimes within a timestamp tick of it; a file
    last modified well before the read began (or stamped well after now, as our
    own mtime bump does) cannot hide one behind an equal mtime.
    """
    window = _racy_window(mtime_ns)
    return started_ns - window <= mtime_ns <= now_ns + window


def _settle(path: Path) -> None:
    """Before an unlocked read of a big file: if it was modified just now, wait (at
    most one fine-grained window) so that the read will not be racy. (Small files
    are confirmed by their bytes instead: no waiting.)"""
    try:
        st = os.stat(path)
    except OSError:
        return
    mtime = st.st_mtime_ns
    if st.st_size <= VERIFY_MAX or _racy_window(mtime) != _RACY_NS:
        return  # whole-second timestamps: not worth waiting for
    delay = mtime + _RACY_NS - time.time_ns() + 1_000_000
    if 0 < delay <= _RACY_NS + 1_000_000:
        time.sleep(delay / _NS)


class CountingReader:
    """A binary stream that reports how far it has been read: ``progress(done, total)``."""

    def __init__(self, raw: BinaryIO, total: int, progress: ReadProgress) -> None:
        self._raw = raw
        self._total = total
        self._progress = progress
        self._done = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._done += len(data)
        self._progress(self._done, self._total)
        return data


class _Reading(FrozenRecord):
    """How a big file is read: with a progress callback, by how many processes."""

    __slots__ = ("progress", "jobs")

    progress: Optional[ReadProgress]
    #: reader processes (``read_table``'s ``jobs``; 0: automatic by size)
    jobs: int

    def __init__(self, progress: Optional[ReadProgress] = None, jobs: int = 1) -> None:
        object.__setattr__(self, "progress", progress)
        object.__setattr__(self, "jobs", jobs)

    def read(self, stream: BinaryIO, size: int) -> ReadResult:
        if self.jobs > 1 or (self.jobs == 0 and auto_jobs(size) > 1):
            # the workers read their own ranges (pread): progress only at both ends
            return read_table(stream, jobs=self.jobs)
        if self.progress is not None:
            return read_table(CountingReader(stream, size, self.progress))  # type: ignore[arg-type]
        return read_table(stream)


_PLAIN = _Reading()


def _read_once(
    path: Path, *, settle: bool = False, reading: _Reading = _PLAIN
) -> Optional[_Snapshot]:
    """Read ``path`` into a snapshot; None when it does not exist."""
    if settle:
        _settle(path)
    started = time.time_ns()
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang us in open().
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise errors.from_oserror(exc, path, "read", reading=True) from exc
    try:
        before = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise errors.from_oserror(exc, path, "read", reading=True) from exc
    if not stat.S_ISREG(before.st_mode):
        os.close(fd)
        kind = "it is a directory" if stat.S_ISDIR(before.st_mode) else "not a regular file"
        raise errors.InputMissing(f"cannot read {path}: {kind}")
    content: Optional[bytes] = None
    with open(fd, "rb", buffering=0) as stream:
        try:
            size = before.st_size
            progress = reading.progress
            if progress is not None:
                progress(0, size)
            if size <= VERIFY_MAX:
                content = _read_fd(fd)
                result = read_bytes(content)
            else:
                result = reading.read(stream, size)
            if progress is not None:
                progress(result.bytes_read, size)
            after = os.fstat(fd)
        except OSError as exc:
            raise errors.from_oserror(exc, path, "read", reading=True) from exc
    state = FileState.from_stat(before)
    unstable = FileState.from_stat(after) != state
    return _Snapshot(result, state, started, unstable, content)


def _read_under_lock(path: Path, reading: _Reading) -> Optional[_Snapshot]:
    snap = _read_once(path, reading=reading)
    if snap is not None:
        snap.under_lock = True
    return snap


def _settled_read(path: Path, reading: _Reading) -> Optional[_Snapshot]:
    """Best consistent read without mountd's lock (a reader not allowed to take it).

    mountd renames its temp file into place and then writes it; a state that
    holds still for a while after a read is taken as complete.
    """
    snap = _read_once(path, settle=True, reading=reading)
    for _ in range(20):
        if snap is None:
            return None
        time.sleep(_RACY_NS / _NS)
        if snap.trusted(path, FileState.of(path)):
            return snap
        snap = _read_once(path, settle=True, reading=reading)
    return snap


def _cannot_lock_but_may_read(exc: errors.RmtabError) -> bool:
    """May a pure read go on without mountd's lock after failing to take it with ``exc``?

    Yes when we may not open ``.rmtab.lock`` (a reader that is not root) or when
    the state directory is on a read-only filesystem (its O_CREAT open fails with
    EROFS, even for an existing file opened read-write; nobody, mountd included,
    can change the file there): the read then waits for the file to hold still.
    """
    if isinstance(exc, errors.PermissionDenied):
        return True
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.EROFS


def _consistent_read(
    path: Path,
    mountd_statedir: Optional[Path],
    timeout: float,
    report: Optional[RewriteReport],
    reading: _Reading = _PLAIN,
) -> Optional[_Snapshot]:
    """Read ``path`` and prove the read saw one complete version of it (see :func:`_confirm`)."""
    snap = _read_once(path, settle=mountd_statedir is not None, reading=reading)
    return _confirm(path, snap, mountd_statedir, timeout, report, reading)


def _confirm(
    path: Path,
    snap: Optional[_Snapshot],
    mountd_statedir: Optional[Path],
    timeout: float,
    report: Optional[RewriteReport],
    reading: _Reading = _PLAIN,
) -> Optional[_Snapshot]:
    """``snap`` when it provably is one complete version of ``path``, else a read that is.

    The read ran without mountd's lock; its state (device, inode, size, mtime) is
    confirmed under the SHARED lock (so mountd is not in the middle of writing).
    A changed file is read again without the lock up to OPTIMISTIC_RETRIES times,
    then once more while holding the lock.
    """
    attempts = 0
    while True:
        if snap is None or snap.under_lock:
            return snap  # mountd only ever renames a complete name into place
        if mountd_statedir is None:
            # Files mountd does not write only change by rename (rmtabtool) or are
            # written by programs we cannot lock against anyway.
            if not snap.unstable:
                return snap
            attempts += 1
            if attempts > OPTIMISTIC_RETRIES:
                raise errors.IOFailure(f"{path} kept changing while it was read; try again")
        else:
            lock = MountdLock(mountd_statedir, timeout, shared=True)
            try:
                lock.acquire()
            except errors.RmtabError as exc:
                if _cannot_lock_but_may_read(exc):
                    return _settled_read(path, reading)
                raise
            try:
                if snap.trusted(path, FileState.of(path)):
                    return snap
                attempts += 1
                if attempts > OPTIMISTIC_RETRIES:
                    return _read_under_lock(path, reading)
            finally:
                lock.release()
                if report is not None:
                    report.lock_wait_seconds += lock.wait_seconds
                    report.lock_hold_seconds += lock.hold_seconds
                    report.lock_acquisitions += 1
            if report is not None:
                report.rereads += 1
        snap = _read_once(path, settle=mountd_statedir is not None, reading=reading)


def read_snapshot(
    path: StrPath,
    *,
    mountd_statedir: Optional[Path],
    timeout: float,
    progress: Optional[ReadProgress] = None,
    jobs: int = 1,
) -> tuple[ReadResult, FileState]:
    """Read a file (the live rmtab when ``mountd_statedir`` is given) consistently.

    The read itself never holds mountd's lock; its result is confirmed under the
    shared lock (``mountd_statedir`` None: no lock, the file is only checked not
    to change while read). A reader who may not open mountd's lock file, or finds
    it on a read-only filesystem, falls back to waiting for the file to hold
    still. A missing file raises :class:`~rmtabtool.errors.InputMissing`.
    ``progress(bytes_read, bytes_total)`` is called as the read goes; ``jobs``
    reads a big file with that many processes (0: by its size), as
    :func:`~rmtabtool.table.read_table` does.
    """
    target = Path(path)
    reading = _Reading(progress, jobs)
    snap = _consistent_read(target, mountd_statedir, timeout, None, reading)
    if snap is None:
        raise errors.InputMissing(f"cannot read {target}: No such file or directory")
    return snap.result, snap.state


# --------------------------------------------------------------------------- rewrite


class RewriteReport(Record):
    """What :func:`rewrite_file` did (under ``dry_run``: what it would have done)."""

    __slots__ = (
        "path",
        "changed",
        "created",
        "dry_run",
        "snapshot",
        "new_size",
        "lock_wait_seconds",
        "lock_hold_seconds",
        "lock_acquisitions",
        "rereads",
        "mtime_bumped",
        "mtime_wait_seconds",
        "stale_temps_removed",
    )

    def __init__(
        self,
        path: Path,
        changed: bool = False,
        created: bool = False,
        dry_run: bool = False,
        snapshot: Optional[ReadResult] = None,
        new_size: int = 0,
        lock_wait_seconds: float = 0.0,
        lock_hold_seconds: float = 0.0,
        lock_acquisitions: int = 0,
        rereads: int = 0,
        mtime_bumped: bool = False,
        mtime_wait_seconds: float = 0.0,
        stale_temps_removed: Optional[list[Path]] = None,
    ) -> None:
        #: the file written (symlinks resolved)
        self.path = path
        #: the content changed (dry run: would change)
        self.changed = changed
        #: the file did not exist and was (would be) created
        self.created = created
        self.dry_run = dry_run
        #: the read the written content was built from (None: the file did not exist)
        self.snapshot = snapshot
        #: bytes of the new content
        self.new_size = new_size
        #: waiting for our lock and mountd's
        self.lock_wait_seconds = lock_wait_seconds
        #: total time mountd's lock was held (0.0 when not taken)
        self.lock_hold_seconds = lock_hold_seconds
        #: how often mountd's lock was taken
        self.lock_acquisitions = lock_acquisitions
        #: reads beyond the first, because the file changed under us
        self.rereads = rereads
        #: the live rmtab had been modified in the current second: we waited for
        #: the next one, so that the new file's (natural) mtime second differs
        #: for mountd's DUMP cache
        self.mtime_bumped = mtime_bumped
        #: seconds spent waiting for that new second (never under mountd's lock)
        self.mtime_wait_seconds = mtime_wait_seconds
        self.stale_temps_removed: list[Path] = (
            [] if stale_temps_removed is None else stale_temps_removed
        )


class _Comparer:
    """Compares a stream of bytes with a file, reading it only up to the first difference."""

    def __init__(self, path: Path, expected: Optional[FileState]) -> None:
        self.equal = False
        self._file: Optional[BinaryIO] = None
        if expected is None:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        stream = open(fd, "rb", buffering=CHUNK_SIZE)  # noqa: SIM115  # closed in close()
        try:
            same = FileState.from_stat(os.fstat(fd)) == expected
        except OSError:
            same = False
        if not same:
            stream.close()
            return
        self._file = stream
        self.equal = True

    def feed(self, data: bytes) -> None:
        if not self.equal or self._file is None:
            return
        try:
            same = self._file.read(len(data)) == data
        except OSError:
            same = False
        if not same:
            self.close()

    def finish(self) -> bool:
        """True when the file ended exactly where the stream did."""
        if self.equal and self._file is not None:
            try:
                at_end = self._file.read(1) == b""
            except OSError:
                at_end = False
            if not at_end:
                self.equal = False
        result = self.equal
        self.close()
        return result

    def close(self) -> None:
        self.equal = False
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class _Output:
    """The new content: kept in memory while it equals the file, else a temp file."""

    def __init__(self, target: Path, snapshot: Optional[_Snapshot], *, dry_run: bool) -> None:
        self._target = target
        self._compare = _Comparer(target, snapshot.state if snapshot is not None else None)
        self._dry_run = dry_run
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.writer: Optional[AtomicWriter] = None
        self.size = 0

    def write(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"build() must yield bytes, not {type(data).__name__}")
        if not data:
            return
        self.size += len(data)
        self._compare.feed(data)
        if self.writer is not None:
            self.writer.write(data)
        elif not self._dry_run:
            self._pending.append(bytes(data))
            self._pending_size += len(data)
            if not self._compare.equal or self._pending_size > MEMORY_OUTPUT_MAX:
                self._spill()

    def _spill(self) -> AtomicWriter:
        with _uninterrupted():  # a writer (and its temp file) we would not discard
            writer = self.writer = AtomicWriter(self._target)
        pending, self._pending, self._pending_size = self._pending, [], 0
        for chunk in pending:
            writer.write(chunk)
        return writer

    def identical(self) -> bool:
        """Does the content written so far equal the file as it is now?"""
        return self._compare.finish()

    def committable(self) -> AtomicWriter:
        return self.writer if self.writer is not None else self._spill()

    def discard(self) -> None:
        """Drop whatever was not committed (a committed writer is left to the caller)."""
        self._compare.close()
        self._pending = []
        if self.writer is not None and not self.writer.committed:
            self.writer.discard()


def _open_old(path: Path) -> Optional[int]:
    """A descriptor that keeps the file about to be replaced alive past the rename.

    Renaming over the last link of a 1.6 GB file frees all its blocks inside
    rename(2), tens of milliseconds that mountd would spend waiting for its lock.
    Holding it open defers that work to our close(), after the lock is released.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None


def _stream(build: Build, snapshot: Optional[_Snapshot], out: _Output) -> None:
    for chunk in build(snapshot.result if snapshot is not None else None):
        out.write(chunk)


class SignalReceived(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived during a rewrite; everything was cleaned up.

    A KeyboardInterrupt (like Ctrl-C) so that ``except Exception`` does not
    swallow it; the command line should exit with ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        #: the file had already been replaced (complete, fsynced) when the signal
        #: came; only what followed (restamping its mtime) was skipped
        self.replaced: Optional[Path] = None


#: Signals our handler took during the current rewrite and whose exception has
#: not (yet) reached rewrite_file. Python runs a signal handler wherever the
#: interpreter is, including inside a finalizer (a generator closed by the
#: garbage collector, a ``__del__``); an exception raised there is printed as
#: "Exception ignored" and dropped, and the SIGTERM with it. What is recorded
#: here is raised again at the next checkpoint (:func:`_check_signals`).
_received: list[int] = []


def _raise_signal(signum: int, frame: Optional[FrameType]) -> None:
    _received.append(signum)
    raise SignalReceived(signum)


def _check_signals() -> None:
    """Raise a signal whose exception was swallowed (see ``_received``)."""
    if _received:
        raise SignalReceived(_received[0])


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP/SIGINT into SignalReceived while a rewrite runs (main thread only,
    and only where nobody installed a handler), so the temp file and the locks
    are cleaned up like on Ctrl-C. SIGKILL cannot be caught: the next run cleans."""
    installed: list[tuple[signal.Signals, Any]] = []  # (signal, the handler it had)
    if threading.current_thread() is threading.main_thread():
        # SIGINT too (Python's own handler raises a plain KeyboardInterrupt): then
        # every interruption says whether the file had been replaced already.
        defaults = (
            (signal.SIGTERM, signal.SIG_DFL),
            (signal.SIGHUP, signal.SIG_DFL),
            (signal.SIGINT, signal.default_int_handler),
        )
        with _uninterrupted():  # no signal between two dispositions
            for sig, default in defaults:
                previous = signal.getsignal(sig)
                if previous is default:
                    signal.signal(sig, _raise_signal)
                    installed.append((sig, previous))
    if installed:  # the main thread, where handlers run and record
        _received.clear()
    try:
        yield
        _check_signals()
    except SignalReceived:
        if installed:
            _received.clear()  # this one is on its way out
        raise
    finally:
        with _uninterrupted():
            # a signal still pending meets the restored disposition (SIG_DFL:
            # the default action) once the block ends
            for sig, previous in installed:
                signal.signal(sig, previous)


def rewrite_file(
    target: StrPath,
    build: Build,
    *,
    mountd_statedir: Optional[Path],
    timeout: float,
    dry_run: bool = False,
    before_commit: Optional[Callable[[Optional[ReadResult]], None]] = None,
    progress: Optional[ReadProgress] = None,
    jobs: int = 1,
) -> RewriteReport:
    """Replace ``target`` with ``build(what it holds now)``, atomically and safely.

    ``build`` must be pure: it may be called again when rpc.mountd changes the
    file meanwhile. It gets None for a missing file (which is then created,
    0644), and may raise an RmtabError, which propagates with nothing written.
    ``mountd_statedir`` is given exactly when ``target`` is the live rmtab: then
    mountd's exclusive lock is taken around the final check and rename.
    ``before_commit(snapshot)`` runs just before the rename (under mountd's lock
    when taken), with the snapshot the written content was built from.
    ``dry_run`` reads and builds but writes nothing (no lock files, no temp
    files); the report tells whether the file would change.
    ``progress(bytes_read, bytes_total)`` is called while ``target`` is read,
    by ``jobs`` processes when it is big (see :func:`read_snapshot`).
    """
    path = resolve_target(target)
    reading = _Reading(progress, jobs)
    report = RewriteReport(path=path, dry_run=dry_run)
    if dry_run:
        if not path.parent.is_dir():  # what the real run would fail on
            exc = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
            raise errors.from_oserror(exc, path.parent, "write in")
        snap = _consistent_read(path, mountd_statedir, timeout, report, reading)
        out = _Output(path, snap, dry_run=True)
        try:
            _stream(build, snap, out)
            report.changed = not out.identical()
        finally:
            out.discard()
        report.created = snap is None
        report.snapshot = snap.result if snap is not None else None
        report.new_size = out.size
        return report
    with _signals_raise():
        tool = ToolLock(path, timeout)
        with tool:
            report.lock_wait_seconds += tool.wait_seconds
            report.stale_temps_removed = clean_stale_temps(path)
            try:
                _rewrite_locked(
                    path, build, mountd_statedir, timeout, before_commit, report, reading
                )
                _check_signals()  # one whose exception a finalizer swallowed
            except SignalReceived as exc:
                if report.changed:
                    exc.replaced = path
                raise
    return report


def _backoff(retry: int) -> None:
    _check_signals()
    import secrets

    time.sleep(secrets.randbelow(min(1000 << retry, _BACKOFF_MAX_US) + 1) / 1_000_000)


def _same_second(writer: AtomicWriter, snap: _Snapshot) -> bool:
    """Would the new file share the replaced one's mtime second (invisible to DUMP)?"""
    return writer.mtime_second() == snap.state.mtime_ns // _NS


def _rewrite_locked(
    path: Path,
    build: Build,
    mountd_statedir: Optional[Path],
    timeout: float,
    before_commit: Optional[Callable[[Optional[ReadResult]], None]],
    report: RewriteReport,
    reading: _Reading = _PLAIN,
) -> None:
    mountd = MountdLock(mountd_statedir, timeout) if mountd_statedir is not None else None

    def acquire_mountd() -> None:
        assert mountd is not None
        mountd.acquire()
        report.lock_wait_seconds += mountd.wait_seconds
        report.lock_acquisitions += 1

    def release_mountd() -> None:
        if mountd is not None and mountd.locked:
            mountd.release()
            report.lock_hold_seconds += mountd.hold_seconds

    snap = _read_once(path, settle=mountd is not None, reading=reading)
    confirmed: Optional[_Snapshot] = None  # a snapshot _confirm proved complete

    def complete() -> bool:
        """Was ``snap`` one complete version, not a read torn by mountd's UMNT (it
        renames its temp file into place BEFORE writing its last buffer)? Confirmed
        like a pure read, under the shared lock, once per snapshot. If not, ``snap``
        becomes a read that is, for the caller to build from again."""
        nonlocal snap, confirmed
        if snap is None or snap is confirmed:
            return True
        confirmed = _confirm(path, snap, mountd_statedir, timeout, report, reading)
        if confirmed is snap:
            return True
        snap = confirmed
        return False

    retries = 0
    committed: Optional[AtomicWriter] = None
    collided: Optional[int] = None  # the mtime second our new file shares with the old one
    keep_old: list[Optional[int]] = []  # see _open_old
    primary: Optional[BaseException] = None  # on its way out through the finally below
    try:
        while True:
            _check_signals()
            out = _Output(path, snap, dry_run=False)
            try:
                try:
                    _stream(build, snap, out)
                except errors.RmtabError:
                    # build() refused the whole operation for what the file holds
                    # (--strict and a rejected line): decided on a complete version.
                    if complete():
                        raise
                    continue
                if out.identical():
                    # The file, as it is right now, already holds exactly this. For
                    # the live rmtab, only if the read was complete: build() may
                    # leave a torn prefix as it is (a forget whose entry is in the
                    # missing tail). The shared lock only, never the exclusive.
                    if mountd is not None and not complete():
                        continue
                    report.snapshot = snap.result if snap is not None else None
                    report.new_size = out.size
                    return
                writer = out.committable()
                writer.finish()
                if not (mountd is not None and mountd.locked):
                    keep_old.append(_open_old(path))
                if mountd is not None and not mountd.locked:
                    acquire_mountd()
                current = FileState.of(path)
                if snap is None:
                    unchanged = current is None
                else:
                    unchanged = snap.trusted(path, current, strict=mountd is not None)
                if unchanged:
                    if before_commit is not None:
                        before_commit(snap.result if snap is not None else None)
                    _check_signals()  # last chance before the rename
                    shares_second = snap is not None and _same_second(writer, snap)
                    with _uninterrupted():  # a replaced file is always reported as such
                        writer.replace()
                        committed = writer
                        if mountd is not None and snap is not None and shares_second:
                            collided = snap.state.mtime_ns // _NS
                        report.changed = True
                        report.created = snap is None
                        report.snapshot = snap.result if snap is not None else None
                        report.new_size = out.size
                        report.mtime_bumped = writer.mtime_bumped or report.mtime_wait_seconds > 0
                    break
            finally:
                out.discard()
            # The file is not (provably) the one we built from: fold the change in.
            report.rereads += 1
            if mountd is None:
                if retries >= OPTIMISTIC_RETRIES:
                    raise errors.IOFailure(
                        f"{path} kept changing while rmtabtool rewrote it (is another "
                        "program writing it?); it was left as it is"
                    )
                retries += 1
                snap = _read_once(path, reading=reading)
            elif retries < OPTIMISTIC_RETRIES:
                # Do not make every MNT/UMNT wait while we read and rebuild: retry.
                retries += 1
                release_mountd()
                _backoff(retries)
                snap = _read_once(path, settle=True, reading=reading)
            else:
                snap = _read_under_lock(path, reading)  # out of patience: keep the lock
    except BaseException as exc:
        primary = exc
        raise
    finally:
        try:
            release_mountd()
        finally:
            for fd in keep_old:  # replaced files' blocks are freed now, not under the lock
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if committed is not None:
                # after mountd's lock (it need not wait for the disk), and even when a
                # signal came right after the rename: the rename must survive a crash
                try:
                    committed.sync_dir()
                except errors.RmtabError:
                    # With an error already on its way (a signal after the rename
                    # says the file was replaced), that one is reported; this one
                    # would replace it.
                    if primary is None:
                        raise
    if collided is not None and mountd is not None:
        _restamp(path, collided, mountd, report)


def _restamp(path: Path, second: int, mountd: MountdLock, report: RewriteReport) -> None:
    """Move the live rmtab's mtime out of ``second``, the one it shares with the file
    it replaced, once the clock has left it: never ahead of the clock.

    mountd's DUMP cache keys on the whole mtime second. Renaming only once the
    clock is in a new second would keep the guarantee in one step, but a busy
    mountd writes in every second: the file would change while we wait, every
    time, and every rewrite would end up rebuilt under mountd's lock. So the
    rename happens at once, and afterwards, without the lock, we sleep into the
    next second and, under the lock (a stat and a utime), restamp the file with
    the current time if its mtime is still in ``second`` -- whoever wrote it last:
    a write of mountd's in ``second`` after our rename would be as hidden as ours.
    (Dating a file ahead, as rmtabtool once did, hides mountd's NEXT change.)
    Until then, at most about a second, DUMP may still serve the list it cached
    before our rename; if rmtabtool is killed in that interval, until mountd's
    next change.
    """
    start = time.monotonic()
    while True:
        _sleep_past_second(second)
        _check_signals()
        try:
            mountd.acquire()
        except errors.RmtabError:
            return  # the content is in place; only the cache hint is lost
        report.lock_acquisitions += 1
        try:
            st = os.stat(path)
            if st.st_mtime_ns // _NS != second:
                break
            os.utime(path)  # now; checked again: file times use a coarser clock
            report.mtime_bumped = True
            if os.stat(path).st_mtime_ns // _NS != second:
                break
        except OSError:
            break
        finally:
            mountd.release()
            report.lock_hold_seconds += mountd.hold_seconds
    report.mtime_wait_seconds += time.monotonic() - start

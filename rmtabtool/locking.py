"""The two locks a rewrite takes: ours (between rmtabtool runs) and rpc.mountd's.

:class:`ToolLock` is a ``filelock`` (``flock(2)``) on a hidden file of our own next
to the target -- or, when others can create names in the target's directory, in
a private per-node directory, so that nobody can plant a link at a name root
will open. It serialises rmtabtool runs and nothing else: rpc.mountd never
looks at it.

:class:`MountdLock` is the lock rpc.mountd itself takes before every MNT, UMNT
(exclusive) and DUMP (shared): a POSIX record lock (``fcntl.lockf``) over the whole
of ``<statedir>/.rmtab.lock``. Two rules from the kernel shape this module:

* ``flock`` and POSIX locks do not see each other on Linux, so ``filelock``
  cannot exclude mountd and must never be pointed at ``.rmtab.lock``.
* a POSIX lock belongs to the *process* and is dropped when the process closes
  ANY descriptor of that file. So ``.rmtab.lock`` is opened once per process (a
  process-wide registry keyed by device and inode) and that descriptor is never
  closed while a lock could be held through it.

mountd waits forever for its lock and is single-threaded: every MNT and UMNT
stalls while we hold it. Callers hold it for a stat and a rename, nothing more;
``hold_seconds`` measures it so they can report it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Optional

from . import errors

if TYPE_CHECKING:  # imported when a ToolLock is first acquired: 30-50 ms of start-up
    import filelock

__all__ = [
    "MOUNTD_LOCK_NAME",
    "TOOL_LOCK_SUFFIX",
    "MountdLock",
    "ToolLock",
    "tool_lock_path",
]

#: The file rpc.mountd locks, in its state directory (nfs-utils ``_PATH_RMTABLCK``).
MOUNTD_LOCK_NAME = ".rmtab.lock"
#: Our own lock for a target ``<dir>/<name>`` is ``<dir>/.<name>.rmtabtool-lock``
#: (see :func:`tool_lock_path` for targets in directories others can write in).
TOOL_LOCK_SUFFIX = ".rmtabtool-lock"
#: A file name's limit in bytes (Linux NAME_MAX). A target whose lock name would
#: exceed it has ``.<its first _LONG_NAME_KEEP bytes>~<hash>.rmtabtool-lock``.
_NAME_MAX = 255
_LONG_NAME_KEEP = 100
_LONG_NAME_HASH = 12

# Polling: mountd holds its lock for a few milliseconds per request, so start with
# short sleeps and back off to a low ceiling: a busy mountd frees its lock only
# briefly between requests, and a slow poll would keep missing those moments.
_POLL_FIRST = 0.0005
_POLL_MAX = 0.001

# lockf() reports a conflicting lock as EAGAIN or EACCES (POSIX allows both).
_CONTENDED = frozenset({errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK})


def _sleep_until(deadline: float, delay: float) -> float:
    """Sleep ``delay`` (not past ``deadline``); return the next, longer delay."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(min(delay, remaining))
    return min(delay * 2, _POLL_MAX)


# --------------------------------------------------------------------------- mountd


class _LockFile:
    """One open descriptor of one ``.rmtab.lock`` inode, shared by the whole process."""

    __slots__ = ("closed", "depth", "exclusive", "fd", "key", "mutex", "owner")

    def __init__(self, fd: int, key: tuple[int, int]) -> None:
        self.fd = fd
        self.key = key
        #: serialises the threads of this process (POSIX locks do not)
        self.mutex = threading.Lock()
        #: thread ident holding ``mutex`` and the POSIX lock, and how often it re-entered
        self.owner: Optional[int] = None
        self.depth = 0
        self.exclusive = False
        #: the descriptor was closed (its file was unlinked); look the path up again
        self.closed = False


class _Registry:
    """The process's open ``.rmtab.lock`` descriptors, by (device, inode)."""

    def __init__(self) -> None:
        self.files: dict[tuple[int, int], _LockFile] = {}
        self.mutex = threading.Lock()
        # Descriptors opened by a lost race with ourselves: closing one could drop a
        # lock held through the registered one, so they stay open (practically never).
        self.leaked: list[int] = []


_REGISTRY = _Registry()


def _after_fork_in_child() -> None:
    # POSIX locks are not inherited; the descriptors are, and stay the only ones.
    _REGISTRY.mutex = threading.Lock()
    for entry in _REGISTRY.files.values():
        entry.mutex = threading.Lock()
        entry.owner = None
        entry.depth = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def _prune_unlinked() -> None:
    """Close registry descriptors whose file is gone (mountd unlinks it at exit).

    Safe only for entries nobody in this process holds: closing drops this
    process's POSIX locks on that inode, and there are none.
    """
    for key, entry in list(_REGISTRY.files.items()):
        if entry.owner is not None or not entry.mutex.acquire(blocking=False):
            continue
        try:
            if os.fstat(entry.fd).st_nlink == 0:
                entry.closed = True
                del _REGISTRY.files[key]
                os.close(entry.fd)
        except OSError:
            pass
        finally:
            entry.mutex.release()


def _lock_file_for(path: Path) -> _LockFile:
    """The process's one descriptor of ``path``, opening (and creating) it if needed."""
    with _REGISTRY.mutex:
        try:
            st = os.stat(path)  # no descriptor: looking must not drop anything
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise errors.from_oserror(exc, path, "open rpc.mountd's lock file") from exc
        else:
            entry = _REGISTRY.files.get((st.st_dev, st.st_ino))
            if entry is not None:
                return entry
        _prune_unlinked()
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC  # exactly what mountd opens it with
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise errors.from_oserror(exc, path, "open rpc.mountd's lock file") from exc
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        entry = _REGISTRY.files.get(key)
        if entry is not None:
            # Raced with ourselves: the file appeared between stat and open and was
            # already registered: keep the second descriptor open, unused.
            _REGISTRY.leaked.append(fd)
            return entry
        entry = _LockFile(fd, key)
        _REGISTRY.files[key] = entry
        return entry


def _still_linked(path: Path, entry: _LockFile) -> bool:
    """Is ``path`` still the inode we locked? (mountd unlinks the file when it exits)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise errors.from_oserror(exc, path, "check rpc.mountd's lock file") from exc
    return (st.st_dev, st.st_ino) == entry.key


def _holder(fd: int, exclusive: bool) -> Optional[str]:
    """Best effort: 'pid N (name)' of a process holding a conflicting lock, via F_GETLK."""
    import struct  # only on a timeout: kept out of the start-up

    try:
        kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
        # struct flock on Linux: short l_type, short l_whence, off_t l_start,
        # off_t l_len, pid_t l_pid (native alignment, 64-bit off_t).
        fmt = "@hhqqi"
        size = struct.calcsize(fmt + "0q")
        arg = struct.pack(fmt, kind, os.SEEK_SET, 0, 0, 0).ljust(size, b"\0")
        res = fcntl.fcntl(fd, fcntl.F_GETLK, arg)
        l_type, _, _, _, pid = struct.unpack(fmt, res[: struct.calcsize(fmt)])
    except (OSError, struct.error, ValueError):
        return None
    if l_type == fcntl.F_UNLCK or pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            name = comm.read().strip()
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} ({name})"


class MountdLock:
    """rpc.mountd's own lock: ``fcntl.lockf`` on ``<statedir>/.rmtab.lock``.

    Exclusive by default (what mountd takes for MNT/UMNT), ``shared=True`` for a
    pure read (what mountd takes for DUMP). Polled with short sleeps until
    ``timeout`` seconds, then :class:`~rmtabtool.errors.LockTimeout`.

    ``statedir`` is the directory of the live rmtab *as configured* (where mountd
    looks), not the directory a symlinked rmtab points into.

    Re-entering in the same thread is allowed when it needs no upgrade (shared
    inside exclusive, or the same mode): the inner one is a no-op. Other threads
    of the process wait like other processes do.
    """

    def __init__(self, statedir: Path, timeout: float, *, shared: bool = False) -> None:
        self.statedir = Path(statedir)
        self.path = self.statedir / MOUNTD_LOCK_NAME
        self.timeout = max(0.0, float(timeout))
        self.shared = shared
        #: seconds spent waiting for the lock (last acquisition)
        self.wait_seconds = 0.0
        #: seconds the lock was held (last acquisition; updated on release)
        self.hold_seconds = 0.0
        self._entry: Optional[_LockFile] = None
        self._nested = False
        self._acquired_at = 0.0

    @property
    def locked(self) -> bool:
        return self._entry is not None

    def acquire(self) -> MountdLock:
        if self._entry is not None:
            raise RuntimeError(f"{self.path} is already locked by this MountdLock")
        start = time.monotonic()
        deadline = start + self.timeout
        me = threading.get_ident()
        while True:
            entry = _lock_file_for(self.path)
            if entry.owner == me:
                # Same thread, same process: the kernel would grant anything and the
                # inner release would drop the outer lock. Count instead.
                if not self.shared and not entry.exclusive:
                    raise RuntimeError(
                        f"cannot upgrade a shared lock on {self.path} to exclusive in one thread"
                    )
                entry.depth += 1
                self._nested = True
                break
            if not entry.mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise self._timeout_error(None)
            if entry.closed:  # pruned while we waited for it
                entry.mutex.release()
                continue
            try:
                self._lock_posix(entry, deadline)
                if not _still_linked(self.path, entry):
                    # We locked an inode mountd has since unlinked (it removes the file
                    # when it exits; a new mountd creates a new one). Start over.
                    fcntl.lockf(entry.fd, fcntl.LOCK_UN)
                    with _REGISTRY.mutex:
                        entry.closed = True
                        _REGISTRY.files.pop(entry.key, None)
                        os.close(entry.fd)
                    entry.mutex.release()
                    continue
            except BaseException:
                entry.mutex.release()
                raise
            entry.owner = me
            entry.depth = 1
            entry.exclusive = not self.shared
            self._nested = False
            break
        self._entry = entry
        now = time.monotonic()
        self.wait_seconds = now - start
        self.hold_seconds = 0.0
        self._acquired_at = now
        return self

    def _lock_posix(self, entry: _LockFile, deadline: float) -> None:
        op = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        delay = _POLL_FIRST
        while True:
            try:
                fcntl.lockf(entry.fd, op)
                return
            except OSError as exc:
                if exc.errno not in _CONTENDED:
                    raise errors.from_oserror(exc, self.path, "lock") from exc
            if time.monotonic() >= deadline:
                raise self._timeout_error(_holder(entry.fd, not self.shared))
            delay = _sleep_until(deadline, delay)

    def _timeout_error(self, holder: Optional[str]) -> errors.LockTimeout:
        who = f"held by {holder}; " if holder else ""
        return errors.LockTimeout(
            f"timed out after {self.timeout:g}s waiting for rpc.mountd's lock {self.path} "
            f"({who}suspect rpc.mountd hanging or another rmtabtool run)"
        )

    def release(self) -> None:
        entry = self._entry
        if entry is None:
            return
        self._entry = None
        self.hold_seconds = time.monotonic() - self._acquired_at
        entry.depth -= 1
        if self._nested or entry.depth > 0:
            return
        entry.owner = None
        try:
            fcntl.lockf(entry.fd, fcntl.LOCK_UN)
        finally:
            entry.mutex.release()

    def __enter__(self) -> MountdLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()


# --------------------------------------------------------------------------- ours


def _shared_directory(directory: Path) -> bool:
    """Can anyone but us and root create (or swap) names in ``directory``?

    Its group or everybody may write in it, or it belongs to another user (who
    can always write in it).
    """
    try:
        st = os.stat(directory)
    except OSError:
        return False  # reported by whoever needs it
    if st.st_uid not in (os.geteuid(), 0):
        return True
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _only_root_writes(directory: Path) -> bool:
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == 0
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _private_lock_directory() -> Path:
    """A directory only we can write in, on this node, for locks of shared directories.

    Root: ``/run/rmtabtool`` (only root can create names in ``/run``; not
    ``/run/lock``, which is 1777: any user could create ``/run/lock/rmtabtool``
    first and make every backup fail), else ``/run/lock/rmtabtool``; others:
    ``$XDG_RUNTIME_DIR/rmtabtool``, else ``<tempdir>/rmtabtool-<euid>``. Created
    0700; an existing one must be a real directory (not a symbolic link), ours,
    writable by nobody else.
    """
    import tempfile  # 6 ms of start-up, for gettempdir() alone

    euid = os.geteuid()
    candidates: list[Path] = []
    if euid == 0:
        if _only_root_writes(Path("/run")):
            candidates.append(Path("/run/rmtabtool"))
        candidates.append(Path("/run/lock/rmtabtool"))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        candidates.append(Path(runtime) / "rmtabtool")
    candidates.append(Path(tempfile.gettempdir()) / f"rmtabtool-{euid}")
    problem: Optional[errors.RmtabError] = None
    for directory in candidates:
        if not directory.parent.is_dir():
            continue
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            problem = errors.from_oserror(exc, directory, "create the lock directory")
            continue
        st = os.lstat(directory)
        if (
            not stat.S_ISDIR(st.st_mode)
            or st.st_uid != euid
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):
            raise errors.PermissionDenied(
                f"refusing to use {directory} for rmtabtool's locks: it must be a directory "
                f"(not a symbolic link) owned by uid {euid} and writable by nobody else; "
                "remove it"
            )
        return directory
    raise problem or errors.OutputError("no private directory for rmtabtool's lock files")


def cut_long_name(raw: bytes) -> str:
    """A long file name's first _LONG_NAME_KEEP bytes, ``~`` and a hash of all of it.

    For the names rmtabtool derives from a target's (temp files, lock files), so
    that they fit in NAME_MAX and two long names that share their start still
    get different ones.
    """
    import hashlib  # 4 ms of start-up (OpenSSL), for long names only

    digest = hashlib.sha256(raw).hexdigest()[:_LONG_NAME_HASH]
    return f"{os.fsdecode(raw[:_LONG_NAME_KEEP])}~{digest}"


def tool_lock_path(target: Path) -> Path:
    """Where the :class:`ToolLock` of ``target`` lives.

    Beside the target (``<dir>/.<name>.rmtabtool-lock``, one leading dot even for a
    hidden name) when only we or root can create names there, like the state
    directory. In a directory others can write in (an export, often 1777 or
    0777), a predictable name would let them plant a link or hold the lock: the
    lock then lives in a private per-node directory (see
    :func:`_private_lock_directory`, created here if missing), named after a hash
    of the target's path (pass the resolved target).
    """
    target = Path(target)
    if _shared_directory(target.parent):
        import hashlib  # 4 ms of start-up (OpenSSL), for this hash alone

        digest = hashlib.sha256(os.fsencode(os.fspath(target))).hexdigest()[:32]
        return _private_lock_directory() / f"{digest}{TOOL_LOCK_SUFFIX}"
    name = target.name if target.name.startswith(".") else f".{target.name}"
    raw = os.fsencode(name)
    if len(raw) + len(TOOL_LOCK_SUFFIX) > _NAME_MAX:
        # ``.<name>.rmtabtool-lock`` would not fit (ENAMETOOLONG)
        name = cut_long_name(raw)
    return target.with_name(f"{name}{TOOL_LOCK_SUFFIX}")


def _check_lock_file(path: Path) -> None:
    """Create ``path`` if needed, never through a symbolic link; refuse anything odd.

    filelock opens the path itself (releases before 3.20.1 follow links, truncate
    and chmod what they reach): it gets it only once it is a regular file here.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise errors.OutputError(
                f"cannot take the lock {path}: it is a symbolic link (not followed; remove it)"
            ) from exc
        raise errors.from_oserror(exc, path, "take the lock") from exc
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise errors.OutputError(f"cannot take the lock {path}: not a regular file (remove it)")


class ToolLock:
    """Exclusion between rmtabtool runs on one target (``filelock``, i.e. ``flock``).

    The lock file is :func:`tool_lock_path`: beside the target, or in a private
    directory when others can write in the target's; it is never ``.rmtab.lock``
    (that one is mountd's, and flock would not exclude it).
    Pass the resolved target (see ``safefile.resolve_target``) so that every path
    that leads to the same file takes the same lock.
    """

    def __init__(self, target: Path, timeout: float) -> None:
        self.target = Path(target)
        self.path = tool_lock_path(self.target)
        if self.path.name == MOUNTD_LOCK_NAME:  # pragma: no cover - impossible by naming
            raise ValueError("ToolLock must never use rpc.mountd's lock file")
        self.timeout = max(0.0, float(timeout))
        #: seconds spent waiting for the lock
        self.wait_seconds = 0.0
        # Created by the first acquire(): importing filelock costs 30-50 ms, and
        # most runs (reads, -o FILE in a new place) never take this lock.
        self._lock: Optional[filelock.FileLock] = None

    @property
    def locked(self) -> bool:
        return self._lock is not None and bool(self._lock.is_locked)

    def acquire(self) -> ToolLock:
        import filelock  # before the clock starts: wait_seconds is time spent waiting

        start = time.monotonic()
        if not self.target.parent.is_dir():
            # filelock would create missing directories; a missing output
            # directory is the caller's error to report.
            exc = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
            raise errors.from_oserror(exc, self.target.parent, "write in")
        _check_lock_file(self.path)
        if self._lock is None:
            self._lock = filelock.FileLock(str(self.path), timeout=self.timeout, mode=0o600)
        try:
            self._lock.acquire(timeout=self.timeout, poll_interval=0.01)
        except filelock.Timeout as exc:  # a subclass of OSError: test it first
            raise errors.LockTimeout(
                f"timed out after {self.timeout:g}s waiting for {self.path}: "
                f"another rmtabtool run is working on {self.target}"
            ) from exc
        except OSError as exc:
            raise errors.from_oserror(exc, self.path, "take the lock") from exc
        self.wait_seconds = time.monotonic() - start
        return self

    def release(self) -> None:
        if self._lock is not None and self._lock.is_locked:
            self._lock.release()

    def __enter__(self) -> ToolLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()

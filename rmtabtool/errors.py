"""One exception family for everything rmtabtool can fail at, each with its exit code.

The CLI maps ``RmtabError.exit_code`` straight to the process exit status; the
table lives in docs/exit-codes.md and is tested code by code.
"""

from __future__ import annotations

import errno
import os
from typing import Union

StrPath = Union[str, "os.PathLike[str]"]

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65
EXIT_NOINPUT = 66
EXIT_SOFTWARE = 70
EXIT_CANTCREAT = 73
EXIT_IOERR = 74
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77


class RmtabError(Exception):
    """Base of every expected failure. ``str(e)`` is one line meant for an admin."""

    exit_code = EXIT_SOFTWARE


class ThresholdExceeded(RmtabError):
    """A ``stats`` limit (bloat, size, rejected lines) was exceeded."""

    exit_code = EXIT_THRESHOLD


class UsageError(RmtabError):
    """The request itself makes no sense (contradictory options, bad values)."""

    exit_code = EXIT_USAGE


class RejectedLinesError(RmtabError):
    """Strict mode: an input holds lines rmtabtool cannot represent."""

    exit_code = EXIT_DATAERR


class InputMissing(RmtabError):
    """An input file does not exist (or is not a regular file)."""

    exit_code = EXIT_NOINPUT


class OutputError(RmtabError):
    """An output cannot be created: missing directory, read-only filesystem."""

    exit_code = EXIT_CANTCREAT


class IOFailure(RmtabError):
    """Reading or writing failed mid-way: ENOSPC, EFBIG, EIO."""

    exit_code = EXIT_IOERR


class LockTimeout(RmtabError):
    """A lock was not acquired within the timeout."""

    exit_code = EXIT_TEMPFAIL


class PermissionDenied(RmtabError):
    """EACCES or EPERM on an input, an output or a lock."""

    exit_code = EXIT_NOPERM


_OUTPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.EISDIR, errno.ELOOP}
_PERM_ERRNOS = {errno.EACCES, errno.EPERM}


def from_oserror(exc: OSError, path: StrPath, action: str, *, reading: bool = False) -> RmtabError:
    """Translate an OSError raised while ``action`` on ``path`` into one of ours.

    ``reading`` tells whether ``path`` is an input (a missing input is 66, a
    missing output directory is 73).
    """
    why = exc.strerror or str(exc)
    msg = f"cannot {action} {os.fspath(path)}: {why}"
    code = exc.errno
    if code in _PERM_ERRNOS:
        return PermissionDenied(msg)
    if reading and code in (errno.ENOENT, errno.ENOTDIR):
        return InputMissing(msg)
    if reading and code == errno.EISDIR:
        return InputMissing(f"cannot {action} {os.fspath(path)}: it is a directory")
    if not reading and code in _OUTPUT_ERRNOS:
        return OutputError(msg)
    return IOFailure(msg)

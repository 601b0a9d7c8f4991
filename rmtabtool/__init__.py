"""rmtabtool: keep an NFS server's rmtab small, correct and safe.

The library never prints and never exits; the ``rmtabtool`` command (``cli.py``)
is a thin layer over it.
"""

from __future__ import annotations

from .entry import (
    MAX_CLIENT,
    MAX_COUNT,
    MAX_LINE,
    MAX_PATH,
    Entry,
    Reason,
    Rejected,
    format_entry,
    parse_count,
    parse_line,
    stops_mountd,
)
from .errors import RmtabError
from .locking import MountdLock, ToolLock
from .safefile import (
    AtomicWriter,
    FileState,
    RewriteReport,
    SignalReceived,
    is_same_file,
    read_snapshot,
    resolve_target,
    rewrite_file,
)
from .table import ReadResult, RejectedLine, Table, path_in_export, read_bytes, read_table

__version__ = "0.1.0.dev0"

__all__ = [
    "MAX_CLIENT",
    "MAX_COUNT",
    "MAX_LINE",
    "MAX_PATH",
    "AtomicWriter",
    "Entry",
    "FileState",
    "MountdLock",
    "ReadResult",
    "Reason",
    "Rejected",
    "RejectedLine",
    "RewriteReport",
    "RmtabError",
    "SignalReceived",
    "Table",
    "ToolLock",
    "__version__",
    "format_entry",
    "is_same_file",
    "parse_count",
    "parse_line",
    "path_in_export",
    "read_bytes",
    "read_snapshot",
    "read_table",
    "resolve_target",
    "rewrite_file",
    "stops_mountd",
]

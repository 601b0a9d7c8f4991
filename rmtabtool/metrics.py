"""``stats`` as Prometheus metrics, for node_exporter's textfile collector.

The metric names are a contract (documented in docs/monitoring.md): add new
ones, never rename. :func:`prometheus_text` makes the text; :func:`write_metrics`
replaces the file atomically, so node_exporter never reads a half-written file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from . import errors
from .operations import StatsResult, show_bytes, write_device
from .safefile import rewrite_file

__all__ = ["METRICS", "prometheus_text", "write_metrics"]

#: name -> (type, help)
METRICS: dict[str, tuple[str, str]] = {
    "rmtabtool_rmtab_bytes": ("gauge", "Size of the rmtab file in bytes."),
    "rmtabtool_rmtab_lines": ("gauge", "Lines in the rmtab file."),
    "rmtabtool_rmtab_entries": ("gauge", "Distinct (client, path) entries."),
    "rmtabtool_rmtab_duplicate_lines": ("gauge", "Valid lines that dedupe would remove."),
    "rmtabtool_rmtab_bloat_ratio": ("gauge", "Lines per distinct entry (1 is clean)."),
    "rmtabtool_rmtab_size_after_dedupe_bytes": ("gauge", "Size the file would have after dedupe."),
    "rmtabtool_rmtab_rejected_lines": (
        "gauge",
        "Lines rmtabtool cannot represent, by reason (all reasons are always listed).",
    ),
    "rmtabtool_rmtab_mountd_stop_line": (
        "gauge",
        "1-based line where rpc.mountd's parser stops reading (0: it reads everything).",
    ),
    "rmtabtool_rmtab_mountd_hidden_lines": ("gauge", "Lines rpc.mountd cannot see."),
    "rmtabtool_rmtab_zero_count_entries": ("gauge", "Entries whose mount count is 0."),
    "rmtabtool_rmtab_clients": ("gauge", "Distinct clients."),
    "rmtabtool_rmtab_path_clients": ("gauge", "Clients per mounted path."),
    "rmtabtool_rmtab_path_mounts": ("gauge", "Sum of mount counts per mounted path."),
    "rmtabtool_stats_timestamp_seconds": ("gauge", "When these figures were taken (Unix time)."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(result: StatsResult, *, now: Optional[float] = None) -> str:
    """The exposition-format text for one stats result."""
    from .entry import Reason

    # a file name from the command line may hold bytes that are not UTF-8 (kept as
    # surrogates): shown like paths and clients, as \xNN
    file_label = f'file="{_label(show_bytes(os.fsencode(result.file)))}"'
    lines: list[str] = []

    def metric(name: str, samples: list[tuple[str, float]]) -> None:
        kind, text = METRICS[name]
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            shown = repr(float(value)) if isinstance(value, float) else str(value)
            lines.append(f"{name}{{{labels}}} {shown}")

    metric("rmtabtool_rmtab_bytes", [(file_label, result.bytes)])
    metric("rmtabtool_rmtab_lines", [(file_label, result.lines)])
    metric("rmtabtool_rmtab_entries", [(file_label, result.entries)])
    metric("rmtabtool_rmtab_duplicate_lines", [(file_label, result.duplicate_lines)])
    metric("rmtabtool_rmtab_bloat_ratio", [(file_label, round(result.bloat, 6))])
    metric("rmtabtool_rmtab_size_after_dedupe_bytes", [(file_label, result.size_after_dedupe)])
    metric(
        "rmtabtool_rmtab_rejected_lines",
        [
            (
                f'{file_label},reason="{reason.value}"',
                result.rejected_by_reason.get(reason.value, 0),
            )
            for reason in Reason
        ],
    )
    metric("rmtabtool_rmtab_mountd_stop_line", [(file_label, result.mountd_stops_at_line or 0)])
    metric("rmtabtool_rmtab_mountd_hidden_lines", [(file_label, result.mountd_hidden_lines)])
    metric("rmtabtool_rmtab_zero_count_entries", [(file_label, result.zero_count_entries)])
    metric("rmtabtool_rmtab_clients", [(file_label, result.clients)])
    metric(
        "rmtabtool_rmtab_path_clients",
        [(f'{file_label},path="{_label(show_bytes(p.path))}"', p.clients) for p in result.paths],
    )
    metric(
        "rmtabtool_rmtab_path_mounts",
        [(f'{file_label},path="{_label(show_bytes(p.path))}"', p.mounts) for p in result.paths],
    )
    stamp = time.time() if now is None else now
    metric("rmtabtool_stats_timestamp_seconds", [(file_label, round(stamp, 3))])
    return "\n".join(lines) + "\n"


def write_metrics(path: str, text: str, *, timeout: float = 10.0) -> None:
    """Replace ``path`` atomically, the way ``dedupe -o``/``merge -o`` write a file.

    Through :func:`~rmtabtool.safefile.rewrite_file` (temp beside it, fsync,
    rename; a new file is 0644): so an existing output that is a FIFO or a
    device is refused exactly as for the other outputs (exit 66), the temp
    files a killed run left are removed by the next one, and concurrent runs
    are serialised (``timeout``: seconds to wait for another run's lock).
    """
    target = os.path.abspath(path)
    if os.path.isdir(target):  # as operations._write_output: exit 73, not "cannot read"
        raise errors.OutputError(f"cannot write {path}: it is a directory")
    data = text.encode("utf-8")
    if Path(target).is_char_device():  # /dev/null, as `dedupe -o /dev/null`
        write_device(target, (data,))
        return
    rewrite_file(target, lambda _old: (data,), mountd_statedir=None, timeout=timeout)

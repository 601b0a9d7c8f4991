"""The specification of read_table: every line split and parsed, one by one.

Slow and obviously right; the tests compare the real reader (repeat path,
workers, fast path for canonical lines) with it.
"""

from __future__ import annotations

from typing import Any, Callable, Union

from rmtabtool import Entry, ReadResult, Rejected, RejectedLine, Table, parse_line, stops_mountd


def naive_read(
    data: bytes, parse: Callable[[bytes], Union[Entry, Rejected]] = parse_line
) -> ReadResult:
    """What read_table must report for ``data``, each distinct line given to ``parse``."""
    result = ReadResult()
    lines = data.split(b"\n")
    missing = lines[-1] != b""
    if not missing:
        lines.pop()
    first: set[bytes] = set()
    rejected: dict[bytes, RejectedLine] = {}
    table = Table()
    for number, line in enumerate(lines, 1):
        if line not in first:
            first.add(line)
            terminated = not (missing and number == len(lines))
            if result.mountd_stops_at_line is None and stops_mountd(line, terminated=terminated):
                result.mountd_stops_at_line = number
            parsed = parse(line)
            if isinstance(parsed, Rejected):
                rejected[line] = RejectedLine(parsed.line, parsed.reason, number, 0)
                result.rejected.append(rejected[line])
            else:
                table.add(parsed)
        if line in rejected:
            rejected[line].occurrences += 1
    result.table = table
    result.lines = len(lines)
    result.distinct_lines = len(first)
    result.missing_final_newline = missing
    result.bytes_read = len(data)
    return result


def figures(result: ReadResult) -> tuple[Any, ...]:
    """Everything a ReadResult reports, order included."""
    return (
        list(result.table),
        result.lines,
        result.distinct_lines,
        [(r.line, r.reason, r.first_line, r.occurrences) for r in result.rejected],
        result.mountd_stops_at_line,
        result.missing_final_newline,
        result.bytes_read,
    )

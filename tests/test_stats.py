"""operations.stats against a naive recomputation from the deduplicated table."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rmtabtool import Entry, format_entry, read_bytes
from rmtabtool.operations import Live, stats

CLIENTS = [b"10.0.0.1", b"10.0.0.2", b"fe80::1", b"client-a.example", b"h\xe9"]
PATHS = [b"/srv/a", b"/srv/a/sub", b"/srv/b", b"/home/caf\xe9", b"/"]

entries = st.builds(
    Entry,
    client=st.sampled_from(CLIENTS),
    path=st.sampled_from(PATHS),
    count=st.sampled_from([0, 1, 2, 7, 0xFFFFFFFF]),
)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(entries, max_size=60), top=st.integers(0, 6))
def test_stats_equals_a_naive_recount(lines: list[Entry], top: int) -> None:
    data = b"".join(format_entry(e) for e in lines)
    fd, name = tempfile.mkstemp(prefix="rmtabtool-stats-")
    try:
        os.write(fd, data)
        os.close(fd)
        result = stats(name, Live.from_env(Path(name).parent / "no-such-dir" / "rmtab"), top=top)
    finally:
        os.unlink(name)

    table = {e.key: e for e in read_bytes(data).table}
    # naive: one pass per question
    assert result.entries == len(table)
    assert result.lines == len(lines)
    assert result.zero_count_entries == sum(1 for e in table.values() if e.count == 0)
    assert result.clients == len({c for c, _ in table})
    assert result.size_after_dedupe == sum(len(format_entry(e)) for e in table.values())
    expected_paths = sorted(
        (
            p,
            sum(1 for (_, q) in table if q == p),
            sum(e.count for e in table.values() if e.path == p),
        )
        for p in {p for _, p in table}
    )
    assert [(s.path, s.clients, s.mounts) for s in result.paths] == expected_paths
    per_client = {
        c: (
            sum(1 for (d, _) in table if d == c),
            sum(e.count for e in table.values() if e.client == c),
        )
        for c in {c for c, _ in table}
    }
    ranked = sorted(per_client, key=lambda c: (-per_client[c][1], -per_client[c][0], c))[:top]
    assert [(s.client, s.paths, s.mounts) for s in result.top_clients] == [
        (c, *per_client[c]) for c in ranked
    ]

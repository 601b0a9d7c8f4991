"""read_table on a bloated rmtab runs in memory bounded by the DISTINCT lines.

The 2012 incident grew rmtab to 1.6 GB by appending the same few lines on every
failover. Here a 50 MiB file of a few dozen distinct lines is read in a fresh
interpreter and its peak memory measured, then the file is doubled the way the
resource agent did it (``cat backup >> rmtab``) and measured again: the peak must
not move.

Measured in a child process so pytest's own memory does not count. The peak is
VmHWM from /proc/self/status (the high-water RSS of the child's own address
space; ru_maxrss is avoided because Linux carries the pre-exec RSS of the forked
parent into it), and tracemalloc's peak for the Python allocations alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MIB = 1024 * 1024

# A child that reads the file named in argv[1] and reports its memory. The
# baseline run reads a tiny file instead, so imports, code paths and the first
# chunk-sized buffers are part of the baseline and only size-dependent memory
# shows up in the difference.
CHILD = r"""
import json, sys, tracemalloc

def vm_hwm_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")

from rmtabtool import read_table

trace = sys.argv[2] == "trace"
if trace:
    tracemalloc.start()
result = read_table(sys.argv[1])
peak = tracemalloc.get_traced_memory()[1] if trace else None
json.dump(
    {
        "hwm_kib": vm_hwm_kib(),
        "traced_peak": peak,
        "lines": result.lines,
        "entries": len(result.table),
        "distinct": result.distinct_lines,
        "rejected": result.rejected_lines,
        "stops": result.mountd_stops_at_line,
    },
    sys.stdout,
)
"""

# One copy of the distinct lines: 26 canonical entries, spellings mountd also
# writes or once wrote (a bumped count, no count, a short count, raw and ';'
# IPv6), and three lines rmtabtool rejects. No blank line: mountd would stop.
_CLIENTS = [b"10.0.0.%d" % i for i in range(1, 9)]
_PATHS = [b"/srv/a", b"/srv/b", b"/srv/a/sub"]
DISTINCT = (
    [b"%s:%s:0x00000001\n" % (c, p) for c in _CLIENTS for p in _PATHS]
    + [
        b"10.0.0.1:/srv/a:0x00000002\n",
        b"fe80;;1:/srv/a:0x00000001\n",
        b"fe80::2:/srv/b:0x1\n",
        b"host.example:/srv/a\n",
    ]
    + [b"#10.0.0.9:/srv/a:0x00000001\n", b"garbage\n", b"10.0.0.9:/srv/a:08\n"]
)
ENTRIES = len(_CLIENTS) * len(_PATHS) + 3  # the bumped count merges into 10.0.0.1:/srv/a
REJECTED_PER_COPY = 3
STOP_LINE = len(DISTINCT) - 1  # 'garbage' has no colon: mountd stops there

# Peak memory ABOVE the tiny-file baseline that reading 50 MiB may cost.
# Measured on this project's machine (Python 3.11): VmHWM +2.4 MiB at 50 MiB and
# +2.5 MiB at 100 MiB over a 12.8 MiB baseline; tracemalloc peak 1.8 MiB (tiny
# file: 0.3 MiB). That is one 256 KiB chunk split into ~10k short lines (~70
# bytes each with list slot and object header), their set and the joined carry.
# 8 MiB leaves room for allocator and Python version differences; reading the
# whole file (50 MiB) or keeping its lines (~150 MiB) overshoots it many times
# (a 64 MiB CHUNK_SIZE was measured at +188 MiB).
RSS_BOUND = 8 * MIB
TRACED_BOUND = 4 * MIB
# Doubling the file may not move the peak by more than noise (measured: <= 0.2 MiB).
GROWTH_MARGIN = 1 * MIB


def write_bloated(path: Path, size: int) -> int:
    """Write at least ``size`` bytes of whole copies of DISTINCT; return the copy count."""
    copy = b"".join(DISTINCT)
    per_block = max(1, MIB // len(copy))
    block = copy * per_block
    blocks = -(-size // len(block))
    with path.open("wb") as f:
        for _ in range(blocks):
            f.write(block)
    return blocks * per_block


def append_copy_of_itself(path: Path) -> None:
    """``cat rmtab >> rmtab`` without cat's refusal (input file is output file)."""
    remaining = path.stat().st_size
    with path.open("rb") as src, path.open("ab") as dst:
        while remaining:
            chunk = src.read(min(MIB, remaining))
            dst.write(chunk)
            remaining -= len(chunk)


def measure(path: Path, *, trace: bool = False) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), "trace" if trace else "rss"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def check_result(report: dict[str, Any], copies: int) -> None:
    """The child really read the whole file (a reader that skips work uses no memory)."""
    assert report["lines"] == copies * len(DISTINCT)
    assert report["entries"] == ENTRIES
    assert report["distinct"] == len(DISTINCT)
    assert report["rejected"] == copies * REJECTED_PER_COPY
    assert report["stops"] == STOP_LINE


def test_read_table_memory_is_bounded_by_distinct_lines_not_file_size(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"".join(DISTINCT))
    rmtab = tmp_path / "rmtab"
    try:
        copies = write_bloated(rmtab, 50 * MIB)
        assert rmtab.stat().st_size >= 50 * MIB

        baseline = measure(tiny)
        check_result(baseline, 1)
        at_50 = measure(rmtab)
        check_result(at_50, copies)
        traced_50 = measure(rmtab, trace=True)
        check_result(traced_50, copies)

        # one failover of the 2012 resource agent: cat backup >> rmtab
        append_copy_of_itself(rmtab)
        at_100 = measure(rmtab)
        check_result(at_100, 2 * copies)
    finally:
        rmtab.unlink(missing_ok=True)

    grown_50 = (at_50["hwm_kib"] - baseline["hwm_kib"]) * 1024
    grown_100 = (at_100["hwm_kib"] - baseline["hwm_kib"]) * 1024
    assert grown_50 < RSS_BOUND, f"50 MiB file: peak RSS +{grown_50 / MIB:.1f} MiB"
    assert grown_100 < RSS_BOUND, f"100 MiB file: peak RSS +{grown_100 / MIB:.1f} MiB"
    assert grown_100 - grown_50 < GROWTH_MARGIN, (
        f"peak RSS grew with the file: +{grown_50 / MIB:.1f} MiB at 50 MiB, "
        f"+{grown_100 / MIB:.1f} MiB at 100 MiB"
    )
    assert traced_50["traced_peak"] < TRACED_BOUND, (
        f"tracemalloc peak {traced_50['traced_peak'] / MIB:.1f} MiB"
    )


def test_read_table_memory_on_generated_seed_like_files_stays_bounded(tmp_path: Path) -> None:
    """The same bound on what benchmarks/generate.py makes: the failover history of
    a real cluster (doubling restores, count bumps, IPv6 and host-name clients,
    malformed and torn lines), where the reader's repeat path does the work. Its
    remembered segments (at most 8 MiB of them) vary with the history, so the
    peak is bounded, not identical at every size (measured: +1.8 MiB at 64 MiB,
    +3.0 MiB at 128 MiB, +1.4 MiB at 1.6 GB in docs/performance.md)."""
    from scripts import load_script

    generate = load_script("benchmarks/generate.py", "rmtab_generate")
    sizes = {"tiny": 4096, "64M": 64 * MIB, "256M": 256 * MIB}
    reports: dict[str, dict[str, Any]] = {}
    try:
        for name, size in sizes.items():
            path = tmp_path / name
            with path.open("wb") as out:
                generate.generate(out, size, 1)
            reports[name] = measure(path)
            # a reader that skipped work would use no memory: it read every line
            with path.open("rb") as f:
                newlines = sum(block.count(b"\n") for block in iter(lambda: f.read(MIB), b""))
            assert reports[name]["lines"] in (newlines, newlines + 1), name
            path.unlink()
    finally:
        for name in sizes:
            (tmp_path / name).unlink(missing_ok=True)
    base = reports["tiny"]["hwm_kib"] * 1024
    for name in ("64M", "256M"):
        grown = reports[name]["hwm_kib"] * 1024 - base
        assert grown < RSS_BOUND, f"{name} file: peak RSS +{grown / MIB:.1f} MiB"

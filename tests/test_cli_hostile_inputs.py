"""Hostile inputs found by the fault work: FIFOs, devices, torn .rejects lines.

Each failed against an earlier version: a FIFO planted as a backup hung the
resource agent's start, a backup linked to /dev/zero read one endless line, and
a failed .rejects append left a torn line for the next run to glue onto.
"""

from __future__ import annotations

import os
import resource
import signal
from functools import partial
from pathlib import Path

import cliutil
import pytest

IS_ROOT = os.geteuid() == 0


#: the installed command, without RMTABTOOL_* and PYTEST* in its environment; a run
#: over 20 s (unless told otherwise) fails the test instead of hanging the suite
run = partial(cliutil.run, timeout=20)


# ------------------------------------------------------------ 2. restore of a FIFO backup hangs


def test_restore_of_a_fifo_backup_exits_66_without_hanging(tmp_path: Path) -> None:
    """docs/exit-codes.md: 66 when "an input file is missing or is not a regular
    file (... the backup for restore ...)". operations._check_regular_input lets
    FIFOs through and read_table() opens the path with a blocking open(): anybody
    who can write in the export directory makes the resource agent's start hang
    forever with ``mkfifo EXPORT/.rmtab`` (then its stop, then fencing)."""
    export = tmp_path / "export"
    export.mkdir()
    os.mkfifo(export / ".rmtab")
    live = tmp_path / "rmtab"
    live.write_bytes(b"10.0.0.1:/srv/other:0x00000001\n")
    proc = run("restore", export, "--rmtab", live, timeout=10)
    assert proc.returncode == 66, proc.stderr


# ------------------------------------------------------------ 3. a backup linked to a device


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_restore_of_a_backup_linked_to_a_device_exits_66(tmp_path: Path, device: str) -> None:
    """EXPORT/.rmtab -> /dev/zero: restore reads an endless line until memory runs
    out (MemoryError, exit 70, after eating all it may; without a limit, the OOM
    killer). -> /dev/urandom: endless random lines, restore never ends.
    Character devices pass _check_regular_input. Expected: 66, at once."""
    export = tmp_path / "export"
    export.mkdir()
    (export / ".rmtab").symlink_to(device)
    live = tmp_path / "rmtab"
    live.write_bytes(b"10.0.0.1:/srv/other:0x00000001\n")
    proc = run("restore", export, "--rmtab", live, preexec_fn=limit_memory, timeout=15)
    assert proc.returncode == 66, proc.stderr


# ------------------------------------------------------------ 4. torn line in .rejects


def small_files() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))


def test_a_failed_rejects_append_leaves_whole_lines_only(tmp_path: Path) -> None:
    """operations.append_rejects writes the rejected lines with O_APPEND and, when
    a write fails midway (EFBIG here; ENOSPC or EIO alike), leaves the part it
    wrote: a torn last line. The command exits 74 and the target is intact (good),
    but the next successful run appends after the fragment, gluing it onto the
    first rejected line: the .rejects file then holds a line that never existed.
    Expected: on failure, truncate .rejects back to its size before the append."""
    live = tmp_path / "rmtab"
    good = b"".join(b"10.0.0.%d:/srv/a:0x00000001\n" % i for i in range(100))
    junk = [b"# junk line %d " % i + b"x" * 2000 for i in range(50)]
    live.write_bytes(good + b"".join(j + b"\n" for j in junk) + good)
    original = live.read_bytes()
    proc = run("dedupe", "--rmtab", live, preexec_fn=small_files)
    assert proc.returncode == 74, proc.stderr
    assert live.read_bytes() == original
    rejects = Path(f"{live}.rejects")
    data = rejects.read_bytes() if rejects.exists() else b""
    assert data == b"" or data.endswith(b"\n"), f"torn line: ...{data[-40:]!r}"
    proc = run("dedupe", "--rmtab", live)
    assert proc.returncode == 0, proc.stderr
    lines = rejects.read_bytes()[:-1].split(b"\n")
    assert set(lines) == set(junk), [x[:40] for x in set(lines) - set(junk)]

"""What importing rmtabtool loads: start-up is most of a run on a small file.

Structural facts only (which modules a fresh interpreter holds), never timings:
``filelock`` is imported when a ToolLock is first acquired, ``rich`` when the
CLI draws a table or a progress bar on a terminal, ``multiprocessing`` when a
read really uses several processes. docs/performance.md has the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: modules that a plain import must leave alone
DEFERRED = ("filelock", "rich", "multiprocessing")


def fresh(code: str, *args: str) -> dict[str, object]:
    """Run ``code`` in a new interpreter; it prints one JSON object, returned here."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


LOADED = """
    import json, sys
    import {module}
    print(json.dumps({{"loaded": sorted(n for n in {deferred!r} if n in sys.modules)}}))
"""


@pytest.mark.parametrize("module", ["rmtabtool", "rmtabtool.cli"])
def test_import_does_not_load_the_deferred_modules(module: str) -> None:
    assert fresh(LOADED.format(module=module, deferred=DEFERRED)) == {"loaded": []}


def test_reading_a_small_file_does_not_load_them(tmp_path: Path) -> None:
    rmtab = tmp_path / "rmtab"
    rmtab.write_bytes(b"10.0.0.1:/srv:0x00000001\nfe80::1:/srv:0x2\n")
    got = fresh(
        f"""
        import json, sys
        from rmtabtool import read_table
        result = read_table(sys.argv[1], jobs=0)
        loaded = sorted(n for n in {DEFERRED!r} if n in sys.modules)
        print(json.dumps({{"entries": len(result.table), "loaded": loaded}}))
        """,
        str(rmtab),
    )
    assert got == {"entries": 2, "loaded": []}


def test_tool_lock_imports_filelock_when_first_acquired_and_still_excludes(
    tmp_path: Path,
) -> None:
    got = fresh(
        """
        import json, sys
        from pathlib import Path
        from rmtabtool import ToolLock, errors
        target = Path(sys.argv[1])
        lock = ToolLock(target, 1)
        steps = {"after_init": "filelock" in sys.modules, "locked_before": lock.locked}
        lock.release()  # releasing a lock never taken is a no-op
        with lock:
            steps["after_acquire"] = "filelock" in sys.modules
            steps["locked"] = lock.locked
            try:
                ToolLock(target, 0.05).acquire()
            except errors.LockTimeout:
                steps["other_times_out"] = True
        steps["locked_after"] = lock.locked
        with ToolLock(target, 1) as again:  # free again, and re-acquirable
            steps["reacquired"] = again.locked
        lock.acquire()
        steps["same_object_again"] = lock.locked
        lock.release()
        print(json.dumps(steps))
        """,
        str(tmp_path / "rmtab"),
    )
    assert got == {
        "after_init": False,
        "locked_before": False,
        "after_acquire": True,
        "locked": True,
        "other_times_out": True,
        "locked_after": False,
        "reacquired": True,
        "same_object_again": True,
    }

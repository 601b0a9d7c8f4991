"""Regression tests for bugs found in cli.py/operations.py by the fuzz and failover suites.

Each test pins what issue 4 asks for and failed against an earlier version:
merge --into reading its own file twice (double-counted rejects).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def rmtabtool_command() -> list[str]:
    beside = Path(sys.executable).with_name("rmtabtool")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("rmtabtool")
    return [found] if found else [sys.executable, "-m", "rmtabtool"]


def run_json(*args: str | Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RMTABTOOL_RMTAB"}
    env["TERM"] = "dumb"
    proc = subprocess.run(
        [*rmtabtool_command(), *map(str, args), "--json"],
        capture_output=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("how", [["-o", "{f}"], ["--into", "{f}"]], ids=["-o F", "--into F"])
def test_merge_onto_its_own_source_reports_each_line_once(tmp_path: Path, how: list[str]) -> None:
    """`merge F -o F` (and `merge F --into F`) reads F twice, as source and as
    target, and reports every count doubled: one blank line moved to F.rejects is
    reported as "rejected: 2", a 2-line file as "lines_in: 4" with a duplicate
    removed that does not exist. `dedupe F` on the same file says 1 / 2 / 0."""
    f = tmp_path / "rmtab"
    f.write_bytes(b"10.0.0.1:/srv/a:0x00000001\n\n")
    result = run_json(
        "merge", f, *[str(f) if a == "{f}" else a for a in how], "--rmtab", tmp_path / "live"
    )
    assert (tmp_path / "rmtab.rejects").read_bytes() == b"\n"
    assert result["rejected"] == 1
    assert result["lines_in"] == 2
    assert result["duplicates_removed"] == 0

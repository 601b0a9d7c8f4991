"""Regression tests for bugs found in cli.py/operations.py by the fuzz and failover suites.

Each test pins what issue 4 asks for and failed against an earlier version:
merge --into reading its own file twice (double-counted rejects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cliutil
import pytest


def run_json(*args: str | Path) -> dict[str, Any]:
    env = cliutil.clean_env(drop=("RMTABTOOL_RMTAB",), drop_prefixes=())
    return cliutil.run_json(*args, env=env, timeout=None)


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

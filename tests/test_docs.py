"""The docs cannot drift from the code.

docs/cli-reference.md is generated from the typer app and must equal it.
docs/usage.md is written by docs/make_usage.py from a template and real runs
(``python docs/make_usage.py > docs/usage.md``, by hand, not in CI), so every
command and every option must at least appear in it. docs/format.md's rejection
table must name every reason code the parser can give.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from rmtabtool.cli import app
from rmtabtool.clidoc import render
from rmtabtool.entry import Reason

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _commands() -> dict[str, Any]:
    group: Any = typer.main.get_command(app)
    return dict(group.commands)


def test_cli_reference_matches_the_code() -> None:
    checked_in = (DOCS / "cli-reference.md").read_text()
    assert checked_in == render(), (
        "docs/cli-reference.md is stale: run python -m rmtabtool.clidoc > docs/cli-reference.md"
    )


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_and_option_is_in_the_usage_guide(name: str) -> None:
    usage = (DOCS / "usage.md").read_text()
    assert re.search(rf"^#+ .*`{name}`", usage, re.M), f"no section for `{name}` in docs/usage.md"
    for param in _commands()[name].params:
        if param.param_type_name != "option":
            continue
        long_opts = [o for o in param.opts if o.startswith("--")]
        assert any(o in usage for o in long_opts), f"{name} {long_opts} missing in docs/usage.md"


def test_library_doc_examples_run() -> None:
    import doctest

    failures, tried = doctest.testfile(str(DOCS / "library.md"), module_relative=False)
    assert tried > 0
    assert failures == 0


def test_every_rejection_reason_is_in_the_format_reference() -> None:
    """Each ``Reason`` appears as ``rejected `code` `` in docs/format.md, and no other code."""
    documented = set(re.findall(r"rejected `([a-z][a-z-]*)`", (DOCS / "format.md").read_text()))
    codes = {reason.value for reason in Reason}
    assert not codes - documented, f"missing from docs/format.md: {sorted(codes - documented)}"
    assert not documented - codes, f"not reason codes: {sorted(documented - codes)}"

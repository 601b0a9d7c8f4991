"""Generate docs/cli-reference.md from the typer app itself.

Built from the command objects (names, options, metavars, help, defaults)
rather than from rendered ``--help`` text, so the reference does not depend on
the terminal width or on the rich/typer version. ``tests/test_docs.py`` fails
when the checked-in file drifts from what this module renders:

    python -m rmtabtool.clidoc > docs/cli-reference.md
"""

from __future__ import annotations

import sys
from typing import Any

import typer.main

from .cli import app


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _flag(param: Any) -> str:
    names = ", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
    if not getattr(param, "is_flag", False) and param.metavar:
        names += f" `{param.metavar}`"
    return names.replace("|", "\\|")


def _default(param: Any) -> str:
    if isinstance(param.show_default, str):  # a description, such as `<file>.rejects`
        return f"`{param.show_default}`"
    if getattr(param, "is_flag", False) or param.default is None or param.default == ():
        return ""
    return f"`{param.default}`"


def render() -> str:
    group: Any = typer.main.get_command(app)
    out = [
        "# Command-line reference",
        "",
        "Generated from the code by `python -m rmtabtool.clidoc > docs/cli-reference.md`;",
        "`tests/test_docs.py` fails when this file and the code disagree.",
        "",
        "Global options: `--version` (print the version and exit), `--debug` (show a",
        "traceback on internal errors; also after the command, or `RMTABTOOL_DEBUG=1`),",
        "`-h`/`--help`.",
        "Exit codes: [exit-codes.md](exit-codes.md).",
        "",
    ]
    for name, command in group.commands.items():
        args = [p for p in command.params if p.param_type_name == "argument"]
        opts = [p for p in command.params if p.param_type_name == "option"]
        usage = " ".join(
            ["rmtabtool", name, "[OPTIONS]"] + [str(a.metavar or a.name.upper()) for a in args]
        )
        out += [f"## `{name}`", "", f"    {usage}", "", _cell(command.help or ""), ""]
        if args:
            out += ["| argument | meaning |", "|---|---|"]
            out += [f"| `{a.metavar or a.name}` | {_cell(a.help or '')} |" for a in args]
            out.append("")
        out += ["| option | meaning | default |", "|---|---|---|"]
        out += [f"| {_flag(o)} | {_cell(o.help or '')} | {_default(o)} |" for o in opts]
        out.append("")
        if command.epilog:
            out += ["```", command.epilog.replace("\n\n", "\n").strip("\n"), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())

"""What the installed command prints, where, and how it fails to print.

Hostile text in an rmtab (rich markup, escape sequences, bytes that are not
UTF-8) and in file names must reach a terminal, a pipe or a JSON consumer as
inert, escaped text; a stdout that cannot be written is an I/O error (74), not
an internal one; the option parser's errors are one line, like ours.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import typer.main
from cliutil import clean_env, rmtabtool_command, run, run_in_a_terminal

from rmtabtool.cli import app

MARKUP = b"c1:/srv/a[/b]c:0x00000001\nc2:/srv/[red]x:0x00000001\n"
ESCAPE = b"c3:/srv/\x1b[31mred:0x00000001\n"


def _statedir(tmp_path: Path, content: bytes) -> Path:
    statedir = tmp_path / "nfs"
    statedir.mkdir()
    rmtab = statedir / "rmtab"
    rmtab.write_bytes(content)
    return rmtab


def _installed() -> list[str]:
    cmd = list(rmtabtool_command())
    if len(cmd) > 1:
        pytest.skip("needs the installed rmtabtool script")
    return cmd


# ---------------------------------------------------------------- stdout that fails


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "{file}"],
        ["stats", "--json", "{file}"],
        ["stats", "--prometheus", "-", "{file}"],
        ["dedupe", "-o", "-", "{file}"],
        ["merge", "{file}", "{file}"],
        ["backup", "/srv/a[", "--rmtab", "{file}", "--to", "-"],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_full_stdout_is_an_io_error_with_one_line(tmp_path: Path, args: list[str]) -> None:
    rmtab = _statedir(tmp_path, MARKUP * 3000)  # more than a pipe buffer of output
    argv = [*rmtabtool_command(), *(a.format(file=rmtab) for a in args)]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            argv, stdout=full, stderr=subprocess.PIPE, env=clean_env(), timeout=60, check=False
        )
    assert proc.returncode == 74, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert lines == ["rmtabtool: error: cannot write to standard output: No space left on device"]
    assert rmtab.read_bytes() == MARKUP * 3000


# ---------------------------------------------------------------- hostile text


@pytest.mark.parametrize("command", ["stats", "forget"])
def test_rich_markup_in_a_path_is_shown_literally_at_a_terminal(
    tmp_path: Path, command: str
) -> None:
    rmtab = _statedir(tmp_path, MARKUP)
    args = {
        "stats": ["stats", os.fspath(rmtab)],
        "forget": ["forget", "--rmtab", os.fspath(rmtab), "--client", "c1"],
    }[command]
    code, out = run_in_a_terminal([*_installed(), *args])
    text = out.decode("utf-8", "replace").replace("\r\n", "\n")
    assert code == 0, text
    assert "/srv/a[/b]c" in re.sub(r"\x1b\[[0-9;]*m", "", text)
    if command == "stats":
        assert "/srv/[red]x" in re.sub(r"\x1b\[[0-9;]*m", "", text)
    else:
        assert rmtab.read_bytes() == b"c2:/srv/[red]x:0x00000001\n"


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_control_characters_in_a_path_are_escaped(tmp_path: Path, terminal: bool) -> None:
    rmtab = _statedir(tmp_path, ESCAPE)
    args = ["stats", os.fspath(rmtab)]
    if terminal:
        code, out = run_in_a_terminal([*_installed(), *args])
    else:
        proc = run(*args)
        code, out = proc.returncode, proc.stdout + proc.stderr
    assert code == 0, out
    assert b"\x1b[31mred" not in out
    assert b"/srv/\\x1b[31mred" in out


def test_a_file_name_that_is_not_utf8_is_escaped_in_text_and_json(tmp_path: Path) -> None:
    rmtab = _statedir(tmp_path, b"10.0.0.1:/srv/caf\xe9/x:0x00000001\n")
    folder = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(folder)
    backup = os.fsdecode(folder + b"/.rmtab")
    # a strict stdout encoding: nothing may depend on a lenient locale
    env = clean_env(PYTHONIOENCODING="utf-8")
    proc = run("backup", os.fsdecode(b"/srv/caf\xe9"), "--rmtab", rmtab, "--to", backup, env=env)
    assert proc.returncode == 0, proc.stderr
    assert b"caf\\xe9/.rmtab" in proc.stdout
    assert os.path.exists(folder + b"/.rmtab")

    proc = run("stats", "--json", backup, env=env)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.decode("utf-8"))  # strict UTF-8: no lone surrogates
    assert payload["file"].endswith("caf\\xe9/.rmtab")
    assert payload["paths"][0]["path"] == "/srv/caf\\xe9/x"

    proc = run("stats", os.fsdecode(folder + b"/missing"), env=env)
    assert proc.returncode == 66
    assert b"caf\\xe9/missing" in proc.stderr


# ---------------------------------------------------------------- what goes where


def test_backup_to_stdout_writes_the_entries(tmp_path: Path) -> None:
    rmtab = _statedir(
        tmp_path, b"h1:/srv/a:0x00000001\nh2:/srv/b:0x00000002\nh1:/srv/a/sub:0x00000001\n"
    )
    proc = run("backup", "/srv/a", "--rmtab", rmtab, "--to", "-")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"h1:/srv/a:0x00000001\nh1:/srv/a/sub:0x00000001\n"
    assert not Path("-").exists()
    proc = run("backup", "/srv/a", "--rmtab", rmtab, "--to", "-", "--json")
    assert proc.returncode == 2
    assert proc.stdout == b""


def test_merge_into_reports_the_sources_rejects_apart_from_the_files_own(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"h1:/srv/a:0x00000001\nSRCBAD\n")
    target = tmp_path / "target"
    target.write_bytes(b"h9:/srv/z:0x00000001\nINTOBAD\nINTOBAD\n")
    proc = run("merge", source, "--into", target)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert f"3: 2 (1 distinct) -> appended to {target}.rejects; 1 in read-only" in out, out
    assert b"1 rejected line(s) in read-only input(s) were not written" in proc.stderr
    assert Path(f"{target}.rejects").read_bytes() == b"INTOBAD\n"

    target.write_bytes(b"h9:/srv/z:0x00000001\nINTOBAD\n")
    proc = run("merge", source, "--into", target, "--json")
    payload = json.loads(proc.stdout)
    assert (payload["rejected"], payload["rejected_moved"]) == (2, 1)


def test_restore_counts_entries_outside_the_export_as_ignored_not_duplicates(
    tmp_path: Path,
) -> None:
    rmtab = _statedir(tmp_path, b"h1:/srv/a:0x00000001\n")
    backup = tmp_path / "backup"
    backup.write_bytes(b"h2:/srv/a:0x00000001\nh3:/srv/other:0x00000001\nh4:/srv/x:0x1\n")
    payload = json.loads(
        run("restore", "/srv/a", "--rmtab", rmtab, "--from", backup, "--json").stdout
    )
    assert payload["ignored_outside_export"] == 2
    assert payload["duplicates_removed"] == 0
    assert payload["entries_out"] == 2


def test_a_threshold_message_shows_the_digits_that_differ(tmp_path: Path) -> None:
    rmtab = _statedir(tmp_path, b"h:/p:0x00000001\n" * 577 + b"h2:/p:0x00000001\n" * 423)
    proc = run("stats", "-q", "--max-bloat", "499.9", rmtab)  # bloat 500.0
    assert proc.returncode == 1
    assert proc.stderr.decode().endswith("bloat 500.00 > 499.9\n")
    proc = run("stats", "-q", "--max-bloat", "499.99999", rmtab)
    assert proc.stderr.decode().endswith("bloat 500.00000 > 499.99999\n")


# ---------------------------------------------------------------- usage errors and help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stats", "--foo"], "No such option: --foo"),
        (["stats", "--max-bytes", "abc", "x"], "not a size: 'abc'"),
        (["backup"], "Missing argument 'EXPORT_DIR'"),
        (["restore", "--json", "/srv/a", "--lock-timeout", "-1"], "--lock-timeout"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_parser_errors_are_one_line_on_stderr(args: list[str], message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("rmtabtool: usage error: ")
    assert message in lines[0]


def test_rmtabtool_alone_shows_the_help() -> None:
    proc = run()
    assert proc.returncode == 2
    assert b"Commands:" in proc.stdout + proc.stderr


def _options() -> list[tuple[str, object]]:
    group = typer.main.get_command(app)
    commands = getattr(group, "commands", {})
    return [(name, p) for name, cmd in commands.items() for p in cmd.params]


@pytest.mark.parametrize("name", ["stats", "dedupe", "merge", "backup", "restore", "forget"])
def test_piped_help_is_plain_and_shows_every_option_with_its_help_and_default(name: str) -> None:
    proc = run(name, "--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert not re.search("[\u2500-\u257f]", text), "box drawing in piped help"
    flat = " ".join(text.split())
    for command, param in _options():
        if command != name or getattr(param, "param_type_name", "") != "option":
            continue
        opts = getattr(param, "opts", [])
        assert any(o in flat for o in opts), opts
        assert " ".join(str(getattr(param, "help", "")).split()) in flat, opts
        shown = getattr(param, "show_default", None)
        if isinstance(shown, str):
            assert f"default: ({shown})" in flat or f"default: {shown}" in flat, opts


def test_an_interrupted_json_run_still_prints_one_json_object(tmp_path: Path) -> None:
    """SIGINT while the command waits for rpc.mountd's lock: one JSON error, exit 130."""
    import fcntl

    rmtab = _statedir(tmp_path, b"h:/p:0x00000001\nh:/p:0x00000001\n")
    lock = os.open(rmtab.parent / ".rmtab.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        child = subprocess.Popen(
            [
                *rmtabtool_command(),
                "dedupe",
                "--rmtab",
                os.fspath(rmtab),
                "--json",
                "--lock-timeout",
                "60",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 30
        while not _waits_for_a_lock(child.pid):
            assert time.monotonic() < deadline, "the command never waited for the lock"
            assert child.poll() is None, child.communicate()
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        os.close(lock)
    assert child.returncode == 130, err
    payload = json.loads(out)
    assert payload["exit_code"] == 130
    assert "interrupted by signal 2" in payload["error"]
    assert rmtab.read_bytes() == b"h:/p:0x00000001\nh:/p:0x00000001\n"


def _waits_for_a_lock(pid: int) -> bool:
    """The process is sleeping between polls of a lock (it has opened .rmtab.lock)."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    return any(link.endswith("/.rmtab.lock") for link in links)

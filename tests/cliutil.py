"""Run the INSTALLED ``rmtabtool`` command in a subprocess, for the tests that need
real exit statuses, real stdin/stdout, real locks held by other processes and real
kernel errors (CliRunner runs in-process and sees none of that).

Imported as ``cliutil`` (like ``mountd_like``): ``tests/`` has no ``__init__.py``,
so pytest puts it on ``sys.path`` and mypy maps it to the top-level module.

The test files differ in what they strip from the environment, how long a run may
take and whether a hang fails the test with a message or raises: those are
parameters here, each file keeps its own.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Optional

import pytest


@cache
def rmtabtool_command(*, installed_only: bool = False) -> tuple[str, ...]:
    """argv of the installed console script: the one beside this interpreter, else
    the one on PATH, else ``python -m rmtabtool`` (with ``installed_only``, fail the
    test instead)."""
    beside = Path(sys.executable).with_name("rmtabtool")
    if beside.exists():
        return (str(beside),)
    found = shutil.which("rmtabtool")
    if found:
        return (found,)
    if installed_only:
        pytest.fail("the rmtabtool command is not installed (pip install -e .)", pytrace=False)
    return (sys.executable, "-m", "rmtabtool")


def clean_env(
    *,
    drop: Collection[str] = (),
    drop_prefixes: tuple[str, ...] = ("RMTABTOOL_", "PYTEST"),
    **extra: str,
) -> dict[str, str]:
    """This process's environment without the variables named in ``drop`` or starting
    with one of ``drop_prefixes``, with ``TERM=dumb`` (no escape codes), then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(drop_prefixes)}
    env["TERM"] = "dumb"
    env.update(extra)
    return env


def run(
    *args: str | Path,
    prefix: Sequence[str] = (),
    argv0: Optional[Sequence[str]] = None,
    stdin: Optional[bytes] = None,
    env: Optional[Mapping[str, str]] = None,
    preexec_fn: Optional[Callable[[], None]] = None,
    timeout: Optional[float] = 60,
    fail_on_hang: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``[*prefix, *argv0, *args]`` with stdout and stderr captured; any exit status.

    ``argv0`` is the command itself (default: ``rmtabtool_command()``); ``prefix``
    runs it through another command (nsenter). ``stdin``: bytes fed to it, or None
    to let it inherit ours. ``env``: default ``clean_env()``. A run that outlives
    ``timeout`` fails the test with the command line (``fail_on_hang``), or raises
    ``subprocess.TimeoutExpired``.
    """
    cmd = [
        *prefix,
        *(argv0 if argv0 is not None else rmtabtool_command()),
        *map(str, args),
    ]
    try:
        return subprocess.run(
            cmd,
            input=stdin,
            capture_output=True,
            env=env if env is not None else clean_env(),
            preexec_fn=preexec_fn,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        if not fail_on_hang:
            raise
        pytest.fail(f"rmtabtool hung for {timeout:g}s: {' '.join(cmd)}")


def run_json(
    *args: str | Path,
    argv0: Optional[Sequence[str]] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = 60,
) -> dict[str, Any]:
    """Run ``rmtabtool ARGS --json`` (see ``run``; a timeout raises); it must exit 0
    and print one JSON object, which is returned."""
    proc = run(*args, "--json", argv0=argv0, env=env, timeout=timeout, fail_on_hang=False)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(proc.args)} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')}\nstdout: {proc.stdout!r}"
        )
    result = json.loads(proc.stdout)
    if not isinstance(result, dict):
        raise AssertionError(f"not one JSON object: {proc.stdout!r}")
    return result


def run_in_a_terminal(args: list[str], timeout: float = 60) -> tuple[int, bytes]:
    """Run a command with stdin/stdout/stderr on a pseudo-terminal; what it printed."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CI")}
        env.update(TERM="xterm", COLUMNS="100")
        try:
            os.execve(args[0], args, env)
        finally:
            os._exit(127)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), bytes(out)

"""Claims of docs/reliability.md that no other test checks through the installed command.

* SIGTERM at a random moment of an in-place ``dedupe``: the shell sees 143, the
  rmtab is exactly the old or the new content, no temp file is left, and the one
  line on stderr says "nothing was changed" only when nothing was (the library's
  own signal tests are in test_rewrite_faults.py);
* a ``/run/lock/rmtabtool`` created first by another user changes nothing: root
  keeps its private locks in ``/run/rmtabtool``, where only root creates names.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmtabtool.safefile import temp_name_pattern

IS_ROOT = os.geteuid() == 0


def rmtabtool_command() -> list[str]:
    beside = Path(sys.executable).with_name("rmtabtool")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("rmtabtool")
    return [found] if found else [sys.executable, "-m", "rmtabtool"]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RMTABTOOL_", "PYTEST"))}
    env["TERM"] = "dumb"
    return env


def bloated(export: bytes) -> bytes:
    """About 2 MB: 3,000 distinct entries, each repeated, out of order."""
    lines = [
        b"10.%d.%d.%d:%s/%d:0x00000001\n" % (i % 3, i // 250, i % 250, export, i % 40)
        for i in range(3000)
    ]
    rng = random.Random(5)
    many = lines * 18
    rng.shuffle(many)
    return b"".join(many)


@pytest.mark.slow
def test_sigterm_to_the_installed_command_leaves_old_or_new_and_no_temp(tmp_path: Path) -> None:
    statedir = tmp_path / "nfs"
    statedir.mkdir()
    live = statedir / "rmtab"
    old = bloated(b"/srv/export")
    live.write_bytes(old)
    args = [*rmtabtool_command(), "dedupe", "--rmtab", str(live), "-q"]
    start = time.monotonic()
    first = subprocess.run(args, capture_output=True, env=clean_env(), timeout=60, check=False)
    full = time.monotonic() - start
    assert first.returncode == 0, first.stderr
    new = live.read_bytes()
    assert new != old
    pattern = temp_name_pattern(live)
    rng = random.Random(20240501)
    seen: dict[str, int] = {}
    for _ in range(20):
        live.write_bytes(old)
        proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=clean_env(),
            # as from an interactive shell, even when the tests run where SIGTERM
            # is ignored (an ignored signal stays ignored across exec)
            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),
        )
        time.sleep(rng.uniform(0, full))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        content = live.read_bytes()
        assert content in (old, new), f"partial rmtab: {len(content)} bytes"
        assert [n for n in os.listdir(statedir) if pattern.fullmatch(n)] == []
        text = err.decode("utf-8", "replace")
        assert "Traceback" not in text, text
        if proc.returncode == 128 + signal.SIGTERM:  # interrupted inside the rewrite
            assert text.count("\n") == 1, text
            if "nothing was changed" in text:
                assert content == old
                outcome = "143 nothing was changed"
            else:
                assert f"after {live} was replaced" in text, text
                assert content == new
                outcome = "143 was replaced"
        elif proc.returncode == -signal.SIGTERM:  # outside it: the default action (shell: 143)
            outcome = "killed by SIGTERM, " + ("old" if content == old else "new")
        else:
            assert proc.returncode == 0, (proc.returncode, text)
            assert content == new
            outcome = "finished first"
        seen[outcome] = seen.get(outcome, 0) + 1
    print(f"\nSIGTERM outcomes: {seen}")


@pytest.mark.skipif(not IS_ROOT, reason="needs root (mount namespace, another uid)")
def test_a_lock_directory_made_first_by_another_user_does_not_matter(tmp_path: Path) -> None:
    """/run/lock is 1777: a user may create /run/lock/rmtabtool before root does
    (after a boot). Root keeps its private locks in /run/rmtabtool, where only
    root can create names: the backup works, and nothing is created in the
    user's directory."""
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    if not Path("/run/lock").is_dir():
        pytest.skip("no /run/lock")
    os.chmod(tmp_path, 0o755)
    export = tmp_path / "export"
    export.mkdir()
    os.chmod(export, 0o1777)
    live = tmp_path / "rmtab"
    line = b"10.0.0.1:%s:0x00000001\n" % os.fsencode(export)
    live.write_bytes(line)
    script = (
        "mount -t tmpfs -o mode=1777 tmpfs /run/lock || exit 99; "
        "setpriv --reuid=65534 --regid=65534 --clear-groups mkdir -m 0777 /run/lock/rmtabtool "
        '|| exit 98; "$@"; code=$?; ls -A /run/lock/rmtabtool; exit $code'
    )
    proc = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            *rmtabtool_command(),
            "backup",
            str(export),
            "--rmtab",
            str(live),
        ],
        capture_output=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    if proc.returncode in (98, 99):
        pytest.skip(f"cannot set up the namespace: {proc.stderr.decode().strip()}")
    assert proc.returncode == 0, proc.stderr
    # stdout: the summary, then `ls -A` of the user's directory: nothing of ours
    assert b"rmtabtool-lock" not in proc.stdout
    assert (export / ".rmtab").read_bytes() == line
    st = os.lstat("/run/rmtabtool")
    assert st.st_uid == 0
    assert stat.S_IMODE(st.st_mode) == 0o700

"""Every exit code of issue 4's table, one by one, with the REAL installed command.

Subprocesses, not CliRunner: real exit statuses, real stdin/stdout, real POSIX
locks held by another process, real kernel errors (EROFS from a read-only tmpfs,
EFBIG from RLIMIT_FSIZE, EACCES from a dropped uid).

0 success · 1 stats threshold · 2 usage · 65 rejected lines under --strict ·
66 missing input · 70 internal error · 73 output cannot be created ·
74 I/O error · 75 lock timeout · 77 permission denied.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Callable, Optional

import cliutil
import pytest

CLEAN = (
    b"10.0.0.1:/srv/data:0x00000001\n"
    b"10.0.0.2:/srv/data/sub:0x00000002\n"
    b"fe80;;1:/srv/other:0x00000001\n"
)
#: 9 lines, 4 entries (+1 zero-count), 2 rejected lines (a blank one and a comment)
BLOATED = (
    b"10.0.0.1:/srv/data:0x00000001\n"
    b"10.0.0.2:/srv/data/sub:0x00000001\n"
    b"10.0.0.1:/srv/data:0x00000002\n"
    b"fe80::1:/srv/other:0x1\n"
    b"10.0.0.1:/srv/data:0x00000001\n"
    b"10.0.0.3:/srv/zero:0x00000000\n"
    b"\n"
    b"# a comment\n"
    b"10.0.0.2:/srv/data/sub:0x00000001\n"
)
#: 4 valid lines, 2 entries: bloat exactly 2.0, nothing rejected
BLOAT_TWO = (
    b"10.0.0.1:/srv/data:0x00000001\n"
    b"10.0.0.2:/srv/data:0x00000001\n"
    b"10.0.0.1:/srv/data:0x00000001\n"
    b"10.0.0.2:/srv/data:0x00000001\n"
)


def clean_env(**extra: str) -> dict[str, str]:
    return cliutil.clean_env(
        drop=("RMTABTOOL_RMTAB", "RMTABTOOL_DEBUG"),
        drop_prefixes=("PYTEST",),
        PYTHONDONTWRITEBYTECODE="1",
        **extra,
    )


def run(
    *args: str | Path,
    stdin: bytes = b"",
    env: Optional[dict[str, str]] = None,
    preexec_fn: Optional[Callable[[], None]] = None,
    argv0: Optional[Sequence[str]] = None,
) -> subprocess.CompletedProcess[bytes]:
    return cliutil.run(
        *args,
        argv0=argv0,
        stdin=stdin,
        env=env if env is not None else clean_env(),
        preexec_fn=preexec_fn,
        fail_on_hang=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    """An expected failure says so in exactly one line on stderr, never a traceback."""
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert err.endswith("\n"), repr(err)
    assert err.count("\n") == 1, repr(err)
    return err


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A private rpc.mountd statedir holding a bloated rmtab."""
    statedir = tmp_path / "varlibnfs"
    statedir.mkdir()
    (statedir / "rmtab").write_bytes(BLOATED)
    return statedir


# ---------------------------------------------------------------- 0


def test_exit_0_on_success_and_a_clean_file_is_left_untouched(tmp_path: Path) -> None:
    clean = tmp_path / "rmtab"
    clean.write_bytes(CLEAN)
    before = snapshot(clean)
    assert run("--version").returncode == 0
    assert run("stats", clean, "--rmtab", clean).returncode == 0
    proc = run("dedupe", clean, "--rmtab", clean, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["changed"] is False
    assert snapshot(clean) == before


def test_real_stdin_and_stdout(tmp_path: Path) -> None:
    source = tmp_path / "bloated"
    source.write_bytes(BLOATED)
    live = str(tmp_path / "live" / "rmtab")
    deduped = run("dedupe", source, "-o", "-", "--rmtab", live)
    assert deduped.returncode == 0, deduped.stderr
    assert deduped.stdout == (
        b"10.0.0.1:/srv/data:0x00000002\n"
        b"10.0.0.2:/srv/data/sub:0x00000001\n"
        b"fe80;;1:/srv/other:0x00000001\n"
        b"10.0.0.3:/srv/zero:0x00000000\n"
    )
    assert source.read_bytes() == BLOATED  # -o leaves FILE alone
    piped = run("dedupe", "-", "-o", "-", "--rmtab", live, stdin=BLOATED)
    assert piped.returncode == 0
    assert piped.stdout == deduped.stdout
    stats = run("stats", "-", "--json", "--rmtab", live, stdin=BLOATED)
    assert stats.returncode == 0
    assert json.loads(stats.stdout)["entries"] == 4
    merged = run("merge", "-", source, "--rmtab", live, stdin=CLEAN)
    assert merged.returncode == 0
    assert merged.stdout.count(b"\n") == 4


# ---------------------------------------------------------------- 1


@pytest.mark.parametrize(
    ("flags", "content", "code"),
    [
        (["--max-bloat", "1.9"], BLOAT_TWO, 1),
        (["--max-bloat", "2"], BLOAT_TWO, 0),  # strictly greater than the limit
        (["--max-bytes", str(len(BLOAT_TWO) - 1)], BLOAT_TWO, 1),
        (["--max-bytes", str(len(BLOAT_TWO))], BLOAT_TWO, 0),
        (["--max-bytes", "1K"], CLEAN * 10, 0),  # 940 bytes: K is 1024
        (["--max-bytes", "1K"], CLEAN * 11, 1),  # 1034 bytes
        (["--fail-on-rejected"], BLOATED, 1),
        (["--fail-on-rejected"], BLOAT_TWO, 0),
    ],
    ids=[
        "bloat-over",
        "bloat-equal",
        "bytes-over",
        "bytes-equal",
        "1K-under",
        "1K-over",
        "rejected",
        "no-rejected",
    ],
)
def test_exit_1_when_a_stats_threshold_is_exceeded(
    tmp_path: Path, flags: list[str], content: bytes, code: int
) -> None:
    rmtab = tmp_path / "rmtab"
    rmtab.write_bytes(content)
    proc = run("stats", rmtab, "--rmtab", rmtab, *flags)
    assert proc.returncode == code, proc.stderr
    if code == 1:
        assert "threshold" in one_error_line(proc)
    as_json = run("stats", rmtab, "--rmtab", rmtab, "--json", *flags)
    assert as_json.returncode == code
    assert isinstance(json.loads(as_json.stdout), dict)  # still one JSON object


# ---------------------------------------------------------------- 2


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "--no-such-option"],
        ["stats", "--max-bytes", "lots"],
        ["dedupe", "{f}", "--json", "-o", "-"],
        ["merge", "{f}", "--json"],
        ["merge", "{f}", "--json", "-o", "-"],
        ["forget", "--rmtab", "{f}"],
        ["forget", "--rmtab", "{f}", "--json"],
        ["merge", "{f}", "--into", "{f}", "-o", "{d}/out"],
        ["no-such-command"],
    ],
    ids=lambda a: " ".join(a).replace("{f}", "F").replace("{d}", "D"),
)
def test_exit_2_on_usage_errors(tmp_path: Path, args: list[str]) -> None:
    rmtab = tmp_path / "rmtab"
    rmtab.write_bytes(BLOATED)
    argv = [a.replace("{f}", str(rmtab)).replace("{d}", str(tmp_path)) for a in args]
    proc = run(*argv)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert b"Traceback" not in proc.stderr
    assert proc.stdout == b""
    assert rmtab.read_bytes() == BLOATED
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 65


@pytest.mark.parametrize("command", ["dedupe", "forget", "restore", "merge-into"])
def test_exit_65_strict_refuses_a_blank_line_and_writes_nothing(
    tmp_path: Path, state: Path, command: str
) -> None:
    live = state / "rmtab"
    export = tmp_path / "export"
    export.mkdir()
    other = tmp_path / "other"
    other.write_bytes(CLEAN)
    if command == "restore":
        # the blank line is in the backup; the live file is clean
        live.write_bytes(CLEAN)
        (export / ".rmtab").write_bytes(b"10.0.0.9:%s:0x00000001\n\n" % os.fsencode(export))
    args = {
        "dedupe": ["dedupe"],
        "forget": ["forget", "--client", "10.0.0.1"],
        "restore": ["restore", str(export)],
        "merge-into": ["merge", str(other), "--into", str(live)],
    }[command]
    before = snapshot(live)
    proc = run(*args, "--rmtab", live, "--strict")
    assert proc.returncode == 65, proc.stderr
    one_error_line(proc)
    assert snapshot(live) == before
    assert not (state / "rmtab.rejects").exists()


# ---------------------------------------------------------------- 66


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "{missing}"],
        ["stats"],  # the live rmtab itself is missing
        ["dedupe", "{missing}"],
        ["dedupe"],
        ["dedupe", "{missing}", "-o", "{dir}/out"],
        ["merge", "{missing}", "-o", "{dir}/out"],
        ["forget", "--client", "10.0.0.1"],
        ["backup", "{export}"],
        ["restore", "{export}"],  # the live rmtab exists, the backup does not
    ],
    ids=lambda a: (
        " ".join(a)
        .replace("{missing}", "MISSING")
        .replace("{dir}", "D")
        .replace("{export}", "EXPORT")
    ),
)
def test_exit_66_when_an_input_is_missing(tmp_path: Path, args: list[str]) -> None:
    export = tmp_path / "export"
    export.mkdir()
    statedir = tmp_path / "varlibnfs"
    statedir.mkdir()
    live = statedir / "rmtab"
    good_backup = b"10.0.0.1:%s:0x00000001\n" % os.fsencode(export)
    if args[0] == "restore":
        live.write_bytes(CLEAN)
    else:
        (export / ".rmtab").write_bytes(good_backup)
    subs = {"{missing}": str(tmp_path / "missing"), "{dir}": str(tmp_path), "{export}": str(export)}
    argv = [subs.get(a, a) for a in args]
    proc = run(*argv, "--rmtab", live)
    assert proc.returncode == 66, proc.stderr
    one_error_line(proc)
    assert not (tmp_path / "out").exists()
    if args[0] == "backup":
        # an unmounted /var must not wipe a good backup
        assert (export / ".rmtab").read_bytes() == good_backup
    if args[0] == "restore":
        assert live.read_bytes() == CLEAN
    else:
        assert not live.exists()


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_missing_ok_turns_66_into_a_warning_and_leaves_everything_alone(
    tmp_path: Path, command: str
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    live = tmp_path / "varlibnfs" / "rmtab"
    live.parent.mkdir()
    good_backup = b"10.0.0.1:%s:0x00000001\n" % os.fsencode(export)
    if command == "backup":
        (export / ".rmtab").write_bytes(good_backup)
    else:
        live.write_bytes(CLEAN)
    proc = run(command, export, "--rmtab", live, "--missing-ok")
    assert proc.returncode == 0, proc.stderr
    assert b"warning" in proc.stderr.lower()
    assert b"Traceback" not in proc.stderr
    if command == "backup":
        assert (export / ".rmtab").read_bytes() == good_backup
        assert not live.exists()
    else:
        assert live.read_bytes() == CLEAN
        assert not (export / ".rmtab").exists()
    quiet = run(command, export, "--rmtab", live, "--missing-ok", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"", b"")
    as_json = run(command, export, "--rmtab", live, "--missing-ok", "--json")
    assert as_json.returncode == 0
    assert isinstance(json.loads(as_json.stdout), dict)


# ---------------------------------------------------------------- 70

BUGGY = textwrap.dedent(
    """
    import sys
    import rmtabtool.cli
    import rmtabtool.operations

    def bug(*args, **kwargs):
        raise RuntimeError("simulated bug in the library")

    rmtabtool.operations.stats = bug
    sys.argv = ["rmtabtool", *sys.argv[1:]]
    rmtabtool.cli.main()
    """
)


def test_exit_70_internal_error_is_one_line_and_a_traceback_only_when_asked(
    tmp_path: Path,
) -> None:
    rmtab = tmp_path / "rmtab"
    rmtab.write_bytes(CLEAN)
    buggy = [sys.executable, "-c", BUGGY]
    proc = run("stats", rmtab, argv0=buggy)
    assert proc.returncode == 70, proc.stderr
    err = one_error_line(proc)
    assert "internal error" in err
    assert "simulated bug in the library" in err
    assert "--debug" in err

    debug_runs: list[tuple[list[str | Path], dict[str, str]]] = [
        (["--debug", "stats", rmtab], clean_env()),
        (["stats", rmtab, "--debug"], clean_env()),  # where a reader of the hint adds it
        (["stats", rmtab], clean_env(RMTABTOOL_DEBUG="1")),
    ]
    for argv, env in debug_runs:
        proc = run(*argv, argv0=buggy, env=env)
        assert proc.returncode == 70
        assert b"Traceback (most recent call last)" in proc.stderr
        assert b"RuntimeError: simulated bug in the library" in proc.stderr


# ---------------------------------------------------------------- 73


def test_exit_73_when_the_output_directory_is_missing(tmp_path: Path) -> None:
    rmtab = tmp_path / "rmtab"
    rmtab.write_bytes(BLOATED)
    cases: list[list[str | Path]] = [
        ["dedupe", rmtab, "-o", tmp_path / "no-such-dir" / "out"],
        ["merge", rmtab, "-o", tmp_path / "no-such-dir" / "out"],
        ["backup", tmp_path, "--to", tmp_path / "no-such-dir" / "backup"],
    ]
    for args in cases:
        proc = run(*args, "--rmtab", rmtab)
        assert proc.returncode == 73, (args, proc.stderr)
        one_error_line(proc)
    assert not (tmp_path / "no-such-dir").exists()
    assert rmtab.read_bytes() == BLOATED


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs holding a bloated rmtab, remounted read-only (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "rmtab").write_bytes(BLOATED)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.root
def test_exit_73_on_a_read_only_filesystem(tmp_path: Path, readonly_dir: Path) -> None:
    rmtab = readonly_dir / "rmtab"
    source = tmp_path / "source"
    source.write_bytes(BLOATED)
    cases: list[list[str | Path]] = [
        ["dedupe", rmtab, "--rmtab", rmtab],  # in place
        ["dedupe", source, "-o", readonly_dir / "out", "--rmtab", rmtab],
        ["forget", "--client", "10.0.0.1", "--rmtab", rmtab],
    ]
    for args in cases:
        proc = run(*args)
        assert proc.returncode == 73, (args, proc.stderr)
        assert "Read-only file system" in one_error_line(proc)
    assert rmtab.read_bytes() == BLOATED


# ---------------------------------------------------------------- 74


def small_file_size_limit() -> None:
    """In the child: writes past 4 KiB fail with EFBIG (instead of killing us)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_exit_74_on_efbig_and_nothing_half_written(tmp_path: Path) -> None:
    big = tmp_path / "big"
    lines = [b"10.0.%d.%d:/srv/data:0x00000001\n" % divmod(i, 256) for i in range(2000)]
    big.write_bytes(b"".join(lines) * 2)  # 120 KB in, 60 KB out
    out = tmp_path / "out"
    out.write_bytes(CLEAN)
    live = tmp_path / "elsewhere" / "rmtab"
    before = set(os.listdir(tmp_path))
    proc = run("dedupe", big, "-o", out, "--rmtab", live, preexec_fn=small_file_size_limit)
    assert proc.returncode == 74, proc.stderr
    one_error_line(proc)
    assert out.read_bytes() == CLEAN
    # in place: the bloated original survives whole
    original = big.read_bytes()
    proc = run("dedupe", big, "--rmtab", live, preexec_fn=small_file_size_limit)
    assert proc.returncode == 74, proc.stderr
    one_error_line(proc)
    assert big.read_bytes() == original
    leftovers = {
        name for name in set(os.listdir(tmp_path)) - before if not name.endswith("rmtabtool-lock")
    }
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_longest_names_rewrite_and_a_rejects_name_too_long_is_exit_74(tmp_path: Path) -> None:
    """A 255-byte file name (NAME_MAX) is deduplicated in place: its own lock and
    temp names are cut to fit. Its default ``<name>.rejects`` cannot exist: with
    rejected lines to move, the rewrite fails (74, one line, the file untouched)
    and ``--rejects PATH`` is the way out."""
    live = tmp_path / "elsewhere" / "rmtab"
    target = tmp_path / ("n" * 255)
    target.write_bytes(BLOAT_TWO)
    proc = run("dedupe", target, "--rmtab", live)
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == b"10.0.0.1:/srv/data:0x00000001\n10.0.0.2:/srv/data:0x00000001\n"
    target.write_bytes(BLOATED)
    proc = run("dedupe", target, "--rmtab", live)
    assert proc.returncode == 74, proc.stderr
    assert ".rejects" in one_error_line(proc)
    assert target.read_bytes() == BLOATED
    proc = run("dedupe", target, "--rejects", tmp_path / "r", "--rmtab", live)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r").read_bytes() == b"\n# a comment\n"
    assert b"# a comment" not in target.read_bytes()


# ---------------------------------------------------------------- 75

HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    if sys.argv[2] == "lockf":
        fcntl.lockf(fd, fcntl.LOCK_EX)  # what rpc.mountd takes for MNT/UMNT
    else:
        fcntl.flock(fd, fcntl.LOCK_EX)  # invisible to POSIX locks on Linux
    print("locked", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture
def lock_holder(state: Path) -> Iterator[Callable[[str], None]]:
    """Start a process that holds ``<statedir>/.rmtab.lock`` with lockf or flock."""
    procs: list[subprocess.Popen[bytes]] = []

    def hold(kind: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(state / ".rmtab.lock"), kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"locked\n"

    yield hold
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize(
    "args",
    [
        ["dedupe"],
        ["forget", "--client", "10.0.0.1"],
        ["restore", "{export}"],
        ["backup", "{export}"],
    ],
    ids=lambda a: a[0],
)
def test_exit_75_when_rpc_mountds_lock_is_held(
    tmp_path: Path, state: Path, lock_holder: Callable[[str], None], args: list[str]
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / ".rmtab").write_bytes(b"10.0.0.7:%s:0x00000001\n" % os.fsencode(export))
    live = state / "rmtab"
    before = snapshot(live)
    lock_holder("lockf")
    start = time.monotonic()
    proc = run(
        *[a.replace("{export}", str(export)) for a in args],
        "--rmtab",
        live,
        "--lock-timeout",
        "0.5",
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 75, proc.stderr
    assert ".rmtab.lock" in one_error_line(proc)
    assert elapsed < 9.5, "--lock-timeout 0.5 was not honoured (the default is 10 s)"
    assert snapshot(live) == before


def test_flock_on_mountds_lock_file_does_not_block_us(
    state: Path, lock_holder: Callable[[str], None]
) -> None:
    """flock and POSIX locks do not see each other: only lockf is mountd's lock."""
    lock_holder("flock")
    proc = run("dedupe", "--rmtab", state / "rmtab", "--lock-timeout", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert (state / "rmtab").read_bytes().count(b"\n") == 4


# ---------------------------------------------------------------- 77

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
NOBODY = 65534


def root_without_dac_override() -> None:
    """In the child: drop the capabilities that let root ignore file permissions.

    Dropping to uid 65534 instead cannot work everywhere: the interpreter may live
    where nobody can exec it (a pyenv under /root, mode 0700). Root without
    CAP_DAC_OVERRIDE is what an admin meets on root-squashed NFS or in a container:
    files owned by someone else with mode 0600 give a real EACCES.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_exit_77_on_permission_denied(tmp_path: Path) -> None:
    as_root = os.geteuid() == 0
    # as root: everything belongs to nobody and root loses its override; as a
    # normal user: chmod 000 on the input
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    secret = theirs / "rmtab"
    secret.write_bytes(BLOATED)
    secret.chmod(0o600)
    export = theirs / "export"
    export.mkdir()
    backup = export / ".rmtab"
    backup_content = b"10.0.0.7:%s:0x00000001\n" % os.fsencode(export)
    backup.write_bytes(backup_content)
    public = theirs / "public"
    public.write_bytes(BLOATED)
    cases: list[list[str | Path]] = [
        ["stats", secret],
        ["dedupe", secret],
        ["dedupe", secret, "-o", tmp_path / "out"],
        ["backup", export],
        ["restore", export],
        ["forget", "--client", "10.0.0.1"],
    ]
    if as_root:
        for path in (theirs, secret, export, backup, public):
            os.chown(path, NOBODY, NOBODY)
        cases += [
            # a readable input, but an output root may not create or replace here
            ["dedupe", public, "-o", theirs / "out"],
            ["dedupe", public],
            ["merge", public, "--into", theirs / "merged"],
        ]
    else:
        secret.chmod(0o000)
    preexec = root_without_dac_override if as_root else None
    for args in cases:
        proc = run(*args, "--rmtab", secret, preexec_fn=preexec)
        assert proc.returncode == 77, (args, proc.stderr)
        assert "ermission denied" in one_error_line(proc)
    secret.chmod(0o600)
    assert secret.read_bytes() == BLOATED
    assert public.read_bytes() == BLOATED
    assert backup.read_bytes() == backup_content
    assert not (theirs / "out").exists()
    assert not (tmp_path / "out").exists()
    assert not (theirs / "merged").exists()


# ---------------------------------------------------------------- -q


def test_quiet_prints_nothing_on_success_and_one_line_on_error(tmp_path: Path, state: Path) -> None:
    live = state / "rmtab"
    export = tmp_path / "export"
    export.mkdir()
    source = tmp_path / "source"
    source.write_bytes(BLOATED)
    for args in (
        ["stats"],
        ["stats", "--max-bloat", "100"],
        ["dedupe", source, "-o", tmp_path / "out"],
        ["merge", source, live, "-o", tmp_path / "merged"],
        ["dedupe"],  # in place, with rejected lines moved aside: still silent
        ["backup", export],
        ["restore", export],
        ["restore", export, "--replace"],
        ["forget", "--client", "10.0.0.3"],
    ):
        proc = run(*args, "--rmtab", live, "-q")
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b""), args
    # a missing live rmtab under --missing-ok is a warning: silenced too
    proc = run("backup", export, "--rmtab", tmp_path / "missing", "--missing-ok", "-q")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert (state / "rmtab.rejects").read_bytes() == b"\n# a comment\n"

    missing = run("stats", tmp_path / "missing", "--rmtab", live, "-q")
    assert missing.returncode == 66
    assert missing.stdout == b""
    one_error_line(missing)
    over = run("stats", source, "--rmtab", live, "-q", "--max-bloat", "1")
    assert over.returncode == 1
    assert over.stdout == b""
    one_error_line(over)

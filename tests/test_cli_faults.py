"""Faults around the installed ``rmtabtool`` command, for every command that writes.

The library's own fault tests (test_rewrite_faults.py) fork a child that calls
``rewrite_file``; these run the REAL console script in a subprocess, through
typer, the operations layer and the error mapping, for each writing command:

    dedupe (in place) · dedupe -o FILE · merge --into · merge -o FILE · backup ·
    restore · restore --replace · forget · stats --prometheus FILE

and check what an operator would see after each fault:

* kill -9 at random moments (>= 50 trials per command, on a few-MB bloated
  file, kills timed to land in the read, the write, the fsync and the rename):
  every target is exactly its old or exactly its new content, no other file
  changed, a ``.rejects`` file holds whole lines only and never loses one, and
  the next complete run removes the temp files the killed ones left;
* disk full: EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored) and ENOSPC (a tiny tmpfs in a
  private mount namespace): exit 74, original intact, temp file gone, one line;
* a read-only directory (a tmpfs remounted read-only in a namespace): exit 73;
* permission denied (uid 65534 against root-owned 0600 files / 0755 dirs): 77;
* the live rmtab deleted while rmtabtool waits for rpc.mountd's lock (which the
  test holds) between its snapshot and its rename: 66 for the commands that need
  the file, a file built from nothing for those that add to it; nothing partial;
* the live rmtab (or the output, or a source) replaced by a directory or a FIFO:
  66 (73 for an output path that is a directory), within a timeout, never a
  traceback. (``merge -o`` never reads the live rmtab: it has no part in the
  live-rmtab faults.)

Tests that need root (namespaces, mounts, another uid) skip without it.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import random
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable, Optional

import cliutil
import pytest
from cliutil import rmtabtool_command

from rmtabtool.safefile import temp_name_pattern

IS_ROOT = os.geteuid() == 0
NOBODY = 65534
#: kill -9 trials per command (issue 5 asks for at least 50)
KILL_TRIALS = 50
#: parallel trial workers, each in its own directory (the machine has 2 cores)
KILL_WORKERS = 2

# ---------------------------------------------------------------- running the command


def clean_env() -> dict[str, str]:
    return cliutil.clean_env(
        drop_prefixes=("RMTABTOOL_", "PYTEST", "COV_"), PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1"
    )


def run(
    args: Sequence[str],
    *,
    prefix: Sequence[str] = (),
    preexec_fn: Optional[Callable[[], None]] = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed command; a hang is a test failure, not a stuck suite."""
    return cliutil.run(
        *args, prefix=prefix, env=clean_env(), preexec_fn=preexec_fn, timeout=timeout
    )


def one_error_line(stderr: bytes) -> str:
    """An expected failure is exactly one line on stderr, never a traceback."""
    err = stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert err.startswith("rmtabtool: error: "), err
    assert err.endswith("\n"), repr(err)
    assert err.count("\n") == 1, repr(err)
    return err


@cache
def startup_seconds() -> float:
    """How long the interpreter takes to reach the command (imports, typer)."""
    best = float("inf")
    for _ in range(3):
        start = time.monotonic()
        subprocess.run([*rmtabtool_command(), "--version"], capture_output=True, check=True)
        best = min(best, time.monotonic() - start)
    return best


# ---------------------------------------------------------------- data

#: a previous run's metrics file: what ``stats --prometheus`` replaces
OLD_METRICS = (
    b"# HELP rmtabtool_rmtab_bytes Size of the rmtab file in bytes.\n"
    b"# TYPE rmtabtool_rmtab_bytes gauge\n"
    b'rmtabtool_rmtab_bytes{file="/var/lib/nfs/rmtab"} 4096\n'
)
#: the one sample of the metrics that differs from run to run (when it was taken)
METRICS_TIMESTAMP = re.compile(rb"(?m)^(rmtabtool_stats_timestamp_seconds\{[^\n]*\} )[^\n]*")

#: lines rmtabtool cannot represent: they must end up in <file>.rejects, whole
REJECTED = (
    b"",  # a blank line: rpc.mountd stops reading here
    b"# 10.0.0.9:/srv/commented-out:0x00000001",
    b"garbage-without-any-colon",
    b"10.0.0.8 :/srv/x:0x00000001",
    b"10.0.0.7:/srv/x:0xzz",
)


def entry_lines(export: bytes, distinct: int, seed: int) -> list[bytes]:
    """``distinct`` canonical lines: the export, its sub-directories, another export."""
    rng = random.Random(seed)
    out = []
    for i in range(distinct):
        if i % 4 == 0:
            path = b"/srv/other-export"
        elif i % 3 == 0:
            path = export + b"/sub%d" % (i % 37)
        else:
            path = export
        client = b"10.%d.%d.%d" % (seed % 200, i >> 8, i & 255)
        if i % 97 == 5:
            client = b"fe80;;%x" % i
        out.append(b"%s:%s:0x%08x\n" % (client, path, rng.randint(1, 3)))
    return out


def bloated(export: bytes, distinct: int, size: int, seed: int, rejects: bool = True) -> bytes:
    """A seed-like file: the same entries again and again, counts changing, junk between."""
    rng = random.Random(seed)
    base = entry_lines(export, distinct, seed)
    chunks: list[bytes] = []
    total = 0
    copy = 0
    while total < size:
        lines = [
            line[:-9] + b"%08x\n" % (int(line[-9:-1], 16) + rng.randint(0, 1)) for line in base
        ]
        rng.shuffle(lines)
        if rejects and copy < len(REJECTED):
            lines.insert(rng.randrange(len(lines)), REJECTED[copy] + b"\n")
        chunk = b"".join(lines)
        chunks.append(chunk)
        total += len(chunk)
        copy += 1
    if rejects:
        chunks.append(b"".join(r + b"\n" for r in REJECTED))
    return b"".join(chunks)


@dataclass(frozen=True)
class Scale:
    """How big the files of a scenario are."""

    distinct: int
    size: int


SMALL = Scale(distinct=40, size=4_000)
MID = Scale(distinct=2_000, size=250_000)
BIG = Scale(distinct=3_000, size=2_000_000)


@dataclass(frozen=True)
class Case:
    """One writing command: its arguments and the one file it may replace."""

    name: str
    args: tuple[str, ...]
    #: the file the command replaces, relative to the scenario root
    target: str
    #: rewritten in place: its own rejected lines go to <target>.rejects
    in_place: bool
    #: what the live rmtab is for this command: "big" (the input) or "old" (the target)
    live: str = "big"
    #: what EXPORT/.rmtab is: "old" (a previous backup) or "big" (restore's input)
    backup: str = "old"
    #: files read by the command (all must stay unchanged)
    inputs: tuple[str, ...] = ()
    #: reads the live rmtab (through --rmtab), so the live-rmtab faults apply
    reads_live: bool = True
    #: what the command writes holds the time of the run (stats' metrics): two
    #: complete runs differ there, and only there
    timestamped: bool = False

    def comparable(self, data: bytes) -> bytes:
        """``data`` (the target or a prefix of it) with what varies between runs blanked."""
        return METRICS_TIMESTAMP.sub(rb"\1", data) if self.timestamped else data


CASES = {
    c.name: c
    for c in (
        Case("dedupe", ("dedupe", "--rmtab", "{live}"), "nfs/rmtab", True),
        Case(
            "dedupe-o",
            ("dedupe", "-o", "{out}", "--rmtab", "{live}"),
            "out/clean",
            False,
            inputs=("nfs/rmtab",),
        ),
        Case(
            "merge-into",
            ("merge", "{a}", "{b}", "--into", "{live}", "--rmtab", "{live}"),
            "nfs/rmtab",
            True,
            live="old",
            inputs=("src/a", "src/b"),
        ),
        Case(
            "merge-o",
            ("merge", "{a}", "{b}", "-o", "{out}", "--rmtab", "{live}"),
            "out/clean",
            False,
            inputs=("src/a", "src/b"),
            reads_live=False,
        ),
        Case(
            "backup",
            ("backup", "{export}", "--rmtab", "{live}"),
            "export/.rmtab",
            False,
            inputs=("nfs/rmtab",),
        ),
        Case(
            "restore",
            ("restore", "{export}", "--rmtab", "{live}"),
            "nfs/rmtab",
            True,
            live="old",
            backup="big",
            inputs=("export/.rmtab",),
        ),
        Case(
            "restore-replace",
            ("restore", "{export}", "--replace", "--rmtab", "{live}"),
            "nfs/rmtab",
            True,
            live="old",
            backup="big",
            inputs=("export/.rmtab",),
        ),
        Case("forget", ("forget", "--export", "{export}", "--rmtab", "{live}"), "nfs/rmtab", True),
        Case(
            "stats-prometheus",
            ("stats", "--prometheus", "{prom}", "--rmtab", "{live}"),
            "out/rmtab.prom",
            False,
            inputs=("nfs/rmtab",),
            timestamped=True,
        ),
    )
}
ALL = sorted(CASES)
#: commands that read the live rmtab (all but merge -o, which reads its sources only)
READS_LIVE = [n for n in ALL if CASES[n].reads_live]
#: commands whose target is the live rmtab itself (rewritten under mountd's lock)
LIVE_TARGET = [n for n in ALL if CASES[n].target == "nfs/rmtab"]
DIRS = ("nfs", "export", "out", "src")


def scenario_files(case: Case, root: Path, scale: Scale) -> dict[str, bytes]:
    """Every file of a scenario (relative path -> content); the export is root/export."""
    export = os.fsencode(root / "export")
    big = bloated(export, scale.distinct, scale.size, seed=1)
    small_old = b"".join(entry_lines(export, 7, seed=9))
    old_live = b"".join(entry_lines(export, max(scale.distinct // 8, 5), seed=5)) + b"\n"
    half = Scale(scale.distinct, scale.size // 2)
    return {
        "nfs/rmtab": big if case.live == "big" else old_live,
        "export/.rmtab": big if case.backup == "big" else small_old,
        "out/clean": small_old,
        "out/rmtab.prom": OLD_METRICS,
        "src/a": bloated(export, half.distinct, half.size, seed=2),
        "src/b": bloated(export, half.distinct, half.size, seed=3, rejects=False),
    }


def args_for(case: Case, root: Path, live: Optional[Path] = None) -> list[str]:
    where = {
        "live": live if live is not None else root / "nfs" / "rmtab",
        "export": root / "export",
        "out": root / "out" / "clean",
        "prom": root / "out" / "rmtab.prom",
        "a": root / "src" / "a",
        "b": root / "src" / "b",
    }
    return [a.format(**{k: str(v) for k, v in where.items()}) for a in case.args] + ["-q"]


def write_scenario(
    case: Case, root: Path, scale: Scale, view: Optional[Path] = None
) -> dict[str, bytes]:
    """Create the scenario's files under ``view`` (default: root) for a run at ``root``."""
    files = scenario_files(case, root, scale)
    base = view if view is not None else root
    for d in DIRS:
        (base / d).mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (base / rel).write_bytes(data)
    return files


# ---------------------------------------------------------------- observing the tree

#: names a run may create or change besides its target: locks, and its own temps
LOCK_NAMES = (".rmtab.lock",)
LOCK_SUFFIX = ".rmtabtool-lock"

FileId = tuple[str, int, int, int, int]


def is_lock(rel: str) -> bool:
    name = Path(rel).name
    return name in LOCK_NAMES or name.endswith(LOCK_SUFFIX)


def tree(root: Path) -> dict[str, FileId]:
    """Every file under ``root``: (kind, mode, uid, size, content hash or link target)."""
    out: dict[str, FileId] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                digest = int.from_bytes(hashlib.sha1(path.read_bytes()).digest()[:8], "big")
                out[rel] = ("file", st.st_mode, st.st_uid, st.st_size, digest)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", st.st_mode, st.st_uid, 0, hash(os.readlink(path)))
            else:
                out[rel] = ("other", st.st_mode, st.st_uid, 0, 0)
    return out


def temps_of(target: Path) -> set[Path]:
    pattern = temp_name_pattern(target)
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return set()
    return {target.parent / n for n in names if pattern.fullmatch(n)}


def changed_besides(
    before: dict[str, FileId], after: dict[str, FileId], allowed: Callable[[str], bool]
) -> list[str]:
    """Names whose presence or identity changed and that the run had no business with."""
    names = set(before) | set(after)
    return sorted(n for n in names if before.get(n) != after.get(n) and not allowed(n))


def allowed_for(case: Case, root: Path) -> Callable[[str], bool]:
    target = root / case.target
    pattern = temp_name_pattern(target)

    def allowed(rel: str) -> bool:
        name = Path(rel).name
        if rel == case.target or (case.in_place and rel == case.target + ".rejects"):
            return True
        if name in LOCK_NAMES or name.endswith(LOCK_SUFFIX):
            return True
        return Path(rel).parent == Path(case.target).parent and bool(pattern.fullmatch(name))

    return allowed


def check_rejects(path: Path, expected: set[bytes], *, complete: bool) -> None:
    """A rejects file holds whole lines, each a rejected line of the rewritten file;
    ``complete``: the file no longer holds them, so all must be here."""
    data = path.read_bytes() if path.exists() else b""
    if data:
        assert data.endswith(b"\n"), f"{path} ends in a partial line: {data[-60:]!r}"
    lines = set(data[:-1].split(b"\n")) if data else set()
    assert lines <= expected, f"{path} holds torn or foreign lines: {lines - expected}"
    if complete:
        assert lines == expected, f"rejected lines lost: {expected - lines}"


def rejected_in(data: bytes) -> set[bytes]:
    return {line for line in data.split(b"\n")[:-1] if line in REJECTED}


# ---------------------------------------------------------------- kill -9

_SYSCALLS_X86_64 = {
    0: "read",
    1: "write",
    3: "close",
    4: "stat",
    5: "fstat",
    7: "poll",
    72: "fcntl",
    73: "flock",
    74: "fsync",
    75: "fdatasync",
    82: "rename",
    87: "unlink",
    202: "futex",
    217: "getdents64",
    230: "clock_nanosleep",
    257: "openat",
    262: "newfstatat",
    263: "unlinkat",
    264: "renameat",
    316: "renameat2",
    35: "nanosleep",
    61: "wait4",
    9: "mmap",
    11: "munmap",
    12: "brk",
    232: "epoll_wait",
}


def open_files(pid: int) -> set[str]:
    """The paths the process has open right now."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return set()
    out = set()
    for name in names:
        try:
            out.add(os.readlink(os.path.join(fd_dir, name)))
        except OSError:
            continue
    return out


def syscall_of(pid: int) -> str:
    """What the process is doing right now: a syscall name, 'user' or '?'."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            first = f.read().split(" ", 1)[0].strip()
    except OSError:
        return "?"
    if first == "running":
        return "user"
    if first == "-1":  # blocked outside a syscall: stopped by the test's SIGSTOP
        return "stopped"
    if not first.lstrip("-").isdigit():
        return "?"
    number = int(first)
    if platform.machine() == "x86_64":
        return _SYSCALLS_X86_64.get(number, f"sys{number}")
    return f"sys{number}"


@dataclass
class KillStats:
    """What the kills hit: the state left behind and the syscall at the moment."""

    outcomes: Counter[str] = field(default_factory=Counter)
    syscalls: Counter[str] = field(default_factory=Counter)
    stale_cleaned: int = 0
    trials: int = 0

    def add(self, other: KillStats) -> None:
        self.outcomes.update(other.outcomes)
        self.syscalls.update(other.syscalls)
        self.stale_cleaned += other.stale_cleaned
        self.trials += other.trials


def _wait_for_temp(
    proc: subprocess.Popen[bytes],
    target: Path,
    known: set[Path],
    limit: float,
    *,
    freeze: bool = False,
) -> Optional[float]:
    """Poll until a new temp file of ``target`` appears; when (monotonic), or None.

    ``freeze``: SIGSTOP the process the moment the temp file is seen. A small
    output's temp file lives for well under a millisecond (stats --prometheus:
    write, fsync, rename), shorter than the inspection before a kill: stopping
    first is what lets such kills land inside that window at all.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if temps_of(target) - known:
            if freeze:
                proc.send_signal(signal.SIGSTOP)
            return time.monotonic()
        time.sleep(0.0001)
    return None


def _wait_for_open(proc: subprocess.Popen[bytes], paths: set[str], limit: float) -> None:
    """Poll until the process has one of ``paths`` open (or ends)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if open_files(proc.pid) & paths:
            return
        time.sleep(0.0002)


def _temp_lifetime(proc: subprocess.Popen[bytes], target: Path) -> float:
    """Seconds from the temp file's creation to its rename (polled)."""
    appeared = _wait_for_temp(proc, target, set(), 60)
    if appeared is None:  # created and renamed between two polls
        return 0.005
    while temps_of(target) and proc.poll() is None:
        time.sleep(0.0002)
    return time.monotonic() - appeared


def kill_trials(case: Case, root: Path, trials: int, seed: int) -> KillStats:
    """Run ``trials`` kill -9 trials of one command in its own directory ``root``."""
    files = write_scenario(case, root, BIG)
    target = root / case.target
    rejects = Path(f"{target}.rejects")
    old = files[case.target]
    same = case.comparable  # stats' metrics: every run has its own timestamp
    own_rejects = rejected_in(old)
    # what the command reads: an input open at the kill means it was reading
    read_paths = {str(root / rel) for rel in case.inputs}
    if case.in_place:
        read_paths.add(str(target))
    args = [*rmtabtool_command(), *args_for(case, root)]
    allowed = allowed_for(case, root)
    env = clean_env()

    # Calibration: one complete run gives the new content and the timings.
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    window = _temp_lifetime(proc, target)
    _, err = proc.communicate(timeout=60)
    full = time.monotonic() - start
    assert proc.returncode == 0, err
    new = same(target.read_bytes())
    assert new != same(old)
    if case.in_place:
        check_rejects(rejects, own_rejects, complete=True)
        rejects.unlink()
    lo = startup_seconds() * 0.9

    rng = random.Random(seed)
    stats = KillStats()
    for trial in range(trials):
        if target.read_bytes() != old:
            target.write_bytes(old)
        before = tree(root)
        known = temps_of(target)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        mode = trial % 3
        if mode == 0:  # anywhere once the command started: mostly reading
            time.sleep(rng.uniform(lo, full * 0.95))
        elif mode == 1:  # while the temp file exists: writing, fsync, locking, renaming
            if rng.random() < 0.5:  # at once (frozen: the inspection below takes no time)
                _wait_for_temp(proc, target, known, 60, freeze=True)
            else:
                _wait_for_temp(proc, target, known, 60)
                time.sleep(rng.uniform(0, window * 2))
        else:  # the moment an input is seen open: reading (timing-independent)
            _wait_for_open(proc, read_paths, 60)
        doing = syscall_of(proc.pid)
        reading = bool(open_files(proc.pid) & read_paths)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), (proc.returncode, err)

        content = same(target.read_bytes())
        assert content in (same(old), new), f"{case.name}: partial target ({len(content)} bytes)"
        after = tree(root)
        assert changed_besides(before, after, allowed) == [], case.name
        left = temps_of(target) - known
        assert len(left) <= 1, left
        stats.stale_cleaned += len(known - temps_of(target))
        if left:
            assert content == same(old), "a temp file outlived its rename"
            data = same(next(iter(left)).read_bytes())
            assert new.startswith(data), "the temp file holds something else than the new content"
            state = "temp-empty" if not data else "temp-partial" if data != new else "temp-complete"
        elif content == new:
            state = "after-rename" if proc.returncode else "completed"
        else:
            state = "before-temp:input-open" if reading else "before-temp:other"
        stats.outcomes[state] += 1
        if proc.returncode:
            stats.syscalls[doing] += 1
        if case.in_place:
            check_rejects(rejects, own_rejects, complete=content == new)
        stats.trials += 1

    # The next complete run removes every temp file the killed runs left.
    target.write_bytes(old)
    proc2 = subprocess.run(args, capture_output=True, env=env, timeout=60, check=False)
    assert proc2.returncode == 0, proc2.stderr
    assert same(target.read_bytes()) == new
    assert temps_of(target) == set(), "stale temp files survived a complete run"
    if case.in_place:
        check_rejects(rejects, own_rejects, complete=True)
    for rel in case.inputs:
        assert (root / rel).read_bytes() == files[rel], f"input {rel} changed"
    return stats


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_kill_9_at_random_moments_leaves_old_or_new(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    per_worker = -(-KILL_TRIALS // KILL_WORKERS)
    with ThreadPoolExecutor(KILL_WORKERS) as pool:
        futures = [
            pool.submit(
                kill_trials, case, tmp_path / f"w{i}", per_worker, seed=1000 * i + len(name)
            )
            for i in range(KILL_WORKERS)
        ]
        stats = KillStats()
        for future in futures:
            stats.add(future.result())
    print(
        f"\n{name}: {stats.trials} kills; outcomes {dict(stats.outcomes)}; "
        f"syscall at the kill {dict(stats.syscalls.most_common())}; "
        f"stale temps removed by a later killed run: {stats.stale_cleaned}"
    )
    assert stats.trials >= KILL_TRIALS
    # The kills really landed before, inside and after the window with a temp file.
    before = stats.outcomes["before-temp:input-open"] + stats.outcomes["before-temp:other"]
    assert before > 0, stats.outcomes
    assert sum(stats.outcomes[s] for s in ("temp-empty", "temp-partial", "temp-complete")) > 0
    assert stats.outcomes["after-rename"] + stats.outcomes["completed"] > 0, stats.outcomes


# ---------------------------------------------------------------- namespaces


def need_root_tools(*tools: str) -> None:
    if not IS_ROOT:
        pytest.skip("needs root (private mount namespaces, mounts, other uids)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


class TmpfsNamespace:
    """A tmpfs at ``mountpoint`` that exists only in a private mount namespace.

    The namespace is held by a waiting process; rmtabtool runs inside it through
    ``nsenter``, and the test reads and writes its files through
    ``/proc/<holder>/root`` (the same tree as seen from inside). Nothing is
    mounted in the test's own namespace; closing the holder drops everything.
    """

    def __init__(self, mountpoint: Path, size: str) -> None:
        need_root_tools("unshare", "nsenter", "mount")
        self.mountpoint = mountpoint
        script = 'mount -t tmpfs -o "size=$1,mode=0755" tmpfs "$2" && echo ready && exec cat'
        self.proc = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                size,
                str(mountpoint),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != b"ready\n":
            _, err = self.proc.communicate(timeout=10)
            pytest.skip(f"cannot mount a tmpfs in a private namespace: {err.decode().strip()}")

    def view(self, path: Path) -> Path:
        """``path`` as seen from inside the namespace (reachable from here)."""
        return Path(f"/proc/{self.proc.pid}/root") / path.relative_to("/")

    @property
    def enter(self) -> tuple[str, ...]:
        return ("nsenter", "--target", str(self.proc.pid), "--mount", "--")

    def remount_ro(self) -> None:
        subprocess.run(
            [*self.enter, "mount", "-o", "remount,ro", str(self.mountpoint)], check=True, timeout=10
        )

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.view(self.mountpoint))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def tmpfs_ns() -> Iterator[Callable[[Path, str], TmpfsNamespace]]:
    made: list[TmpfsNamespace] = []

    def make(mountpoint: Path, size: str) -> TmpfsNamespace:
        ns = TmpfsNamespace(mountpoint, size)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.close()


def written_dir(case: Case) -> str:
    """The directory a command writes in (where its target is)."""
    return str(Path(case.target).parent)


# ---------------------------------------------------------------- disk full


#: below every output of the MID scenario; the smallest is stats' metrics file
#: (about 10 KB with the shortest tmp_path, 20 KB with pytest's usual one)
EFBIG_LIMIT = 8 * 1024


def efbig_limit() -> None:
    """In the child: files may not grow past EFBIG_LIMIT; write() fails with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (EFBIG_LIMIT, EFBIG_LIMIT))


def assert_failed_cleanly(
    proc: subprocess.CompletedProcess[bytes],
    code: int,
    why: str,
    before: dict[str, FileId],
    after: dict[str, FileId],
    case: Case,
    root: Path,
) -> None:
    assert proc.returncode == code, (case.name, proc.returncode, proc.stderr)
    assert why in one_error_line(proc.stderr), proc.stderr
    # Nothing but lock files may differ: target intact, no temp, no rejects file.
    changed = changed_besides(before, after, is_lock)
    assert changed == [], f"{case.name}: {changed} changed"
    assert not [n for n in after if temp_name_pattern(root / case.target).fullmatch(Path(n).name)]


@pytest.mark.parametrize("name", ALL)
def test_efbig_exits_74_and_leaves_everything_intact(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    write_scenario(case, tmp_path, MID)
    before = tree(tmp_path)
    proc = run(args_for(case, tmp_path), preexec_fn=efbig_limit)
    assert_failed_cleanly(proc, 74, "File too large", before, tree(tmp_path), case, tmp_path)


@pytest.mark.root
@pytest.mark.parametrize("name", ALL)
def test_enospc_exits_74_and_leaves_everything_intact(
    tmp_path: Path, tmpfs_ns: Callable[[Path, str], TmpfsNamespace], name: str
) -> None:
    """The directory written in is a 1 MiB tmpfs, filled up to the last 8 KiB."""
    case = CASES[name]
    small = tmp_path / written_dir(case)
    small.mkdir()
    ns = tmpfs_ns(small, "1m")
    write_scenario(case, tmp_path, MID, view=ns.view(tmp_path))
    vfs = ns.statvfs()
    free = vfs.f_bavail * vfs.f_frsize
    (ns.view(small) / "filler").write_bytes(b"\0" * (free - 8192))
    before = tree(ns.view(tmp_path))
    proc = run(args_for(case, tmp_path), prefix=ns.enter)
    after = tree(ns.view(tmp_path))
    assert_failed_cleanly(
        proc, 74, "No space left on device", before, after, case, ns.view(tmp_path)
    )


# ---------------------------------------------------------------- read-only directory


@pytest.mark.root
@pytest.mark.parametrize("name", ALL)
def test_read_only_directory_exits_73(
    tmp_path: Path, tmpfs_ns: Callable[[Path, str], TmpfsNamespace], name: str
) -> None:
    case = CASES[name]
    ro = tmp_path / written_dir(case)
    ro.mkdir()
    ns = tmpfs_ns(ro, "8m")
    write_scenario(case, tmp_path, SMALL, view=ns.view(tmp_path))
    ns.remount_ro()
    before = tree(ns.view(tmp_path))
    proc = run(args_for(case, tmp_path), prefix=ns.enter)
    after = tree(ns.view(tmp_path))
    assert_failed_cleanly(proc, 73, "Read-only file system", before, after, case, ns.view(tmp_path))


# ---------------------------------------------------------------- permission denied

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 0x1000, 0x2000, 0x4000, 0x40000


def _check_c(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def hidden_ancestors(path: str) -> list[tuple[str, str]]:
    """(directory, child) pairs on the way to ``path`` that others cannot traverse."""
    parts = Path(os.path.realpath(path)).parts[1:]
    out = []
    current = "/"
    for i, part in enumerate(parts[:-1]):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            out.append((current, parts[i + 1]))
    return out


def become_nobody(spare: str) -> Callable[[], None]:
    """A preexec_fn: drop to uid/gid 65534 with no supplementary groups.

    The interpreter may live where nobody can reach it (a pyenv under /root, mode
    0700). Then, first, in a private mount namespace of the child only, each such
    directory is covered by a 0755 tmpfs holding just the one child on the way
    (bind-mounted back): the files under test keep their real permissions.
    """
    hidden = hidden_ancestors(sys.executable)

    def preexec() -> None:
        if hidden:
            _check_c(_libc.unshare(_CLONE_NEWNS), "unshare")
            _check_c(
                _libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None),
                "mount --make-rprivate",
            )
            for directory, child in hidden:
                inner = os.fsencode(os.path.join(directory, child))
                _check_c(_libc.mount(inner, spare.encode(), None, _MS_BIND | _MS_REC, None), "bind")
                _check_c(
                    _libc.mount(b"tmpfs", directory.encode(), b"tmpfs", 0, b"mode=0755"), "tmpfs"
                )
                os.mkdir(inner)
                _check_c(_libc.mount(spare.encode(), inner, None, _MS_MOVE, None), "move")
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    return preexec


@pytest.fixture
def public_root() -> Iterator[Path]:
    """A root-owned 0755 directory others can reach (pytest's tmp_path is 0700)."""
    top = Path(tempfile.mkdtemp(prefix="rmtabtool-faults-"))
    spare = top / ".spare"
    spare.mkdir()
    try:
        os.chmod(top, 0o755)
        yield top
    finally:
        shutil.rmtree(top)


@pytest.mark.root
@pytest.mark.parametrize("variant", ["unreadable-files", "unreadable-target-in-own-dir"])
@pytest.mark.parametrize("name", ALL)
def test_permission_denied_exits_77_as_nobody(public_root: Path, name: str, variant: str) -> None:
    """uid 65534 against root-owned files and directories.

    unreadable-files: every file root's 0600, every directory root's 0755 (nobody
    can neither read the inputs nor create anything). unreadable-target-in-own-dir:
    inputs readable (0644), but the target is root's 0600 in a directory nobody
    owns (it can take the lock and create a temp file, not read or replace the
    target with its owner kept).
    """
    need_root_tools()
    case = CASES[name]
    root = public_root / "t"
    write_scenario(case, root, SMALL)
    for d in (root, *(root / d for d in DIRS)):
        os.chmod(d, 0o755)
    for rel in scenario_files(case, root, SMALL):
        os.chmod(root / rel, 0o600 if variant == "unreadable-files" else 0o644)
    if variant == "unreadable-target-in-own-dir":
        os.chmod(root / case.target, 0o600)
        os.chown(root / written_dir(case), NOBODY, NOBODY)
    before = tree(root)
    proc = run(args_for(case, root), preexec_fn=become_nobody(str(public_root / ".spare")))
    after = tree(root)
    assert proc.returncode == 77, (proc.returncode, proc.stderr)
    one_error_line(proc.stderr)
    changed = changed_besides(before, after, is_lock)
    assert changed == [], changed
    assert temps_of(root / case.target) == set()


# ---------------------------------------------------------------- vanished target


def holding_mountd_lock(statedir: Path) -> int:
    """Take rpc.mountd's lock the way mountd does; returns the descriptor."""
    fd = os.open(statedir / ".rmtab.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    return fd


def wait_until_it_waits_for(proc: subprocess.Popen[bytes], lock: Path, limit: float = 30) -> None:
    """Until the process has ``lock`` open: it has read and built, and now polls for it."""
    deadline = time.monotonic() + limit
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            links = {os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)}
        except OSError:
            links = set()
        if str(lock) in links:
            time.sleep(0.05)  # let it fail a few polls
            return
        time.sleep(0.005)
    pytest.fail(f"rmtabtool never opened {lock}")


def expected_from_nothing(case: Case, root: Path, elsewhere: Path) -> bytes:
    """What ``case`` writes into a live rmtab that does not exist (run elsewhere)."""
    live = elsewhere / "rmtab"
    elsewhere.mkdir()
    proc = run(args_for(case, root, live=live))
    assert proc.returncode == 0, proc.stderr
    return live.read_bytes()


@pytest.mark.parametrize("name", READS_LIVE)
def test_live_rmtab_deleted_while_waiting_for_mountds_lock(tmp_path: Path, name: str) -> None:
    """The live rmtab disappears (an admin's rm, /var/lib/nfs unmounted) between
    rmtabtool's snapshot and its rename, while rmtabtool waits for mountd's lock.

    Defined behaviour: the rewrite starts over from what is there now, nothing.
    Commands that need the file (dedupe, forget, and backup, dedupe -o and
    stats --prometheus, which read it) exit 66 and write nothing; those that add
    to it (merge --into, restore) create it with exactly what they add. Never a partial file, never
    the deleted content brought back, never a temp file left.
    """
    case = CASES[name]
    root = tmp_path / "node"
    files = write_scenario(case, root, SMALL)
    live = root / "nfs" / "rmtab"
    creates = name.startswith(("merge", "restore"))
    expected = expected_from_nothing(case, root, tmp_path / "fresh") if creates else b""
    lock = root / "nfs" / ".rmtab.lock"
    fd = holding_mountd_lock(root / "nfs")
    try:
        proc = subprocess.Popen(
            [*rmtabtool_command(), *args_for(case, root), "--lock-timeout", "30"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        wait_until_it_waits_for(proc, lock)
        if case.target == "nfs/rmtab":  # it is about to rename: its temp file is complete
            assert len(temps_of(live)) == 1
        live.unlink()
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
    _, err = proc.communicate(timeout=60)
    assert temps_of(root / case.target) == set()
    if creates:
        assert proc.returncode == 0, err
        assert live.read_bytes() == expected
    else:
        assert proc.returncode == 66, err
        assert str(live) in one_error_line(err)
        assert not live.exists()
        if case.target != "nfs/rmtab":
            assert (root / case.target).read_bytes() == files[case.target]
    assert not Path(f"{live}.rejects").exists(), "rejected lines of a file that is gone"


# ---------------------------------------------------------------- not a regular file


@pytest.mark.parametrize("kind", ["directory", "fifo"])
@pytest.mark.parametrize("name", READS_LIVE)
def test_live_rmtab_replaced_by_a_directory_or_fifo_exits_66(
    tmp_path: Path, name: str, kind: str
) -> None:
    case = CASES[name]
    write_scenario(case, tmp_path, SMALL)
    live = tmp_path / "nfs" / "rmtab"
    live.unlink()
    if kind == "directory":
        live.mkdir()
    else:
        os.mkfifo(live)
    before = tree(tmp_path)
    proc = run(args_for(case, tmp_path), timeout=20)
    assert proc.returncode == 66, proc.stderr
    err = one_error_line(proc.stderr)
    assert str(live) in err
    assert ("directory" if kind == "directory" else "not a regular file") in err
    after = tree(tmp_path)
    assert changed_besides(before, after, is_lock) == []


#: (command, the path replaced, by what, exit code): every output path, and the
#: inputs that are not the live rmtab
OTHER_PATHS = [
    *(
        (name, CASES[name].target, kind, 73 if kind == "directory" else 66)
        for name in ("dedupe-o", "merge-o", "backup", "stats-prometheus")
        for kind in ("directory", "fifo")
    ),
    ("restore", "export/.rmtab", "directory", 66),  # the backup (restore's input)
    ("merge-o", "src/a", "directory", 66),  # a source (a FIFO is a legal source)
]


@pytest.mark.parametrize(("name", "victim", "kind", "code"), OTHER_PATHS)
def test_other_paths_replaced_by_a_directory_or_fifo(
    tmp_path: Path, name: str, victim: str, kind: str, code: int
) -> None:
    """exit-codes.md: 73 for an output that is a directory, 66 for an existing
    output that is a FIFO (the same for every output option: stats --prometheus
    once gave 73) and for an input that is not a regular file."""
    case = CASES[name]
    write_scenario(case, tmp_path, SMALL)
    path = tmp_path / victim
    path.unlink()
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    before = tree(tmp_path)
    proc = run(args_for(case, tmp_path), timeout=20)
    assert proc.returncode == code, proc.stderr
    err = one_error_line(proc.stderr)
    assert str(path) in err, err
    assert ("directory" if kind == "directory" else "not a regular file") in err
    after = tree(tmp_path)
    assert changed_besides(before, after, is_lock) == []

"""rmtabtool rewriting the live rmtab while rpc.mountd serves UMNT and MNT from many clients.

Several client processes (``mountproto.py`` run as a load generator, one per
loopback address: 127.0.0.2, ... and ``::1``) send paced UMNTs (and, with the
/proc shim, MNTs) while two loops run the INSTALLED ``rmtabtool`` over the same
rmtab (``merge --into``, ``dedupe --drop-zero``, ``forget``, ``restore
--replace``: every run changes the file, so every run renames a new file under
mountd's lock). Each client's calls are sequential, so the final file is
determined: the model says what it must hold, and it must hold exactly that
(every UMNT and MNT survived, no other entry lost or resurrected).

Per-request RPC latency is measured by the clients, first with rmtabtool idle,
then while it runs; the figures are printed (``pytest -s``) and bounded
generously. rmtabtool's own ``lock_hold_seconds`` are collected from its JSON.
strace shows both programs taking the same POSIX lock on ``.rmtab.lock``, and
/proc/locks shows mountd waiting on rmtabtool's lock on the same inode.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from .conftest import REQUIRE_ENV, Mountd, rmtabtool_command, rmtabtool_env

pytestmark = [pytest.mark.mountd, pytest.mark.root]

#: mountd's per-request latency must stay below this, rmtabtool running or not (s)
LATENCY_BOUND = 2.0
#: and rmtabtool may hold mountd's lock at most this long per run (s)
LOCK_HOLD_BOUND = 2.0
#: every wait in this file ends by then (s)
CALL_TIMEOUT = 60.0

WORKER = Path(__file__).with_name("mountproto.py")
_CANONICAL = re.compile(rb"([^:\n]+):(/[^:\n]*):0x([0-9a-f]{8})")

Key = tuple[bytes, bytes]
#: what a command does to the model (the part of it one loop manages)
Effect = Callable[[dict[Key, int]], None]


# ------------------------------------------------------------------------ model


def _key(client: str, path: bytes) -> Key:
    return (client.encode(), path)


def _parse_canonical(data: bytes) -> dict[Key, int]:
    """The file as {(client, path): count}; every line must be canonical and unique."""
    table: dict[Key, int] = {}
    for line in data.splitlines():
        match = _CANONICAL.fullmatch(line)
        assert match is not None, f"not a canonical rmtab line: {line!r}"
        key = (match[1].replace(b";", b":"), match[2])
        assert key not in table, f"duplicate line for {key!r}"
        table[key] = int(match[3], 16)
    assert data == b"" or data.endswith(b"\n")
    return table


def _render(table: dict[Key, int]) -> bytes:
    return b"".join(
        b"%s:%s:0x%08x\n" % (client.replace(b":", b";"), path, count)
        for (client, path), count in table.items()
    )


def _apply(table: dict[Key, int], client: str, call: str, path: bytes) -> None:
    """What mountd does to the model for one call of ``client``."""
    key = _key(client, path)
    if call == "mnt":
        table[key] = table.get(key, 0) + 1
    elif call == "umnt" and key in table:
        if table[key] > 1:
            table[key] -= 1
        else:
            del table[key]


# ------------------------------------------------------------------------ clients


@dataclass
class Figures:
    """Per-request latencies (s) of one phase, by call."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    starts: list[float] = field(default_factory=list)

    def add(self, name: str, began: float, seconds: float) -> None:
        self.latencies.setdefault(name, []).append(seconds)
        if name != "dump":
            self.starts.append(began)

    def all(self) -> list[float]:
        return [s for values in self.latencies.values() for s in values]

    def summary(self) -> str:
        parts = []
        for name, values in sorted(self.latencies.items()):
            ordered = sorted(values)
            p99 = ordered[int(0.99 * (len(ordered) - 1))]
            parts.append(
                f"{name} n={len(values)} median={statistics.median(values) * 1000:.2f}ms "
                f"p99={p99 * 1000:.2f}ms max={ordered[-1] * 1000:.2f}ms"
            )
        return "; ".join(parts)


def _start_client(
    m: Mountd,
    source: str,
    calls: Sequence[tuple[str, bytes]],
    *,
    start_at: float,
    spacing: float,
    deadline: float,
) -> subprocess.Popen[bytes]:
    spec = {
        "host": "::1" if ":" in source else "127.0.0.1",
        "port": m.port,
        "netns": m.netns,
        "source": source,
        "calls": [[name, path.hex()] for name, path in calls],
        "start_at": start_at,
        "deadline": deadline,
        "spacing": spacing,
        "timeout": 10.0,
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _collect(procs: Sequence[subprocess.Popen[bytes]], figures: Figures) -> list[str]:
    """Wait for the client processes; fold their timings into ``figures``; their errors."""
    errors: list[str] = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=CALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            errors.append(f"client process {proc.pid} did not finish in {CALL_TIMEOUT}s")
            continue
        if proc.returncode != 0:
            errors.append(f"client process failed: {err.decode(errors='replace')}")
            continue
        report = json.loads(out)
        errors += report["errors"]
        for name, began, seconds in report["calls"]:
            figures.add(name, began, seconds)
    return errors


# ------------------------------------------------------------------------ rmtabtool loops


@dataclass
class ToolRun:
    argv: list[str]
    started: float
    ended: float
    result: dict[str, Any]


class ToolLoop(threading.Thread):
    """Runs a cycle of rmtabtool commands on mountd's rmtab until told to stop.

    Each step is (arguments, effect): after a successful run, ``effect`` applies
    the command's meaning to ``managed``, this loop's own part of the model. The
    loops of one test manage disjoint keys, so their runs commute.
    """

    def __init__(self, m: Mountd, steps: list[tuple[list[str], Effect]], deadline: float) -> None:
        super().__init__(daemon=True)
        self.rmtab = str(m.rmtab)
        self.steps = steps
        self.deadline = deadline
        self.managed: dict[Key, int] = {}
        self.runs: list[ToolRun] = []
        self.stop = threading.Event()
        self.failure: Optional[str] = None

    def run(self) -> None:
        index = 0
        while not self.stop.is_set() and time.time() < self.deadline:
            args, effect = self.steps[index % len(self.steps)]
            index += 1
            argv = [*rmtabtool_command(), *args, "--rmtab", self.rmtab, "--json"]
            started = time.time()
            try:
                proc = subprocess.run(
                    argv, capture_output=True, timeout=CALL_TIMEOUT, env=rmtabtool_env()
                )
            except subprocess.TimeoutExpired:
                self.failure = f"{argv} did not finish in {CALL_TIMEOUT}s"
                return
            if proc.returncode != 0:
                self.failure = f"{argv} exited {proc.returncode}: {proc.stderr.decode()}"
                return
            result = json.loads(proc.stdout)
            self.runs.append(ToolRun(argv, started, time.time(), result))
            effect(self.managed)


def _flap_loop(m: Mountd, deadline: float) -> ToolLoop:
    """merge --into (adds a flapping mount and a count-0 line), dedupe --drop-zero, forget."""
    flap = (b"10.8.8.8", m.export + b"/flap")
    zero = (b"10.7.7.7", m.export)
    source = m.root / "flap.rmtab"
    source.write_bytes(_render({flap: 1, zero: 0}))

    def merged(t: dict[Key, int]) -> None:
        t.setdefault(flap, 1)
        t.setdefault(zero, 0)

    def deduped(t: dict[Key, int]) -> None:
        t.pop(zero, None)

    def forgotten(t: dict[Key, int]) -> None:
        t.pop(flap, None)

    return ToolLoop(
        m,
        [
            (["merge", str(source), "--into", str(m.rmtab)], merged),
            (["dedupe", "--drop-zero"], deduped),
            (["forget", "--client", "10.8.8.8"], forgotten),
        ],
        deadline,
    )


def _restore_loop(m: Mountd, deadline: float) -> ToolLoop:
    """restore --replace of another export from two backups in turn (a failover ping-pong)."""
    other = m.root / "other"
    other.mkdir()
    under = os.fsencode(other)
    node_a = {(b"10.9.9.9", under): 1, (b"fe80::9", under + b"/caf\xc3\xa9"): 1}
    node_b = {(b"10.9.9.9", under): 2}
    backups = []
    for name, table in (("a", node_a), ("b", node_b)):
        backup = m.root / f"other-{name}.rmtab"
        backup.write_bytes(_render(table))
        backups.append(str(backup))

    def became(table: dict[Key, int]) -> Effect:
        def effect(t: dict[Key, int]) -> None:
            t.clear()
            t.update(table)

        return effect

    return ToolLoop(
        m,
        [
            (["restore", str(other), "--from", backups[0], "--replace"], became(node_a)),
            (["restore", str(other), "--from", backups[1], "--replace"], became(node_b)),
        ],
        deadline,
    )


# ------------------------------------------------------------------------ scenario


Calls = dict[str, list[tuple[str, bytes]]]


@dataclass
class Outcome:
    idle: Figures
    busy: Figures
    runs: list[ToolRun]
    overlapped_runs: int

    def report(self, title: str) -> str:
        holds = sorted(r.result["lock_hold_seconds"] for r in self.runs)
        waits = sorted(r.result["lock_wait_seconds"] for r in self.runs)
        return (
            f"\n[{title}]\n"
            f"  mountd latency, rmtabtool idle:    {self.idle.summary()}\n"
            f"  mountd latency, rmtabtool running: {self.busy.summary()}\n"
            f"  rmtabtool runs: {len(self.runs)} ({self.overlapped_runs} with client calls "
            f"during the run); lock_hold_seconds median={statistics.median(holds) * 1000:.2f}ms "
            f"max={holds[-1] * 1000:.2f}ms; lock_wait_seconds max={waits[-1] * 1000:.1f}ms\n"
            f"  load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
        )


def _phase(m: Mountd, calls: Calls, seconds: float, figures: Figures) -> list[str]:
    """Run every client's calls, paced over ``seconds``, in one process per client."""
    start_at = time.time() + 0.3  # let every process start before the first call
    deadline = start_at + seconds * 3 + 10
    procs = [
        _start_client(
            m,
            source,
            seq,
            start_at=start_at,
            spacing=seconds / max(len(seq), 1),
            deadline=deadline,
        )
        for source, seq in calls.items()
    ]
    return _collect(procs, figures)


def _run_scenario(
    m: Mountd,
    initial: dict[Key, int],
    idle_calls: Calls,
    busy_calls: Calls,
    *,
    idle_seconds: float,
    busy_seconds: float,
) -> Outcome:
    """Idle phase, then the same clients while both rmtabtool loops run; check the model."""
    m.write_rmtab(_render(initial))
    model = dict(initial)
    for phase_calls in (idle_calls, busy_calls):
        for source, seq in phase_calls.items():
            for call, path in seq:
                _apply(model, source, call, path)

    idle = Figures()
    assert _phase(m, idle_calls, idle_seconds, idle) == []

    deadline = time.time() + busy_seconds * 3 + 20
    loops = [_flap_loop(m, deadline), _restore_loop(m, deadline)]
    for loop in loops:
        loop.start()
    busy = Figures()
    try:
        time.sleep(0.5)  # both loops are running rmtabtool by now
        errors = _phase(m, busy_calls, busy_seconds, busy)
    finally:
        for loop in loops:
            loop.stop.set()
        for loop in loops:
            loop.join(CALL_TIMEOUT)
    assert errors == []
    for loop in loops:
        assert not loop.is_alive()
        assert loop.failure is None, loop.failure
        model.update(loop.managed)
    runs = sorted((r for loop in loops for r in loop.runs), key=lambda r: r.started)

    # every rmtabtool run changed the file: each renamed a new one under mountd's lock
    assert all(r.result["changed"] for r in runs), [r.result for r in runs]
    overlapped = sum(1 for r in runs if any(r.started <= t <= r.ended for t in busy.starts))
    assert overlapped >= 2, f"too little overlap to prove anything ({overlapped} runs)"

    # every UMNT and MNT survived, nothing else was lost or came back
    data = m.read_rmtab()
    assert _parse_canonical(data) == model
    m.new_mtime_second()
    assert sorted(m.dump()) == sorted(model)
    return Outcome(idle, busy, runs, overlapped)


def _assert_bounds(outcome: Outcome) -> None:
    assert max(outcome.idle.all()) < LATENCY_BOUND
    assert max(outcome.busy.all()) < LATENCY_BOUND
    assert max(r.result["lock_hold_seconds"] for r in outcome.runs) < LOCK_HOLD_BOUND


def _static_population(export: bytes, count: int) -> dict[Key, int]:
    """Mounts of clients that never call during the test (a big server's file)."""
    table = {
        (b"10.1.%d.%d" % (i // 250, i % 250 + 1), export + (b"/a" if i % 3 else b"")): i % 3 + 1
        for i in range(count)
    }
    table[(b"fe80::1", export + b"/a")] = 1
    table[(b"2001:db8::5%eth0", export + b"/caf\xc3\xa9-\xff")] = 1
    table[(b"10.0.0.2", b"/srv/elsewhere")] = 7
    return table


def _mkdirs(m: Mountd, *names: bytes) -> None:
    for name in names:
        os.mkdir(m.export + b"/" + name)


def test_umnts_from_many_clients_all_survive_rmtabtool_rewriting_in_a_loop(
    mountd: Mountd,
) -> None:
    export = mountd.export
    a, b, odd = export + b"/a", export + b"/b", export + b"/caf\xc3\xa9-\xff"
    _mkdirs(mountd, b"a", b"b", b"caf\xc3\xa9-\xff")
    clients = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "::1"]
    initial = _static_population(export, 2000)
    for client in clients:
        counts = {export: 40, a: 25, b: 3, odd: 10}
        initial.update({_key(client, path): n for path, n in counts.items()})
    idle: Calls = {c: [("umnt", export)] * 10 for c in clients}
    busy: Calls = {}
    for client in clients:
        seq = [("umnt", export)] * 20 + [("umnt", a)] * 25 + [("umnt", b)] * 3 + [("umnt", odd)] * 6
        random.Random(client).shuffle(seq)
        busy[client] = seq
    # a reader too: DUMP takes mountd's shared lock, and must keep answering
    idle["127.0.0.1"] = [("dump", b"")] * 5
    busy["127.0.0.1"] = [("dump", b"")] * 20

    outcome = _run_scenario(mountd, initial, idle, busy, idle_seconds=2.5, busy_seconds=12.0)

    print(outcome.report(f"UMNT x{6 * 64}, {len(initial)}-line rmtab"))
    final = _parse_canonical(mountd.read_rmtab())
    for client in clients:  # the UMNTs themselves, spelled out
        assert final[_key(client, export)] == 10
        assert _key(client, a) not in final
        assert _key(client, b) not in final
        assert final[_key(client, odd)] == 4
    _assert_bounds(outcome)


def test_mnts_and_umnts_all_survive_rmtabtool_rewriting_in_a_loop(mountd_mnt: Mountd) -> None:
    m = mountd_mnt
    export = m.export
    a = export + b"/a"
    clients = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1"]
    _mkdirs(m, b"a", *(b"new-%d" % i for i in range(len(clients))))
    initial = _static_population(export, 500)
    for client in clients:
        initial.update({_key(client, export): 5, _key(client, a): 2})
    idle: Calls = {c: [("mnt", export), ("umnt", export)] * 5 for c in clients}
    busy: Calls = {}
    for i, client in enumerate(clients):
        fresh = export + b"/new-%d" % i  # MNT appends its line; a UMNT drops it again
        seq = [("mnt", export), ("mnt", export), ("umnt", export)] * 12
        seq += [("mnt", fresh), ("umnt", a), ("umnt", a), ("mnt", fresh), ("umnt", fresh)]
        random.Random(client).shuffle(seq)
        busy[client] = seq

    outcome = _run_scenario(m, initial, idle, busy, idle_seconds=2.0, busy_seconds=8.0)

    print(outcome.report(f"MNT+UMNT x{4 * 41}, {len(initial)}-line rmtab, /proc shim"))
    final = _parse_canonical(m.read_rmtab())
    for client in clients:
        assert final[_key(client, export)] == 5 + 12
        assert _key(client, a) not in final
    _assert_bounds(outcome)


# ------------------------------------------------------------------------ the same lock


def _require_strace() -> str:
    found = shutil.which("strace")
    if found is not None:
        return found
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"strace not found ({REQUIRE_ENV}=1 demands it)", pytrace=False)
    pytest.skip("strace not found")


def _posix_locks(dev: int, ino: int) -> list[str]:
    """/proc/locks lines of POSIX locks (held, or waited for: '->') on one inode."""
    where = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino} "
    with open("/proc/locks", encoding="ascii") as locks:
        return [line.strip() for line in locks if "POSIX" in line and where in line]


def _wait_for(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.002)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def _strace_attached(strace: str, pid: int, out: Path, m: Mountd) -> Iterator[None]:
    """strace -p PID (fcntl calls, with their duration) for the body; attached before."""
    proc = subprocess.Popen(
        [strace, "-f", "-y", "-tt", "-T", "-e", "trace=fcntl", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # mountd fcntl()s every new connection's socket: once strace shows one, it is on
        def traced() -> bool:
            with m.client() as c:
                c.null()
            return out.exists() and b"socket:" in out.read_bytes()

        _wait_for("strace to attach to rpc.mountd", traced, 10.0)
        yield
    finally:
        proc.terminate()  # strace detaches on SIGTERM; mountd carries on
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_strace_rmtabtool_and_mountd_take_the_same_fcntl_lock_on_rmtab_lock(
    mountd: Mountd,
) -> None:
    """rmtabtool's rename is held back 3 s by strace (-e inject=...:delay_enter),
    under mountd's lock: a UMNT sent meanwhile waits for it. strace shows both
    programs' fcntl() calls on .rmtab.lock, /proc/locks the holder and the waiter
    on one inode."""
    strace = _require_strace()
    export = mountd.export
    mountd.write_rmtab(
        b"127.0.0.2:%(E)s:0x00000001\n10.0.0.1:%(E)s:1\n10.0.0.1:%(E)s:0x00000002\n"
        % {b"E": export}
    )
    lock_path = os.fsdecode(mountd.lockfile)
    mountd_trace = mountd.root / "mountd.strace"
    tool_trace = mountd.root / "rmtabtool.strace"
    with _strace_attached(strace, mountd.pid, mountd_trace, mountd):
        mountd.dump()  # DUMP: mountd's shared lock
        lock_stat = os.stat(mountd.lockfile)  # .rmtab.lock exists from mountd's first lock
        tool = subprocess.Popen(
            [
                strace,
                "-f",
                "-y",
                "-tt",
                "-e",
                "trace=fcntl,rename,renameat,renameat2",
                "-e",
                "inject=rename,renameat,renameat2:delay_enter=3000000",
                "-o",
                str(tool_trace),
                *rmtabtool_command(),
                "dedupe",
                "--rmtab",
                str(mountd.rmtab),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=rmtabtool_env(),
        )
        try:
            held = _wait_for(
                "rmtabtool to take mountd's lock",
                lambda: _posix_locks(lock_stat.st_dev, lock_stat.st_ino),
                30.0,
            )
            umnt_done = threading.Event()

            def umnt_from_client() -> None:
                mountd.umnt(export, source="127.0.0.2")
                umnt_done.set()

            t0 = time.monotonic()
            umnt = threading.Thread(target=umnt_from_client, daemon=True)
            umnt.start()
            both = _wait_for(
                "rpc.mountd to wait for that lock",
                lambda: (
                    [
                        line
                        for line in _posix_locks(lock_stat.st_dev, lock_stat.st_ino)
                        if line.split()[1] == "->"
                    ]
                    and _posix_locks(lock_stat.st_dev, lock_stat.st_ino)
                ),
                5.0,
            )
            umnt.join(10.0)
            waited = time.monotonic() - t0
            out, err = tool.communicate(timeout=CALL_TIMEOUT)
        finally:
            if tool.poll() is None:
                tool.kill()
                tool.wait()
    assert umnt_done.is_set()
    assert tool.returncode == 0, err.decode(errors="replace")
    result = json.loads(out)
    assert os.stat(mountd.lockfile).st_ino == lock_stat.st_ino  # one inode throughout

    # /proc/locks: rmtabtool holds a POSIX write lock, mountd waits ('->') on the same inode
    holder = [line for line in both if line.split()[1] != "->"]
    waiter = [line for line in both if line.split()[1] == "->"]
    assert len(holder) == 1, both
    assert len(waiter) == 1, both
    assert holder[0].split()[1:4] == ["POSIX", "ADVISORY", "WRITE"]
    assert waiter[0].split()[2:5] == ["POSIX", "ADVISORY", "WRITE"]
    assert int(waiter[0].split()[5]) == mountd.pid
    tool_pid = int(holder[0].split()[4])
    assert held[0].split()[4] == str(tool_pid)

    # strace: the same fcntl() on the same path, whole file, write lock
    whole = r"\{l_type=F_WRLCK, l_whence=SEEK_SET, l_start=0, l_len=0\}"
    mountd_lines = [
        line
        for line in mountd_trace.read_text(errors="replace").splitlines()
        if re.search(rf"fcntl\(\d+<{re.escape(lock_path)}>, F_SETLKW, {whole}", line)
    ]
    mountd_read = [
        line
        for line in mountd_trace.read_text(errors="replace").splitlines()
        if f"<{lock_path}>, F_SETLKW, {{l_type=F_RDLCK" in line
    ]
    tool_lines = [
        line
        for line in tool_trace.read_text(errors="replace").splitlines()
        if re.search(rf"fcntl\(\d+<{re.escape(lock_path)}>, F_SETLK, {whole}\) = 0", line)
    ]
    assert mountd_lines, mountd_trace.read_text(errors="replace")
    assert mountd_read  # the DUMP
    assert tool_lines, tool_trace.read_text(errors="replace")
    assert all(line.startswith(f"{tool_pid} ") for line in tool_lines)
    assert any("(DELAYED)" in line for line in tool_trace.read_text().splitlines())

    # mountd waited as long as rmtabtool held its lock (the delayed rename), then
    # its UMNT landed on rmtabtool's new file
    assert waited > 1.0
    assert result["lock_hold_seconds"] > 1.0
    blocked = [line for line in mountd_lines if float(line.rsplit("<", 1)[1].rstrip(">")) > 1.0]
    assert len(blocked) == 1  # the UMNT's F_SETLKW, which returned when rmtabtool let go
    assert mountd.read_rmtab() == b"10.0.0.1:%s:0x00000002\n" % export
    print(
        f"\n[same lock] .rmtab.lock dev {os.major(lock_stat.st_dev):02x}:"
        f"{os.minor(lock_stat.st_dev):02x} inode {lock_stat.st_ino}\n"
        f"  /proc/locks: {holder[0]}\n  /proc/locks: {waiter[0]}\n"
        f"  rpc.mountd ({mountd.pid}): {blocked[0]}\n"
        f"  rpc.mountd ({mountd.pid}): {mountd_read[0]}\n"
        f"  rmtabtool ({tool_pid}): {tool_lines[0]}\n"
        f"  UMNT waited {waited:.3f}s; rmtabtool lock_hold_seconds {result['lock_hold_seconds']}"
    )

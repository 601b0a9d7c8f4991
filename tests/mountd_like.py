"""A stand-in for rpc.mountd's rmtab writer, for tests that need mountd's protocol.

It follows nfs-utils (``utils/mountd/rmtab.c``, ``support/nfs/rmtab.c``,
``support/nfs/xio.c``) as summarised in the project's rmtab reference:

* lock: ``open(<statedir>/.rmtab.lock, O_RDWR|O_CREAT, 0600)`` and a POSIX write
  lock over the whole file (``F_SETLKW``: waits forever), the descriptor closed
  afterwards (``xflock``/``xfunlock``); DUMP takes a read lock;
* MNT (``mountlist_add``): scan with mountd's parser; the FIRST matching line gets
  its count bumped, rewritten in place at its offset with a full-width record;
  no match: append ``client:path:0x00000001``;
* UMNT (``mountlist_del``): re-read, decrement EVERY matching line, drop those
  reaching 0, write the survivors canonically to ``<statedir>/rmtab.tmp``, rename
  it over rmtab (a symlinked rmtab: over the link's target), and only then flush
  the last stdio buffer (mountd closes the temp file after the rename).

Run as a program it serves the tests' other processes::

    python mountd_like.py mnt|umnt STATEDIR CLIENT PATH [--nonblock] [--gap S] [--hold]
        (umnt --hold: prints "renamed" once the file is renamed into place and
        writes its tail only when stdin closes: a gap of the caller's choosing)
    python mountd_like.py worker STATEDIR WORKER_ID SEED OPS [--gap S] [--pause S] [--stop FILE]
        (prints "started" after its first op, and how many ops it did at the end)
    python mountd_like.py hold LOCKFILE lockf-ex|lockf-sh|flock-ex
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import os
import pickle
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Optional

LOCK_NAME = ".rmtab.lock"
RMTAB_NAME = "rmtab"
TMP_NAME = "rmtab.tmp"

_FGETS_MAX = 2046  # fgets(buf, sizeof(buf) - 1) with a 2048-byte buffer
_ID_MAX = 1024  # r_client / r_path are cut to this many characters
_STDIO_BUFSIZ = 4096  # stdio flushes whole buffers of this size before fclose

_CANONICAL_COUNT = re.compile(rb"0x[0-9a-f]{8}")

Key = tuple[bytes, bytes]
Op = tuple[str, bytes, bytes]


def strtol0(text: bytes) -> int:
    """``strtol(text, NULL, 0)`` stored in a C ``int`` and printed with ``%x``."""
    if _CANONICAL_COUNT.fullmatch(text):  # what mountd itself writes: the fast path
        return int(text[2:], 16)
    s = text.lstrip(b" \t\n\r\v\f")
    sign = 1
    if s[:1] in (b"+", b"-"):
        sign = -1 if s[:1] == b"-" else 1
        s = s[1:]
    if s[:2].lower() == b"0x" and s[2:3] and s[2:3] in b"0123456789abcdefABCDEF":
        base, s = 16, s[2:]
    elif s[:1] == b"0":
        base = 8
    else:
        base = 10
    digits = b"0123456789abcdef"[:base]
    n = 0
    for ch in s.lower():
        d = digits.find(bytes([ch]))
        if d < 0:
            break
        n = n * base + d
    value = max(min(sign * n, 2**63 - 1), -(2**63))  # long, clamped like strtol
    return value & 0xFFFFFFFF  # the low 32 bits end up in r_count


def parse(data: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
    """mountd's ``fgetrmtabent`` over a whole file: (client, path, count, offset).

    Stops at the first piece without a ':' (a blank line included), like mountd.
    """
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos, pos + _FGETS_MAX)
        if nl < 0:
            end = min(pos + _FGETS_MAX, len(data))
            line, nxt = data[pos:end], end
        else:
            line, nxt = data[pos:nl], nl + 1
        line = line.split(b"\0", 1)[0]
        client, sep, rest = line.partition(b":")
        if not sep:
            return
        path, sep, count_field = rest.partition(b":")
        count = strtol0(count_field) if sep else 1
        yield client[:_ID_MAX], path[:_ID_MAX], count, pos
        pos = nxt


def record(client: bytes, path: bytes, count: int) -> bytes:
    return b"%s:%s:0x%08x\n" % (client, path, count & 0xFFFFFFFF)


def _lock(statedir: Path, *, exclusive: bool, blocking: bool) -> Optional[int]:
    fd = os.open(statedir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.lockf(fd, op if blocking else op | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def mnt(statedir: Path, client: bytes, path: bytes, *, blocking: bool = True) -> bool:
    """MNT: bump the first matching line in place, or append. False: lock busy."""
    fd = _lock(statedir, exclusive=True, blocking=blocking)
    if fd is None:
        return False
    try:
        rmtab = statedir / RMTAB_NAME
        data = _read(rmtab)
        for c, p, count, offset in parse(data):
            if c == client and p == path:
                with open(rmtab, "r+b") as f:
                    f.seek(offset)
                    f.write(record(c, p, count + 1))
                return True
        with open(rmtab, "ab") as f:
            f.write(record(client, path, 1))
        return True
    finally:
        os.close(fd)  # closing the descriptor drops the POSIX lock


def umnt(
    statedir: Path,
    client: bytes,
    path: bytes,
    *,
    blocking: bool = True,
    gap: float = 0.0,
    in_gap: Optional[Callable[[], object]] = None,
) -> bool:
    """UMNT: decrement every matching line, drop at 0, rewrite via rmtab.tmp + rename.

    The part of the data past the last whole stdio buffer is written after the
    rename (``gap`` seconds later, or once ``in_gap()`` returns), as mountd's
    fclose() does.
    """
    fd = _lock(statedir, exclusive=True, blocking=blocking)
    if fd is None:
        return False
    try:
        rmtab = statedir / RMTAB_NAME
        if not rmtab.exists():
            return True  # mountd's setrmtabent("r") fails: nothing to do
        out = []
        for c, p, count, _ in parse(_read(rmtab)):
            if c == client and p == path:
                count = (count - 1) & 0xFFFFFFFF
                if count == 0:
                    continue
            out.append(record(c, p, count))
        data = b"".join(out)
        cut = len(data) - len(data) % _STDIO_BUFSIZ
        tmp = statedir / TMP_NAME
        with open(tmp, "wb") as f:
            f.write(data[:cut])
            f.flush()
            target = os.readlink(rmtab) if rmtab.is_symlink() else rmtab  # slink_safe_rename
            os.rename(tmp, target)
            if gap:
                time.sleep(gap)
            if in_gap is not None:
                in_gap()
            f.write(data[cut:])
        return True
    finally:
        os.close(fd)


def dump(statedir: Path) -> list[tuple[bytes, bytes, int]]:
    """DUMP: read under the shared lock."""
    fd = _lock(statedir, exclusive=False, blocking=True)
    assert fd is not None
    try:
        return [(c, p, n) for c, p, n, _ in parse(_read(statedir / RMTAB_NAME))]
    finally:
        os.close(fd)


# ---------------------------------------------------------------- workload + model


def worker_keys(worker: int) -> list[Key]:
    """The (client, path) keys one worker owns: no two workers share a key."""
    clients = [b"10.%d.0.%d" % (worker, k) for k in range(1, 5)]
    paths = [b"/srv/a", b"/srv/b/sub"]
    return [(c, p) for c in clients for p in paths]


def iter_plan(worker: int, seed: int) -> Iterator[Op]:
    """The op sequence a worker runs: fixed by (worker, seed), whatever the file says."""
    rng = random.Random(seed * 1000 + worker)
    keys = worker_keys(worker)
    while True:
        client, path = rng.choice(keys)
        yield ("mnt" if rng.random() < 0.6 else "umnt", client, path)


def plan(worker: int, seed: int, n: int) -> list[Op]:
    """The first ``n`` ops of :func:`iter_plan`."""
    return list(itertools.islice(iter_plan(worker, seed), n))


def model(initial: dict[Key, int], ops: Sequence[Op]) -> dict[Key, int]:
    """What mountd's MNT/UMNT do to the counts, applied in order."""
    counts = dict(initial)
    for op, client, path in ops:
        key = (client, path)
        if op == "mnt":
            counts[key] = counts.get(key, 0) + 1
        elif key in counts:
            counts[key] -= 1
            if counts[key] == 0:
                del counts[key]
    return counts


def run_worker(
    statedir: Path,
    worker: int,
    seed: int,
    n: int,
    *,
    gap: float = 0.0,
    pause: float = 0.0,
    stop: Optional[Path] = None,
    on_first: Optional[Callable[[], object]] = None,
) -> int:
    """Run the first ops of ``plan(worker, seed, n)``; return how many ran.

    Stops early once ``stop`` exists (the plan's prefix is what was done, so the
    model stays exact). ``pause``: up to that many seconds between ops, like a
    real client stream, leaving mountd's lock free most of the time.
    ``on_first`` runs once the first op is done.
    """
    pauses = random.Random(seed * 1000 + worker + 1)
    done = 0
    for op, client, path in itertools.islice(iter_plan(worker, seed), n):
        if stop is not None and stop.exists():
            break
        if op == "mnt":
            mnt(statedir, client, path)
        else:
            umnt(statedir, client, path, gap=gap)
        done += 1
        if done == 1 and on_first is not None:
            on_first()
        if pause:
            time.sleep(pauses.uniform(0, pause))
    return done


# ---------------------------------------------------------------- processes

HERE = Path(__file__).resolve().parent


def command(*args: str) -> list[str]:
    """argv that runs this module as a program in a fresh interpreter."""
    return [sys.executable, str(HERE / "mountd_like.py"), *args]


@contextlib.contextmanager
def holding(lockfile: Path, how: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holds ``how`` (lockf-ex, lockf-sh, flock-ex) on ``lockfile``."""
    proc = subprocess.Popen(
        command("hold", str(lockfile), how),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def in_child(fn: Callable[[], object]) -> tuple[int, object]:
    """Run ``fn`` in a forked child; return (exit status, its result or its exception).

    The exception comes back as ``(type name, str(exc))``. Lets a test change
    process-wide things (rlimits, uid, signal handlers) without touching pytest.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(rfd)
        try:
            try:
                payload: object = ("ok", fn())
            except BaseException as exc:
                payload = ("raised", (type(exc).__name__, str(exc)))
            with os.fdopen(wfd, "wb") as out:
                pickle.dump(payload, out)
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if not data:
        return code, None
    kind, value = pickle.loads(data)
    return code, value if kind == "ok" else RaisedInChild(*value)


class RaisedInChild:
    """What :func:`in_child` returns when ``fn`` raised."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = message

    def __repr__(self) -> str:
        return f"RaisedInChild({self.name}: {self.message})"


# ---------------------------------------------------------------- holder


def hold(lockfile: Path, how: str) -> None:
    """Take a lock on ``lockfile``, say ``locked``, hold it until stdin closes."""
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if how == "lockf-ex":
        fcntl.lockf(fd, fcntl.LOCK_EX)
    elif how == "lockf-sh":
        fcntl.lockf(fd, fcntl.LOCK_SH)
    elif how == "flock-ex":
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        raise SystemExit(f"unknown lock kind {how}")
    sys.stdout.write("locked\n")
    sys.stdout.flush()
    sys.stdin.read()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mountd_like")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("mnt", "umnt"):
        p = sub.add_parser(name)
        p.add_argument("statedir", type=Path)
        p.add_argument("client")
        p.add_argument("path")
        p.add_argument("--nonblock", action="store_true")
        p.add_argument("--gap", type=float, default=0.0)
        p.add_argument(
            "--hold",
            action="store_true",
            help="umnt: after the rename say 'renamed' and write the tail once stdin closes",
        )
    w = sub.add_parser("worker")
    w.add_argument("statedir", type=Path)
    w.add_argument("worker", type=int)
    w.add_argument("seed", type=int)
    w.add_argument("ops", type=int)
    w.add_argument("--gap", type=float, default=0.0)
    w.add_argument("--pause", type=float, default=0.0)
    w.add_argument("--stop", type=Path, default=None)
    h = sub.add_parser("hold")
    h.add_argument("lockfile", type=Path)
    h.add_argument("how", choices=["lockf-ex", "lockf-sh", "flock-ex"])
    args = parser.parse_args(argv)

    if args.cmd == "worker":

        def started() -> None:
            sys.stdout.write("started\n")
            sys.stdout.flush()

        done = run_worker(
            args.statedir,
            args.worker,
            args.seed,
            args.ops,
            gap=args.gap,
            pause=args.pause,
            stop=args.stop,
            on_first=started,
        )
        sys.stdout.write(f"{done}\n")
        return 0
    if args.cmd == "hold":
        hold(args.lockfile, args.how)
        return 0
    client, path = os.fsencode(args.client), os.fsencode(args.path)

    def hold_gap() -> None:
        sys.stdout.write("renamed\n")
        sys.stdout.flush()
        sys.stdin.read()

    if args.cmd == "mnt":
        done = mnt(args.statedir, client, path, blocking=not args.nonblock)
    else:
        done = umnt(
            args.statedir,
            client,
            path,
            blocking=not args.nonblock,
            gap=args.gap,
            in_gap=hold_gap if args.hold else None,
        )
    return 0 if done else 3  # 3: the lock was busy (--nonblock)


if __name__ == "__main__":
    sys.exit(main())

"""Fixtures that run the real rpc.mountd (nfs-utils) on a private loopback.

Each test gets its own daemons, isolated from the host:

* a "holder" process made by ``unshare --mount --net --propagation private``
  owns a private mount namespace and a private network namespace. In it: ``lo``
  is brought up; a tmpfs covers ``/run`` (rpcbind's socket, lock and warm-start
  files stay out of the host's /run); a private ``exports`` file and an empty
  ``nfs.conf`` are bind-mounted over ``/etc/exports`` and ``/etc/nfs.conf``
  (empty tmpfs over ``/etc/exports.d`` and ``/etc/nfs.conf.d`` if they exist);
  the test's state directory is bind-mounted over ``/var/lib/nfs``; then
  ``exportfs -ra`` builds the state directory's ``etab`` from the private
  exports file. The host's /etc, /var/lib/nfs and /run are never written.
* ``rpcbind -f`` and ``rpc.mountd -F -N 4 -d all -p PORT -s STATEDIR`` are
  started in those namespaces with ``nsenter``; their PIDs are the daemons'.
  Because the network namespace is private, port 111 never clashes with a host
  rpcbind or with another test run, and nothing listens on the host's network.
* readiness: rpcbind answers NULL before mountd starts (mountd registers once,
  at start-up); then mountd answers NULL on the namespace's 127.0.0.1 and
  rpcbind maps MOUNT v3/TCP to its port; then one EXPORT (mountd loads its
  export table lazily and ignores UMNT until it has).
* teardown (also when the test failed): SIGTERM mountd, then rpcbind, by PID,
  then "stop" to the holder's stdin; SIGKILL after a bounded wait; then check
  that no process is left in the private network namespace. If pytest itself is
  killed, mountd gets SIGTERM from the kernel (parent-death signal) and the
  holder, on EOF, TERMs whatever is left in its namespace (rpcbind).

The ``mountd_mnt`` variant adds the shim from shared/rmtab-reference.md so that
MNT reaches mountd's ``mountlist_add`` without kernel NFS: a tmpfs on
``/proc/fs/nfsd`` with ``filehandle`` as a FIFO before mountd starts, and a tmpfs
on ``/proc/<mountd>/net`` with empty ``rpc/*/channel`` files after it started.

Prerequisites: root, rpc.mountd, rpcbind, exportfs, unshare, nsenter, ip. When
one is missing the tests skip with the reason, or FAIL when the environment has
``RMTABTOOL_REQUIRE_MOUNTD=1`` (CI). ``RMTABTOOL_RPC_MOUNTD``,
``RMTABTOOL_RPCBIND`` and ``RMTABTOOL_EXPORTFS`` point at other binaries;
``RMTABTOOL_INTEROP_AS_NONROOT=1`` pretends not to be root (to test the skip).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Optional

import cliutil
import pytest

from .mountproto import MOUNT_PROGRAM, PMAP_PORT, PMAP_PROGRAM, MountClient, getport, in_netns

REQUIRE_ENV = "RMTABTOOL_REQUIRE_MOUNTD"
NONROOT_ENV = "RMTABTOOL_INTEROP_AS_NONROOT"

#: bounds for every wait in the harness (seconds)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
#: RLIMIT_STACK for the daemons (see _daemon_preexec)
DAEMON_STACK = 8 * 1024 * 1024

_EXPORT_OPTIONS = "rw,insecure,no_subtree_check,no_root_squash"


def _tool(env: str, name: str) -> Optional[str]:
    override = os.environ.get(env)
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def missing_prerequisites() -> list[str]:
    """Why the real-daemon tests cannot run here (empty when they can)."""
    missing = []
    if os.geteuid() != 0 or os.environ.get(NONROOT_ENV) == "1":
        missing.append("not root (namespaces, mounts and rpc.mountd need root)")
    tools = {
        "rpc.mountd (nfs-kernel-server)": _tool("RMTABTOOL_RPC_MOUNTD", "rpc.mountd"),
        "rpcbind": _tool("RMTABTOOL_RPCBIND", "rpcbind"),
        "exportfs (nfs-kernel-server)": _tool("RMTABTOOL_EXPORTFS", "exportfs"),
        "unshare (util-linux)": shutil.which("unshare"),
        "nsenter (util-linux)": shutil.which("nsenter"),
        "ip (iproute2)": _tool("RMTABTOOL_IP", "ip"),
    }
    missing += [f"{name} not found" for name, path in tools.items() if path is None]
    if not Path("/etc/exports").is_file():
        missing.append("/etc/exports missing (a private one is bind-mounted over it)")
    return missing


def _require_prerequisites() -> None:
    missing = missing_prerequisites()
    if not missing:
        return
    reason = "real rpc.mountd not available: " + "; ".join(missing)
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 demands it)", pytrace=False)
    pytest.skip(reason)


class Mountd:
    """A running rpc.mountd (+ rpcbind) in private namespaces; see the module docstring.

    Attributes: ``port`` (mountd's TCP/UDP port on the namespace's 127.0.0.1),
    ``statedir`` (its ``-s``), ``rmtab`` (``statedir/rmtab``, created empty),
    ``lockfile`` (``statedir/.rmtab.lock``), ``export_dir`` (exported ``insecure``
    to ``*``; ``export`` is the same path as bytes), ``log`` (mountd's ``-d all``
    output), ``pid`` and ``rpcbind_pid``, ``holder_pid`` (owns the namespaces),
    ``netns`` (path of the network namespace), ``mnt_shim`` (MNT works),
    ``startup_seconds`` (from unshare to NULL + EXPORT answered).
    """

    def __init__(self, root: Path, *, mnt_shim: bool) -> None:
        self.root = root
        self.statedir = root / "state"
        self.rmtab = self.statedir / "rmtab"
        self.lockfile = self.statedir / ".rmtab.lock"
        self.export_dir = root / "export"
        self.export = os.fsencode(self.export_dir)
        self.log = root / "mountd.log"
        self.rpcbind_log = root / "rpcbind.log"
        self.mnt_shim = mnt_shim
        self.port = 0
        self.pid = 0
        self.rpcbind_pid = 0
        self.holder_pid = 0
        self.netns = ""
        self.startup_seconds = 0.0
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._netns_inode = 0
        self._stopped = False
        self._past_second = int(time.time()) - 10 * 86400

    # -- for tests ----------------------------------------------------------------

    def client(
        self, *, privileged: bool = False, version: int = 3, source: Optional[str] = None
    ) -> MountClient:
        """A MOUNT client connected from the namespace's 127.0.0.1 (close it, or use ``with``).

        ``source``: another loopback address to connect from (``127.0.0.2``, ...,
        or ``::1``, then to mountd's ``::1``): mountd sees a different client.
        """
        server = "::1" if source is not None and ":" in source else "127.0.0.1"
        return MountClient(
            server,
            self.port,
            version=version,
            privileged=privileged,
            netns=self.netns,
            source=source,
        )

    def dump(self) -> list[tuple[bytes, bytes]]:
        """One DUMP (mountd's order: the reverse of the file)."""
        with self.client() as c:
            return c.dump()

    def umnt(self, path: bytes, *, source: Optional[str] = None) -> None:
        """One UMNT of ``path`` by client ``127.0.0.1`` (or by ``source``, see client())."""
        with self.client(source=source) as c:
            c.umnt(path)

    def write_rmtab(self, data: bytes) -> None:
        """Replace rmtab by write-then-rename, with a NEW mtime second (see below)."""
        tmp = self.statedir / "rmtab.interop-tmp"  # never mountd's own rmtab.tmp
        tmp.write_bytes(data)
        os.replace(tmp, self.rmtab)
        self.new_mtime_second()

    def read_rmtab(self) -> bytes:
        return self.rmtab.read_bytes()

    def new_mtime_second(self) -> int:
        """Give rmtab an mtime second nobody used before, so the next DUMP re-reads it.

        mountd's DUMP cache keys on the mtime SECOND. Seconds in the past (ten days
        back, one fresh second per call) can never equal the "now" that mountd's own
        rewrites get, nor each other.
        """
        self._past_second -= 1
        os.utime(self.rmtab, (self._past_second, self._past_second))
        return self._past_second

    def nsenter(self, *argv: str) -> list[str]:
        """argv that runs a command inside the daemons' namespaces (e.g. showmount -a)."""
        return ["nsenter", f"--target={self.holder_pid}", "--mount", "--net", "--", *argv]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self._procs)

    def mountd_exit_status(self, timeout: float = 0.0) -> Optional[int]:
        """mountd's exit status (``-N``: killed by signal N) within ``timeout`` s, or None."""
        proc = next(p for p in self._procs if p.pid == self.pid)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        t0 = time.monotonic()
        self.statedir.mkdir()
        self.export_dir.mkdir()
        self.export_dir = self.export_dir.resolve()  # mountd compares realpaths
        self.export = os.fsencode(self.export_dir)
        self.statedir = self.statedir.resolve()
        self.rmtab = self.statedir / "rmtab"
        self.lockfile = self.statedir / ".rmtab.lock"
        self.rmtab.write_bytes(b"")  # as the nfs-common package ships it
        exports = self.root / "exports"
        exports.write_text(f"{self.export_dir} *({_EXPORT_OPTIONS})\n")
        nfsconf = self.root / "nfs.conf"
        nfsconf.write_text("# private, empty: the host's nfs.conf must not steer the test\n")
        self._start_holder(exports, nfsconf)
        self.netns = f"/proc/{self.holder_pid}/ns/net"
        self._netns_inode = os.stat(self.netns).st_ino
        self.port = self._free_port()
        deadline = t0 + START_TIMEOUT
        self.rpcbind_pid = self._spawn(
            [_tool("RMTABTOOL_RPCBIND", "rpcbind") or "rpcbind", "-f"], self.rpcbind_log
        )
        # mountd registers with rpcbind once, at start-up, and carries on without
        # it when it is not listening yet (showmount and GETPORT then fail).
        self._wait_until("rpcbind answers NULL", self._rpcbind_answers, deadline)
        mountd = _tool("RMTABTOOL_RPC_MOUNTD", "rpc.mountd") or "rpc.mountd"
        self.pid = self._spawn(
            [mountd, "-F", "-N", "4", "-d", "all", "-p", str(self.port), "-s", str(self.statedir)],
            self.log,
        )
        self._wait_until("rpc.mountd answers NULL", self._mountd_answers, deadline)
        self._wait_until("rpc.mountd is registered", self._mountd_registered, deadline)
        if self.mnt_shim:
            self._shim_channels()
        with self.client() as c:
            c.export()
        self.startup_seconds = time.monotonic() - t0

    def _start_holder(self, exports: Path, nfsconf: Path) -> None:
        exportfs = _tool("RMTABTOOL_EXPORTFS", "exportfs") or "exportfs"
        ip = _tool("RMTABTOOL_IP", "ip") or "ip"
        script = [
            "set -eu",
            f"{ip} link set lo up",
            "mount -t tmpfs -o mode=0755 interop-run /run",
            "mkdir /run/rpcbind && { chown _rpc /run/rpcbind 2>/dev/null || true; }",
            f"mount --bind '{exports}' /etc/exports",
            "[ ! -d /etc/exports.d ] || mount -t tmpfs interop-empty /etc/exports.d",
            f"[ ! -e /etc/nfs.conf ] || mount --bind '{nfsconf}' /etc/nfs.conf",
            "[ ! -d /etc/nfs.conf.d ] || mount -t tmpfs interop-empty /etc/nfs.conf.d",
            f"mount --bind '{self.statedir}' /var/lib/nfs",
            f"{exportfs} -ra",
        ]
        if self.mnt_shim:
            script += [
                "mount -t tmpfs -o mode=0755 interop-nfsd /proc/fs/nfsd",
                "mkfifo -m 0600 /proc/fs/nfsd/filehandle",
            ]
        # The holder waits on its stdin: teardown writes "stop" (the daemons are
        # already stopped by then). EOF instead means pytest died without a
        # teardown: then it TERMs what is still in ITS network namespace (only
        # this fixture's daemons can be): rpcbind, which switches to its own user
        # and so loses the parent-death signal, would outlive pytest otherwise.
        script += [
            "echo ready",
            "read -r word || true",
            '[ "$word" != stop ] || exit 0',
            "me=$(readlink /proc/$$/ns/net)",
            "for d in /proc/[0-9]*; do",
            '  [ "${d#/proc/}" != $$ ] && [ "$(readlink $d/ns/net 2>/dev/null)" = "$me" ] &&',
            '    kill -TERM "${d#/proc/}" 2>/dev/null',
            "done",
            "exit 0",
        ]
        holder = self._popen(
            [
                "unshare",
                "--mount",
                "--net",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                "\n".join(script),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.holder_pid = holder.pid
        assert holder.stdout is not None
        line = _readline(holder.stdout, START_TIMEOUT)
        if line.strip() != b"ready":
            rest = line + _readline(holder.stdout, 0.5)
            raise RuntimeError(f"namespace setup failed: {rest.decode(errors='replace')}")

    def _free_port(self) -> int:
        with in_netns(self.netns), socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
            return port

    def _popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def _spawn(self, argv: list[str], log: Path) -> int:
        out = log.open("ab")
        self._logs.append(out)
        proc = self._popen(
            self.nsenter(*argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_daemon_preexec,
        )
        return proc.pid

    def _wait_until(self, what: str, ready: Callable[[], bool], deadline: float) -> None:
        """Poll ``ready`` until it says yes; fail fast when a daemon died."""
        last: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"a daemon exited during start-up (waiting until {what}):\n"
                    f"{self.log_text()}{self.rpcbind_log.read_text(errors='replace')}"
                )
            try:
                if ready():
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.01)
        raise RuntimeError(
            f"start-up timed out after {START_TIMEOUT}s waiting until {what} ({last})"
        )

    def _rpcbind_answers(self) -> bool:
        with MountClient(port=PMAP_PORT, program=PMAP_PROGRAM, version=2, netns=self.netns) as c:
            c.null()
        return True

    def _mountd_answers(self) -> bool:
        with self.client() as c:
            c.null()
        return True

    def _mountd_registered(self) -> bool:
        return getport(MOUNT_PROGRAM, 3, netns=self.netns) == self.port

    def _shim_channels(self) -> None:
        net = f"/proc/{self.pid}/net"
        script = " && ".join(
            [
                f"mount -t tmpfs -o mode=0755 interop-net {net}",
                f"mkdir -p {net}/rpc/auth.unix.ip {net}/rpc/nfsd.export",
                f": > {net}/rpc/auth.unix.ip/channel",
                f": > {net}/rpc/nfsd.export/channel",
            ]
        )
        subprocess.run(
            self.nsenter("sh", "-c", script), check=True, timeout=START_TIMEOUT, capture_output=True
        )

    def stop(self, *, allow_exited: bool = False) -> None:
        """Stop mountd, then rpcbind, by PID, then the holder; raise if any remain.

        A daemon that had already exited on its own is reported too (a crash is a
        finding), unless ``allow_exited``: for a test that killed it on purpose.
        Calling it again does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        problems = []
        for proc in reversed(self._procs):
            if proc.poll() is None:
                if proc.stdin is not None:  # the holder
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.write(b"stop\n")
                        proc.stdin.close()
                else:
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    problems.append(f"PID {proc.pid} did not stop within {STOP_TIMEOUT}s; killed")
                    proc.kill()
                    proc.wait(STOP_TIMEOUT)
                # on SIGTERM mountd and rpcbind exit 0, and so does the holder on EOF
                if not allow_exited and proc.returncode != 0:
                    problems.append(f"PID {proc.pid} ended with status {proc.returncode}")
            elif not allow_exited:
                problems.append(f"PID {proc.pid} had exited before teardown ({proc.returncode})")
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        for out in self._logs:
            out.close()
        left = self._processes_in_netns()
        if left:
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            problems.append(f"processes left in the test's network namespace: {left}")
        if problems:
            raise RuntimeError("; ".join(problems) + f"\nmountd log: {self.log}")

    def _processes_in_netns(self) -> list[int]:
        if not self._netns_inode:
            return []
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{entry.name}/ns/net")
            except OSError:
                continue
            if st.st_ino == self._netns_inode and st.st_dev == os.stat("/proc/self/ns/net").st_dev:
                found.append(int(entry.name))
        return found


def _daemon_preexec() -> None:
    """In the child before exec: die with pytest, and a fixed 8 MiB stack limit.

    PR_SET_PDEATHSIG: SIGTERM when pytest dies, even by SIGKILL. nsenter execs
    the daemon in place and the setting survives exec; rpcbind loses it when it
    switches to its own user (the kernel clears it then).

    RLIMIT_STACK: mountd's DUMP reply is encoded recursively, one stack frame
    per rmtab line, so how large a DUMP it survives depends on the stack limit.
    8 MiB is the usual default (and systemd's): fixed here so the result does
    not depend on the ulimit of whoever runs pytest.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    soft = DAEMON_STACK if hard == resource.RLIM_INFINITY else min(DAEMON_STACK, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a pipe, or what arrived before ``timeout`` seconds."""
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _run_mountd(tmp_path: Path, *, mnt_shim: bool) -> Iterator[Mountd]:
    _require_prerequisites()
    daemon = Mountd(tmp_path / "mountd", mnt_shim=mnt_shim)
    daemon.root.mkdir()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def mountd(tmp_path: Path) -> Iterator[Mountd]:
    """The real rpc.mountd on a private loopback, exports loaded; MNT is refused (ACCES)."""
    yield from _run_mountd(tmp_path, mnt_shim=False)


@pytest.fixture
def mountd_mnt(tmp_path: Path) -> Iterator[Mountd]:
    """Like ``mountd``, plus the /proc shim so that MNT succeeds and writes rmtab."""
    yield from _run_mountd(tmp_path, mnt_shim=True)


# -- the installed rmtabtool command ------------------------------------------------


def rmtabtool_command() -> tuple[str, ...]:
    """argv of the INSTALLED ``rmtabtool`` console script (the one beside this Python);
    not installed at all fails the test (no ``python -m`` fallback)."""
    return cliutil.rmtabtool_command(installed_only=True)


def rmtabtool_env() -> dict[str, str]:
    """The environment for rmtabtool runs: no colour, no escape codes, no RMTABTOOL_RMTAB."""
    return cliutil.clean_env(drop=("RMTABTOOL_RMTAB",), drop_prefixes=(), NO_COLOR="1")


def run_rmtabtool(*args: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``rmtabtool ARGS --json``; it must exit 0. Returns its one JSON object."""
    return cliutil.run_json(*args, argv0=rmtabtool_command(), env=rmtabtool_env(), timeout=timeout)

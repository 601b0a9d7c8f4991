"""A small MOUNT protocol client, stdlib only, to drive and observe the real rpc.mountd.

ONC RPC version 2 (RFC 5531) over TCP with record marking, AUTH_UNIX credentials,
XDR (RFC 4506). MOUNT is program 100005 (RFC 1813 appendix I for version 3; the
procedures used here have the same arguments and results in versions 1 to 3).

Only what the interop tests need: NULL, MNT, DUMP, UMNT, UMNTALL, EXPORT, and
the portmapper's GETPORT. Strings are ``bytes`` end to end because rmtab paths
are bytes, not necessarily UTF-8.

rpc.mountd identifies a client by the SOURCE address of the connection, not by
anything in the credentials: a UMNT from 127.0.0.1 can only ever touch rmtab
lines whose client is ``127.0.0.1``. A socket can be opened inside another
network namespace (``netns=/proc/<pid>/ns/net``) so that a daemon isolated in
its own namespace is reachable on that namespace's 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple, Optional

__all__ = [
    "MNT3ERR_ACCES",
    "MNT3_OK",
    "MOUNT_PROGRAM",
    "PMAP_PORT",
    "PMAP_PROGRAM",
    "MntResult",
    "MountClient",
    "RpcError",
    "XdrReader",
    "XdrWriter",
    "getport",
    "in_netns",
    "open_tcp",
    "paced_calls",
]

MOUNT_PROGRAM = 100005
PMAP_PROGRAM = 100000
PMAP_PORT = 111

# MOUNT procedures (identical numbers in versions 1, 2 and 3)
PROC_NULL = 0
PROC_MNT = 1
PROC_DUMP = 2
PROC_UMNT = 3
PROC_UMNTALL = 4
PROC_EXPORT = 5

# mountstat3 values seen in practice
MNT3_OK = 0
MNT3ERR_PERM = 1
MNT3ERR_NOENT = 2
MNT3ERR_IO = 5
MNT3ERR_ACCES = 13
MNT3ERR_NOTDIR = 20
MNT3ERR_INVAL = 22
MNT3ERR_NAMETOOLONG = 63
MNT3ERR_NOTSUPP = 10004
MNT3ERR_SERVERFAULT = 10006

AUTH_NONE = 0
AUTH_UNIX = 1

_CALL = 0
_REPLY = 1
_MSG_ACCEPTED = 0
_MSG_DENIED = 1
_ACCEPT_STAT = {
    0: "SUCCESS",
    1: "PROG_UNAVAIL",
    2: "PROG_MISMATCH",
    3: "PROC_UNAVAIL",
    4: "GARBAGE_ARGS",
    5: "SYSTEM_ERR",
}
_LAST_FRAGMENT = 0x80000000
#: refuse replies larger than this (a DUMP of a bloated rmtab can be big, but finite)
MAX_REPLY = 256 * 1024 * 1024

_CLONE_NEWNET = 0x40000000
#: the range bindresvport(3) uses for privileged source ports
_RESVPORT_LOW = 600
_RESVPORT_HIGH = 1023


class RpcError(Exception):
    """The server answered, but not with a successful reply (or the reply was bad)."""


class XdrWriter:
    """Append-only XDR encoder (RFC 4506): big-endian, 4-byte aligned."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def uint(self, value: int) -> XdrWriter:
        self._parts.append(struct.pack(">I", value))
        return self

    def opaque(self, data: bytes) -> XdrWriter:
        """Variable-length opaque or string: length, bytes, zero padding."""
        self.uint(len(data))
        self._parts.append(bytes(data) + b"\0" * (-len(data) % 4))
        return self

    def uint_array(self, values: list[int]) -> XdrWriter:
        self.uint(len(values))
        for value in values:
            self.uint(value)
        return self

    def raw(self, data: bytes) -> XdrWriter:
        self._parts.append(data)
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class XdrReader:
    """XDR decoder over one complete reply; every read checks the bounds."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise RpcError(f"short XDR data: wanted {size} bytes at offset {self._pos}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def fixed(self, size: int) -> bytes:
        """Fixed-length opaque: ``size`` bytes plus padding."""
        data = self._take(size)
        self._take(-size % 4)
        return data

    def uint(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def boolean(self) -> bool:
        value = self.uint()
        if value not in (0, 1):
            raise RpcError(f"bad XDR bool {value}")
        return value == 1

    def opaque(self, limit: Optional[int] = None) -> bytes:
        size = self.uint()
        if limit is not None and size > limit:
            raise RpcError(f"XDR opaque of {size} bytes exceeds its limit {limit}")
        data = self._take(size)
        self._take(-size % 4)
        return data

    def uint_array(self) -> list[int]:
        return [self.uint() for _ in range(self.uint())]

    def done(self) -> bool:
        return self._pos == len(self._data)


def _auth_unix(machinename: bytes, uid: int, gid: int, gids: list[int]) -> bytes:
    body = (
        XdrWriter()
        .uint(int(time.time()) & 0xFFFFFFFF)
        .opaque(machinename)
        .uint(uid)
        .uint(gid)
        .uint_array(gids)
        .getvalue()
    )
    return XdrWriter().uint(AUTH_UNIX).opaque(body).getvalue()


@contextmanager
def in_netns(netns: Optional[str]) -> Iterator[None]:
    """Run the body with THIS THREAD in the network namespace ``netns`` (a path).

    A socket keeps the namespace it was created in, so a socket made here can be
    used after the thread has gone back. Needs CAP_SYS_ADMIN (root). ``None``
    means: stay where we are.
    """
    if netns is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({netns}): {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(home, _CLONE_NEWNET) != 0:  # pragma: no cover - would be a kernel bug
                err = ctypes.get_errno()
                raise OSError(err, f"cannot return to the original network namespace: {err}")
    finally:
        os.close(home)


def open_tcp(
    host: str,
    port: int,
    *,
    privileged: bool = False,
    timeout: float = 5.0,
    netns: Optional[str] = None,
    source: Optional[str] = None,
) -> socket.socket:
    """A connected TCP socket to (host, port), optionally from a privileged port.

    ``privileged`` binds a source port below 1024 the way bindresvport(3) does
    (needs root): mountd refuses other ports unless the export says ``insecure``.
    ``source`` binds the source ADDRESS (e.g. ``127.0.0.2``; same family as
    ``host``): mountd takes the client's identity from it, so one loopback can
    play several NFS clients.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with in_netns(netns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if privileged:
            _bind_reserved(sock, source or ("::" if family == socket.AF_INET6 else "0.0.0.0"))
        elif source is not None:
            sock.bind((source, 0))
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_reserved(sock: socket.socket, address: str) -> None:
    ports = list(range(_RESVPORT_LOW, _RESVPORT_HIGH + 1))
    random.shuffle(ports)
    for port in ports:
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                continue
            raise
        return
    raise OSError(errno.EADDRINUSE, "no free privileged source port")


class MntResult(NamedTuple):
    """What MNT answered: the mountstat3, and on success the handle and flavours."""

    status: int
    fhandle: bytes
    auth_flavors: list[int]


class MountClient:
    """One TCP connection to an RPC server, speaking MOUNT (and portmapper) calls.

    Use as a context manager, or call :meth:`close`. Calls are synchronous and
    bounded by ``timeout`` seconds each.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        version: int = 3,
        program: int = MOUNT_PROGRAM,
        privileged: bool = False,
        timeout: float = 5.0,
        netns: Optional[str] = None,
        uid: int = 0,
        gid: int = 0,
        gids: Optional[list[int]] = None,
        machinename: bytes = b"rmtabtool-interop",
        source: Optional[str] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.version = version
        self.program = program
        self._cred = _auth_unix(machinename, uid, gid, list(gids or []))
        self._xid = random.getrandbits(32)
        self._sock = open_tcp(
            host, port, privileged=privileged, timeout=timeout, netns=netns, source=source
        )

    # -- plumbing ---------------------------------------------------------------

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> MountClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def source_port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    def call(self, procedure: int, args: bytes = b"") -> XdrReader:
        """Send one CALL and return a reader positioned at the procedure's results."""
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        xid = self._xid
        header = (
            XdrWriter()
            .uint(xid)
            .uint(_CALL)
            .uint(2)  # RPC version
            .uint(self.program)
            .uint(self.version)
            .uint(procedure)
            .raw(self._cred)
            .uint(AUTH_NONE)  # verifier
            .opaque(b"")
            .getvalue()
        )
        message = header + args
        self._sock.sendall(struct.pack(">I", _LAST_FRAGMENT | len(message)) + message)
        reply = XdrReader(self._read_record())
        if reply.uint() != xid:
            raise RpcError("reply xid does not match the call")
        if reply.uint() != _REPLY:
            raise RpcError("answer is not an RPC REPLY")
        if reply.uint() == _MSG_DENIED:
            if reply.uint() == 0:
                raise RpcError(f"call denied: RPC_MISMATCH {reply.uint()}-{reply.uint()}")
            raise RpcError(f"call denied: AUTH_ERROR {reply.uint()}")
        reply.uint()  # verifier flavour
        reply.opaque(400)
        status = reply.uint()
        if status != 0:
            name = _ACCEPT_STAT.get(status, str(status))
            raise RpcError(f"program {self.program} v{self.version} proc {procedure}: {name}")
        return reply

    def _recv_exact(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size:
            chunk = self._sock.recv(min(size, 1 << 20))
            if not chunk:
                raise RpcError("connection closed by the server in the middle of a reply")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _read_record(self) -> bytes:
        fragments: list[bytes] = []
        total = 0
        while True:
            (mark,) = struct.unpack(">I", self._recv_exact(4))
            size = mark & ~_LAST_FRAGMENT
            total += size
            if total > MAX_REPLY:
                raise RpcError(f"reply larger than {MAX_REPLY} bytes")
            fragments.append(self._recv_exact(size))
            if mark & _LAST_FRAGMENT:
                return b"".join(fragments)

    # -- MOUNT procedures -------------------------------------------------------

    def null(self) -> None:
        self.call(PROC_NULL)

    def mnt(self, path: bytes) -> MntResult:
        """MNT: mountd records the mount in rmtab on success. Returns the status."""
        reply = self.call(PROC_MNT, XdrWriter().opaque(path).getvalue())
        status = reply.uint()
        if status != MNT3_OK:
            return MntResult(status, b"", [])
        if self.version == 3:
            return MntResult(status, reply.opaque(64), reply.uint_array())
        return MntResult(status, reply.fixed(32), [])  # fhandle of versions 1 and 2

    def dump(self) -> list[tuple[bytes, bytes]]:
        """DUMP: (hostname, directory) pairs in the order mountd sends them."""
        reply = self.call(PROC_DUMP)
        result = []
        while reply.boolean():
            host = reply.opaque()
            path = reply.opaque()
            result.append((host, path))
        return result

    def umnt(self, path: bytes) -> None:
        """UMNT: drop one mount of ``path`` by THIS connection's source address."""
        self.call(PROC_UMNT, XdrWriter().opaque(path).getvalue())

    def umntall(self) -> None:
        """UMNTALL: drop the mounts of THIS connection's source address."""
        self.call(PROC_UMNTALL)

    def export(self) -> list[tuple[bytes, list[bytes]]]:
        """EXPORT: (directory, [group, ...]) per export. Makes mountd load its exports."""
        reply = self.call(PROC_EXPORT)
        result = []
        while reply.boolean():
            directory = reply.opaque()
            groups = []
            while reply.boolean():
                groups.append(reply.opaque())
            result.append((directory, groups))
        return result


def getport(
    program: int,
    version: int,
    *,
    host: str = "127.0.0.1",
    protocol: int = socket.IPPROTO_TCP,
    timeout: float = 5.0,
    netns: Optional[str] = None,
) -> int:
    """Ask the portmapper (rpcbind, version 2) on ``host`` where a program listens; 0 if not."""
    with MountClient(
        host, PMAP_PORT, program=PMAP_PROGRAM, version=2, timeout=timeout, netns=netns
    ) as pmap:
        args = XdrWriter().uint(program).uint(version).uint(protocol).uint(0).getvalue()
        return pmap.call(3, args).uint()  # PMAPPROC_GETPORT


def paced_calls(spec: dict[str, object]) -> dict[str, object]:
    """Play one NFS client: MOUNT calls at a steady pace, each timed (a load generator).

    ``spec`` (JSON-able): ``host``, ``port``, ``netns``, ``source`` (the client's
    address), ``calls`` (``[["umnt" | "mnt" | "dump", path as hex], ...]``, made in
    that order), ``start_at`` and ``deadline`` (``time.time()`` values), ``spacing``
    (seconds between call starts, jittered +-50 %), ``timeout`` (per call).

    One connection per call, as mount.nfs and umount.nfs do; the time recorded is
    the RPC round trip only (connect excluded): how long mountd took to answer.
    Returns ``{"calls": [[name, wall-clock start, seconds], ...], "errors": [...]}``;
    calls not started by ``deadline`` are reported as errors.
    """
    host = str(spec["host"])
    port = int(str(spec["port"]))
    netns = str(spec["netns"])
    source = str(spec["source"])
    calls = spec["calls"]
    assert isinstance(calls, list)
    start_at = float(str(spec["start_at"]))
    deadline = float(str(spec["deadline"]))
    spacing = float(str(spec["spacing"]))
    timeout = float(str(spec.get("timeout", 5.0)))
    jitter = random.Random(source)
    done: list[list[object]] = []
    errors: list[str] = []
    next_at = start_at
    for index, (name, path_hex) in enumerate(calls):
        delay = next_at - time.time()
        if delay > 0:
            time.sleep(delay)
        next_at += spacing * (0.5 + jitter.random())
        if time.time() > deadline:
            errors.append(f"{source}: {len(calls) - index} calls not made before the deadline")
            break
        path = bytes.fromhex(path_hex)
        try:
            with MountClient(host, port, netns=netns, source=source, timeout=timeout) as client:
                began = time.time()
                t0 = time.perf_counter()
                if name == "umnt":
                    client.umnt(path)
                elif name == "mnt":
                    status = client.mnt(path).status
                    if status != MNT3_OK:
                        errors.append(f"{source}: MNT {path!r} answered {status}")
                elif name == "dump":
                    client.dump()
                else:
                    raise ValueError(f"unknown call {name!r}")
                done.append([name, began, time.perf_counter() - t0])
        except (OSError, RpcError) as exc:
            errors.append(f"{source}: {name} {path!r}: {exc!r}")
    return {"calls": done, "errors": errors}


if __name__ == "__main__":
    # python mountproto.py SPEC-JSON: paced_calls() in a process of its own
    sys.stdout.write(json.dumps(paced_calls(json.loads(sys.argv[1]))))

#!/usr/bin/env python3
"""Generate a seed-like bloated rmtab, deterministically from a seed.

The file is not random noise: it is what a two-node Pacemaker cluster running
the old ocf:heartbeat:exportfs agent (resource-agents 3.9.1/3.9.2) leaves behind,
replayed event by event (see ../shared/rmtab-reference.md, "The seed incident"):

* rpc.mountd on the active node: MNT rewrites the first matching line in place
  with count + 1 (a client that rebooted and remounted) or appends a new line;
  UMNT re-reads the file with mountd's parser, decrements every matching line,
  drops lines that reach 0 and rewrites every survivor canonically.
* the agent: ``backup_rmtab`` = ``grep ":$dir:" rmtab > $dir/.rmtab`` per export
  (it misses sub-directory mounts) and, on start on the other node,
  ``restore_rmtab`` = ``cat $dir/.rmtab >> rmtab``. Each failover appends the
  active node's file to the peer's own, old one: the files grow like Fibonacci
  numbers (x1.6 per failover, x2.6 per round trip).
* phase 1, normal life: failovers now and then, MNTs, remounts and UMNTs.
  Phase 2, the failover storm: clients hang, nobody unmounts, rebooted clients
  remount, and the cluster flaps until /var is full.
* hand edits and crashes: an admin comments a line out with ``#`` and re-adds one
  with a short ``0x1`` count; a node is fenced in the middle of a MNT append (no
  final newline) and its next restore glues the first backup line onto it; an
  editor leaves a blank line on the standby node (rpc.mountd stops reading
  there); and the last restore is cut when the disk fills up, so the file ends
  in a truncated line without its newline, exactly ``--size`` bytes long.

Clients are IPv4 addresses, IPv6 addresses written with ``;`` as mountd does
(one with a ``%scope``, one IPv4-mapped), and a few host names; paths are export
roots, sub-directories of exports, and a Latin-1 (non-UTF-8) export name.

The history is kept as a DAG of immutable blocks (a rope with sharing), so a
1.6 GB file is a few hundred blocks written again and again, as the doubling
did: generation runs in bounded memory at disk speed.

Usage: ``python benchmarks/generate.py --size 1.6G --seed 1 -o FILE``
(sizes take K, M, G suffixes, powers of 1024; ``-o -`` writes to stdout).
Standard library only.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Optional

__all__ = ["Node", "Simulation", "generate", "main", "parse_size"]

EXPORTS: tuple[bytes, ...] = (
    b"/srv/nfs/home",
    b"/srv/nfs/data",
    "/srv/nfs/dépôt".encode("latin-1"),  # created by a Latin-1 era script: not UTF-8
)
SUBDIRS: tuple[bytes, ...] = (
    b"/srv/nfs/home/alice",
    b"/srv/nfs/home/bob/projects",
    b"/srv/nfs/data/builds",
    "/srv/nfs/data/résultats".encode("latin-1"),
)
IPV6_CLIENTS: tuple[bytes, ...] = (
    b"2001;db8;0;12;;41",
    b"2001;db8;0;12;;1a7",
    b"fe80;;5054;ff;fe3a;1c07%eth0",
    b";;ffff;192.168.9.14",
)
HOST_CLIENTS: tuple[bytes, ...] = (
    b"lab-ws07.example.org",
    b"build02",
    b"render-node-3.cluster.local",
)

#: The admin's hand edit (phase 2): one entry commented out, one re-added with a
#: short count. Both contain ":<export>:" so the agent's grep copies them along.
COMMENTED = b"#192.168.30.31:/srv/nfs/home:0x00000001"
SHORT_COUNT = b"192.168.30.77:/srv/nfs/data:0x1"

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"1.6G"`` -> bytes. K/M/G/T are powers of 1024 (like ``head -c``)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 200K, 16M, 1.6G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def canonical(client: bytes, path: bytes, count: int) -> bytes:
    """What mountd writes (without the newline)."""
    return b"%s:%s:0x%08x" % (client, path, count)


Key = tuple[bytes, bytes]


def mountd_parse(line: bytes) -> Optional[tuple[bytes, bytes, int]]:
    """fgetrmtabent() on one line: (client, path, count), or None where it stops."""
    first = line.find(b":")
    if first < 0:
        return None
    client = line[:first]
    rest = line[first + 1 :]
    path, sep, field = rest.partition(b":")
    if not sep:
        return client, path, 1
    match = re.match(rb"\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", field)
    if match is None:
        return client, path, 0
    digits = match.group(1)
    if digits[:2] in (b"0x", b"0X"):
        value = int(digits[2:], 16)
    elif len(digits) > 1:
        value = int(digits[1:], 8)
    else:
        value = int(digits)
    return client, path, min(value, 0xFFFFFFFF)


class Node:
    """An immutable run of complete lines: a leaf (``lines``) or a concatenation.

    Nodes are shared freely (a restore appends the same nodes again), which is
    what keeps a multi-GB history a small DAG. Identity is the hash.
    """

    __slots__ = ("children", "keys", "lines", "nlines", "size")

    size: int
    nlines: int

    def __init__(self, lines: Sequence[bytes] = (), children: Sequence[Node] = ()) -> None:
        self.lines: tuple[bytes, ...] = tuple(lines)
        self.children: tuple[Node, ...] = tuple(children)
        if self.children:
            self.size = sum(c.size for c in self.children)
            self.nlines = sum(c.nlines for c in self.children)
            keys: set[Key] = set()
            for child in self.children:
                keys |= child.keys
        else:
            self.size = sum(len(line) + 1 for line in self.lines)
            self.nlines = len(self.lines)
            keys = set()
            for line in self.lines:
                parsed = mountd_parse(line)
                if parsed is not None:
                    keys.add((parsed[0], parsed[1]))
        #: (client, path) of every line mountd can parse: lets MNT skip whole blocks
        self.keys: frozenset[Key] = frozenset(keys)


EMPTY = Node()


def concat(*parts: Node) -> Node:
    kept = [p for p in parts if p.size]
    if not kept:
        return EMPTY
    if len(kept) == 1:
        return kept[0]
    return Node(children=kept)


class NodeFile:
    """One node's /var/lib/nfs/rmtab: complete lines plus maybe an unterminated tail."""

    def __init__(self, root: Node = EMPTY, partial: Optional[bytes] = None) -> None:
        self.root = root
        self.partial = partial

    @property
    def size(self) -> int:
        return self.root.size + (len(self.partial) if self.partial is not None else 0)


class Simulation:
    """The cluster's history, event by event. All randomness comes from ``seed``."""

    #: phase 1 lasts until the active file reaches target / PHASE2_FRACTION
    PHASE2_FRACTION = 1024
    PHASE1_MIN_FAILOVERS = 3

    def __init__(
        self, target: int, seed: int, *, schedule: Optional[dict[str, int]] = None
    ) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.nodes = [NodeFile(), NodeFile()]
        self.active = 0
        self.failovers = 0
        self.phase2_start: Optional[int] = None
        self.schedule = schedule or {}
        self.log: list[str] = []
        # grep results are memoised across the whole history: grep(grep(x)) is
        # grep(x), which keeps the DAG linear in the number of failovers.
        self._grep_memo: dict[tuple[Node, bytes], Node] = {}
        self._make_clients()
        self._next_client = 0

    # -- the population -------------------------------------------------
    def _make_clients(self) -> None:
        rng = self.rng
        v4: set[bytes] = set()
        while len(v4) < 56:
            v4.add(b"192.168.%d.%d" % (rng.randrange(1, 9), rng.randrange(2, 250)))
        self.spare_v4 = sorted(
            {b"172.16.%d.%d" % (rng.randrange(1, 9), rng.randrange(2, 250)) for _ in range(120)}
        )
        rng.shuffle(self.spare_v4)
        clients = sorted(v4) + list(IPV6_CLIENTS) + list(HOST_CLIENTS)
        rng.shuffle(clients)
        self.mounts: list[tuple[bytes, bytes, int]] = []
        for i, client in enumerate(clients):
            path = EXPORTS[i % len(EXPORTS)] if i % 9 else SUBDIRS[(i // 9) % len(SUBDIRS)]
            count = rng.choice((1, 1, 1, 1, 1, 2, 2, 3))
            self.mounts.append((client, path, count))
            if rng.random() < 0.25:  # a second export for some clients
                self.mounts.append((client, EXPORTS[(i + 1) % len(EXPORTS)], 1))
        self.known: list[Key] = [(c, p) for c, p, _ in self.mounts]
        self.bumpable: list[Key] = [k for k in self.known]
        # initial rmtab on node 0 (node 1 starts empty: a fresh install)
        self.nodes[0].root = Node([canonical(c, p, n) for c, p, n in self.mounts])

    def _new_key(self) -> Key:
        rng = self.rng
        if self._next_client < len(self.spare_v4) and rng.random() < 0.8:
            client = self.spare_v4[self._next_client]
            self._next_client += 1
        else:
            client = rng.choice(self.known)[0]
        paths = EXPORTS + SUBDIRS[:2] if rng.random() < 0.8 else SUBDIRS
        path = rng.choice(paths)
        return client, path

    # -- rope operations ------------------------------------------------
    def grep(self, node: Node, needle: bytes) -> Node:
        """``grep ":$dir:"`` over complete lines (a substring: no regex characters here)."""
        memo = self._grep_memo
        got = memo.get((node, needle))
        if got is not None:
            return got
        if node.children:
            result = concat(*(self.grep(c, needle) for c in node.children))
        else:
            kept = [line for line in node.lines if needle in line]
            result = node if len(kept) == node.nlines else Node(kept) if kept else EMPTY
        memo[(node, needle)] = result
        memo[(result, needle)] = result
        return result

    def backup(self, f: NodeFile, export: bytes) -> Node:
        needle = b":" + export + b":"
        result = self.grep(f.root, needle)
        if f.partial is not None and needle in f.partial:
            result = concat(result, Node([f.partial]))  # grep adds the missing newline
        return result

    @staticmethod
    def split_first(node: Node) -> tuple[bytes, Node]:
        if not node.children:
            return node.lines[0], Node(node.lines[1:]) if node.nlines > 1 else EMPTY
        line, rest = Simulation.split_first(node.children[0])
        return line, concat(rest, *node.children[1:])

    def append(self, f: NodeFile, part: Node) -> None:
        """``cat part >> rmtab`` (or mountd's append): glued onto an unterminated tail."""
        if not part.size:
            return
        if f.partial is not None:
            line, part = self.split_first(part)
            part = concat(Node([f.partial + line]), part)
            f.partial = None
        f.root = concat(f.root, part)

    def mnt(self, f: NodeFile, key: Key) -> bool:
        """mountlist_add: bump the first matching line in place, or append. False: skipped."""
        if key in f.root.keys:
            new_root = self._bump(f.root, key)
            if new_root is None:
                return False
            f.root = new_root
            return True
        self.append(f, Node([canonical(key[0], key[1], 1)]))
        if key not in self.bumpable:
            self.bumpable.append(key)
        return True

    def _bump(self, node: Node, key: Key) -> Optional[Node]:
        if node.children:
            for i, child in enumerate(node.children):
                if key in child.keys:
                    new = self._bump(child, key)
                    if new is None:
                        return None
                    return concat(*node.children[:i], new, *node.children[i + 1 :])
            raise AssertionError("key vanished")
        for i, line in enumerate(node.lines):
            parsed = mountd_parse(line)
            if parsed is None or (parsed[0], parsed[1]) != key:
                continue
            new_line = canonical(key[0], key[1], parsed[2] + 1)
            if len(new_line) != len(line):
                # mountd would overwrite the start of the next line: not simulated.
                return None
            return Node((*node.lines[:i], new_line, *node.lines[i + 1 :]))
        raise AssertionError("key vanished")

    def umnt(self, f: NodeFile, key: Key) -> None:
        """mountlist_del: re-read with mountd's parser, decrement, drop zeros, rewrite."""
        memo: dict[Node, tuple[Node, bool]] = {}

        def rewrite(node: Node) -> tuple[Node, bool]:
            got = memo.get(node)
            if got is not None:
                return got
            stopped = False
            if node.children:
                parts = []
                for child in node.children:
                    new, stopped = rewrite(child)
                    parts.append(new)
                    if stopped:
                        break
                result = concat(*parts)
            else:
                out = []
                for line in node.lines:
                    parsed = mountd_parse(line)
                    if parsed is None:
                        stopped = True
                        break
                    client, path, count = parsed
                    if (client, path) == key:
                        count -= 1
                        if count <= 0:
                            continue
                    out.append(canonical(client, path, count))
                result = node if out == list(node.lines) else Node(out) if out else EMPTY
            memo[node] = (result, stopped)
            return result, stopped

        root, stopped = rewrite(f.root)
        if not stopped and f.partial is not None:
            parsed = mountd_parse(f.partial)
            if parsed is not None:
                client, path, count = parsed
                if (client, path) == key:
                    count -= 1
                if count > 0:
                    root = concat(root, Node([canonical(client, path, count)]))
        f.root = root
        f.partial = None

    # -- the story ------------------------------------------------------
    def mountd_activity(self, f: NodeFile, phase: int) -> None:
        rng = self.rng
        for _ in range(rng.randrange(1, 4)):  # new mounts
            key = self._new_key()
            self.mnt(f, key)
            self.known.append(key)
        for _ in range(4):  # rebooted clients remount: count + 1 in place
            for _attempt in range(5):
                if self.mnt(f, rng.choice(self.bumpable)):
                    break
        if phase == 1:
            for _ in range(rng.randrange(1, 3)):  # clients unmount
                key = rng.choice(self.known)
                if key in f.root.keys:
                    self.umnt(f, key)

    def failover(self) -> bool:
        """Stop on the active node, start on the peer. True when the disk filled up."""
        src = self.nodes[self.active]
        dst = self.nodes[1 - self.active]
        self.failovers += 1
        n = self.failovers
        if n == self.schedule.get("blank"):
            # An editor on the standby node left a blank line: mountd stops there.
            self.append(dst, Node([b""]))
            self.log.append(f"failover {n}: blank line left on node {1 - self.active}")
        for export in EXPORTS:
            self.append(dst, self.backup(src, export))
        self.active = 1 - self.active
        return dst.size >= self.target

    def run(self) -> NodeFile:
        """Play the history until the restore that fills the disk; return that node's file."""
        while True:
            f = self.nodes[self.active]
            n = self.failovers + 1  # the failover that ends this active period
            phase = 1
            if self.phase2_start is None and (
                self.failovers >= self.PHASE1_MIN_FAILOVERS
                and f.size * self.PHASE2_FRACTION >= self.target
            ):
                self.phase2_start = n
                self.log.append(f"failover {n}: phase 2 (storm) starts at {f.size} bytes")
            if self.phase2_start is not None:
                phase = 2
            self.mountd_activity(f, phase)
            if n == self.schedule.get("hand_edit"):
                self.append(f, Node([COMMENTED, SHORT_COUNT]))
                self.log.append(f"failover {n}: hand edit ('#' line, short count)")
            if n == self.schedule.get("fence"):
                # Fenced in the middle of a MNT append: a partial line, no newline.
                client, path = self._new_key()
                line = canonical(client, path, 1)
                self.append(f, Node([line]))
                self.known.append((client, path))
                root, last = self._split_last(f.root)
                f.root, f.partial = root, last[: len(last) - 3]
                self.log.append(f"failover {n}: node {self.active} fenced mid-append")
            if self.failover():
                return self.nodes[self.active]

    @staticmethod
    def _split_last(node: Node) -> tuple[Node, bytes]:
        if not node.children:
            rest = Node(node.lines[:-1]) if node.nlines > 1 else EMPTY
            return rest, node.lines[-1]
        rest, line = Simulation._split_last(node.children[-1])
        return concat(*node.children[:-1], rest), line


def simulate(target: int, seed: int) -> tuple[Simulation, NodeFile]:
    """Run the history twice: once to learn when the disk fills, once with the
    hand edits and crashes placed a few failovers before that."""
    dry = Simulation(target, seed)
    dry.run()
    end = dry.failovers
    start = dry.phase2_start or end
    schedule = {
        "hand_edit": max(start, end - 9),
        "fence": max(start + 1, end - 6),
        "blank": end,
    }
    for _ in range(4):
        sim = Simulation(target, seed, schedule=schedule)
        final = sim.run()
        if sim.failovers == schedule["blank"]:
            return sim, final
        schedule["blank"] = sim.failovers  # the crash shifted the end: replay
    return sim, final


def _emit(
    node: Node, out: BinaryIO, limit: int, cache: dict[Node, bytes], budget: list[int]
) -> int:
    """Write ``node`` (at most ``limit`` bytes); return the bytes written."""
    data = cache.get(node)
    if data is None and node.size <= _CACHE_NODE:
        data = b"".join(_materialise(node))
        if budget[0] >= len(data):
            cache[node] = data
            budget[0] -= len(data)
    if data is not None:
        if limit < len(data):
            out.write(data[:limit])
            return limit
        out.write(data)
        return len(data)
    written = 0
    for child in node.children:
        if written >= limit:
            break
        written += _emit(child, out, limit - written, cache, budget)
    return written


def _materialise(node: Node) -> Iterator[bytes]:
    if node.children:
        for child in node.children:
            yield from _materialise(child)
    elif node.lines:
        yield b"\n".join(node.lines) + b"\n"


#: blocks up to this size are joined once and then written as one piece
_CACHE_NODE = 1024 * 1024
#: total bytes kept in joined blocks: the generator's memory bound
_CACHE_BUDGET = 16 * 1024 * 1024


def generate(out: BinaryIO, size: int, seed: int = 1) -> Simulation:
    """Write exactly ``size`` bytes of seed-like rmtab to ``out``; return the history."""
    if size <= 0:
        raise ValueError("size must be positive")
    sim, final = simulate(size, seed)
    limit = size
    # The disk filled in the middle of a line: make sure the cut is mid-line.
    total = final.root.size
    if limit <= total:
        last = _byte_at(final.root, limit - 1)
        if last == ord("\n") and limit > 1:
            limit -= 1
    _emit(final.root, out, limit, {}, [_CACHE_BUDGET])
    out.flush()
    return sim


def _byte_at(node: Node, offset: int) -> int:
    while node.children:
        for child in node.children:
            if offset < child.size:
                node = child
                break
            offset -= child.size
    for line in node.lines:
        if offset <= len(line):
            return line[offset] if offset < len(line) else ord("\n")
        offset -= len(line) + 1
    raise IndexError(offset)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a deterministic, seed-like bloated rmtab (see module docstring)."
    )
    parser.add_argument("--size", default="16M", help="file size, e.g. 200K, 16M, 1.6G")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("-o", "--output", required=True, help="output file, '-' for stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the history")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.output == "-":
        sim = generate(sys.stdout.buffer, size, args.seed)
    else:
        with open(args.output, "wb") as out:
            sim = generate(out, size, args.seed)
    if args.verbose:
        for entry in sim.log:
            print(entry, file=sys.stderr)
        print(f"{sim.failovers} failovers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

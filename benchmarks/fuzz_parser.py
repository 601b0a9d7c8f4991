#!/usr/bin/env python3
"""Coverage-guided fuzzing of the rmtab parser, formatter and streaming reader.

Drives :func:`rmtabtool.parse_line`, :func:`rmtabtool.format_entry` and
:func:`rmtabtool.read_table` with libFuzzer (through atheris) and checks, on
every input:

* nothing raises, whatever the bytes (a crash is any exception);
* ``parse_line(format_entry(e)) == e`` for every accepted line, and the
  formatted line is canonical: it formats to itself again, ends in exactly
  ``:0x%08x\\n``, and rpc.mountd's own parser (``tests/mountd_model.py``, an
  oracle written from nfs-utils, not from rmtabtool) reads it back as one entry
  with the same client (IPv6 ``:`` as ``;``), path and count, without stopping;
* ``Entry(client, path, count)`` built from fuzzed fields either raises
  ValueError or round-trips the same way;
* ``read_table`` of the input as a file equals a naive line-by-line reader
  (parse every line, merge by max count, first-seen order, rejected lines
  counted), and does not depend on the read size (a fuzzed chunk size from
  1 byte up gives the same table, rejected lines and counters). The input is
  also read bloated (repeated 4-10 times with small changes, like the seed
  incident's files), with the reader's repeated-segment thresholds lowered so
  that its segment-prediction path runs on small inputs.

Not in CI's critical path: run it by hand for a bounded time.

Usage (atheris is not a project dependency; give it its own venv)::

    python3 -m venv /tmp/fuzz-venv
    /tmp/fuzz-venv/bin/pip install atheris -e .
    /tmp/fuzz-venv/bin/python benchmarks/fuzz_parser.py --seconds 600 \\
        --corpus /tmp/rmtab-corpus --artifacts /tmp/rmtab-crashes/

``--seconds N`` bounds the run (libFuzzer's ``-max_total_time``); ``--corpus DIR``
keeps the inputs that found new coverage between runs (seeded with typical and
nasty rmtab lines when empty); ``--artifacts DIR/`` is where a failing input is
saved (``crash-<sha1>``); replay one with ``python benchmarks/fuzz_parser.py
--replay FILE``. Extra arguments after ``--`` go to libFuzzer unchanged (e.g.
``-- -jobs=2 -workers=2``). Without atheris, ``--engine random`` runs the same
checks on random and mutated inputs (no coverage guidance). Exit status 0 means
no property was violated within the time given.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # mountd_model: the independent oracle
sys.path.insert(0, str(ROOT))

import mountd_model  # noqa: E402  (needs the path above)

try:
    import atheris
except ImportError:  # the random engine still works
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["rmtabtool"]):
        from rmtabtool import entry as entry_mod
        from rmtabtool import table as table_mod
else:
    from rmtabtool import entry as entry_mod
    from rmtabtool import table as table_mod

# The reader's repeated-segment path normally engages on big files only; these
# are the small values tests/test_reader_parallel.py uses to reach it with
# small inputs (class attributes: this process only).
for _name, _value in {
    "SAMPLE_LINES": 8,
    "SEGMENT_TARGET": 96,
    "SEGMENT_MIN": 8,
    "SEGMENT_WAIT": 512,
    "CHECK_BYTES": 4096,
    "CHECK_SEGMENTS": 64,
}.items():
    if hasattr(table_mod._Reader, _name):
        setattr(table_mod._Reader, _name, _value)

Entry = entry_mod.Entry
Rejected = entry_mod.Rejected
format_entry = entry_mod.format_entry
parse_line = entry_mod.parse_line

SEEDS: list[bytes] = [
    b"10.0.0.1:/srv/data:0x00000001\n",
    b"fe80;;1%eth0:/srv/x:0x00000002\n",
    b"fe80::1:/srv/x:0x1\n",
    b"::ffff:10.0.0.1:/srv/x\n",
    b"host.example:/srv/x:0x00000000\n10.0.0.1:/srv/data:0x00000001\n",
    b"\n10.0.0.1:/srv/a:0x00000001\n# comment:/x:0x1\n",
    b"10.0.0.1:/srv/a:0x00000001\r\n10.0.0.1:/srv/a:017\n10.0.0.1:/srv/a:99999999999\n",
    b"10.0.0.1:/srv/a\xe9:0x00000001\n10.0.0.1:relative:0x1\n10.0.0.1:/a:b:0x1\n",
    b"c:/" + b"p" * 2040 + b":0x00000001\n",
    b"c" * 1025 + b":/x:0x00000001\n",
    b"10.0.0.1:/srv/a:0x00000001",
    b"10.0.0.1:/srv/a:0x1\x00junk\n\x00\n:/x:1\n",
]


class PropertyViolation(AssertionError):
    """A property of the parser/formatter/reader does not hold for this input."""


def check(condition: bool, message: str, *context: object) -> None:
    if not condition:
        raise PropertyViolation(message + "".join(f"\n  {c!r}" for c in context))


def check_roundtrip(e: Any, source: object) -> None:
    """parse(format(e)) == e, the line is canonical, and mountd reads it back."""
    line = format_entry(e)
    again = parse_line(line)
    if not isinstance(again, Entry):
        raise PropertyViolation(
            f"a formatted entry is rejected\n  {source!r}\n  {line!r}\n  {again!r}"
        )
    check(again == e, "parse(format(e)) != e", source, e, line, again)
    check(format_entry(again) == line, "format is not idempotent", source, line)
    check(line.endswith(b"\n") and line.count(b"\n") == 1, "not one terminated line", line)
    suffix = line[-12:]
    check(
        suffix[:3] == b":0x" and all(c in b"0123456789abcdef" for c in suffix[3:11]),
        "count is not 0x%08x",
        line,
    )
    check(len(line) <= entry_mod.MAX_LINE, "canonical line longer than mountd's fgets", line)
    view = mountd_model.mountd_read(line)
    check(view.stopped_at_line is None, "mountd stops at a canonical line", line)
    want = mountd_model.MountdEntry(e.client.replace(b":", b";"), e.path, e.count)
    check(view.entries == [want], "mountd reads a canonical line differently", line, view)


def check_line(data: bytes) -> None:
    parsed = parse_line(data)
    check(isinstance(parsed, (Entry, Rejected)), "parse_line returned something else", data)
    if isinstance(parsed, Entry):
        check_roundtrip(parsed, data)
    else:
        raw = data[:-1] if data.endswith(b"\n") else data
        check(parsed.line == raw, "a rejected line does not keep its bytes", data, parsed)


def check_fields(data: bytes) -> None:
    """Entry() from fuzzed fields: ValueError, or a valid, round-tripping entry."""
    parts = data.split(b"\x00\x01", 2)
    if len(parts) < 2:
        return
    count = int.from_bytes(parts[2][:5], "big") if len(parts) == 3 else 1
    try:
        e = Entry(parts[0], parts[1], count)
    except ValueError:
        return
    check_roundtrip(e, data)


def naive_read(
    data: bytes,
) -> tuple[list[tuple[bytes, bytes, int]], list[tuple[bytes, str, int, int]], int]:
    """The obvious reader: every line parsed, max-count merge, first-seen order."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    table: dict[tuple[bytes, bytes], int] = {}
    rejected: dict[bytes, list[Any]] = {}
    for number, line in enumerate(lines, 1):
        parsed = parse_line(line)
        if isinstance(parsed, Entry):
            old = table.get(parsed.key)
            table[parsed.key] = parsed.count if old is None else max(old, parsed.count)
        elif line in rejected:
            rejected[line][3] += 1
        else:
            rejected[line] = [parsed.line, parsed.reason.value, number, 1]
    return (
        [(c, p, n) for (c, p), n in table.items()],
        [(r[0], r[1], r[2], r[3]) for r in rejected.values()],
        len(lines),
    )


def summary(result: Any) -> tuple[Any, ...]:
    return (
        [(e.client, e.path, e.count) for e in result.table],
        [(r.line, r.reason.value, r.first_line, r.occurrences) for r in result.rejected],
        result.lines,
        result.bytes_read,
        result.missing_final_newline,
        result.mountd_stops_at_line,
    )


def check_table(data: bytes, chunk_size: int) -> None:
    whole = table_mod.read_bytes(data)
    entries, rejected, lines = naive_read(data)
    got = summary(whole)
    check(got[0] == entries, "read_table's table differs from the naive reader", data)
    check(got[1] == rejected, "read_table's rejected lines differ from the naive reader", data)
    check(got[2] == lines, "read_table counts lines differently", data, got[2], lines)
    check(got[3] == len(data), "bytes_read is not the input size", data)
    check(
        got[4] == (data != b"" and not data.endswith(b"\n")),
        "missing_final_newline is wrong",
        data,
    )
    chunked = table_mod.read_table(io.BytesIO(data), chunk_size=chunk_size)
    check(summary(chunked) == got, f"read_table depends on the chunk size ({chunk_size})", data)
    for e in whole.table:
        check_roundtrip(e, data)


def bloat(body: bytes, copies: int) -> bytes:
    """A seed-like file from ``body``: its lines again and again, a line lost
    here (a UMNT between two restores), one repeated there (a MNT)."""
    lines = body.split(b"\n")
    out = []
    for i in range(copies):
        copy = lines[:]
        if i % 3 == 1 and len(copy) > 1:
            del copy[i % len(copy)]
        elif i % 3 == 2:
            copy.insert(i % (len(copy) + 1), copy[(i * 7) % len(copy)])
        out.append(b"\n".join(copy))
    return b"\n".join(out)


def test_one_input(data: bytes) -> None:
    """One fuzz input: the first byte picks a chunk size and how many times the
    rest is repeated (bloated files drive the reader's repeated-segment path)."""
    if not data:
        return
    chunk_size = 1 + data[0] % 64
    copies = 1 + (data[0] >> 6) * 3  # 1, 4, 7 or 10
    body = data[1:]
    check_line(body)
    first_line = body.split(b"\n", 1)[0]
    if first_line != body:
        check_line(first_line + b"\n")
    check_fields(body)
    check_table(body if copies == 1 else bloat(body, copies), chunk_size)


# ---------------------------------------------------------------- engines


def seed_corpus(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed-{i:02d}").write_bytes(bytes([i]) + seed)


def run_atheris(args: argparse.Namespace, extra: Sequence[str]) -> int:
    assert atheris is not None
    argv = [sys.argv[0], f"-max_total_time={args.seconds}", "-max_len=8192", "-timeout=10"]
    if args.artifacts:
        Path(args.artifacts).mkdir(parents=True, exist_ok=True)
        argv.append(f"-artifact_prefix={os.path.join(args.artifacts, '')}")
    argv.extend(extra)
    if args.corpus:
        seed_corpus(Path(args.corpus))
        argv.append(args.corpus)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()  # exits the process (0, or 1 on a finding)
    return 0  # pragma: no cover


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        pos = rng.randint(0, len(buf))
        if op == 0:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif op == 1 and buf:
            del buf[min(pos, len(buf) - 1)]
        elif op == 2:
            buf[pos:pos] = rng.choice([b":", b"\n", b";", b"/", b"0x", b"\x00", b"\r", b"#", b" "])
        elif op == 3 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 64)]
        else:
            buf[pos:pos] = rng.choice(SEEDS)
    return bytes(buf[:8192])


def run_random(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    pool = [bytes([i]) + s for i, s in enumerate(SEEDS)]
    runs = 0
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(pool)) if rng.random() < 0.9 else rng.randbytes(64)
        try:
            test_one_input(data)
        except Exception:
            save_crash(args, data)
            raise
        if rng.random() < 0.01 and len(pool) < 4096:
            pool.append(data)
        runs += 1
    print(f"random engine: {runs} inputs, no property violated", file=sys.stderr)
    return 0


def save_crash(args: argparse.Namespace, data: bytes) -> None:
    import hashlib

    where = Path(args.artifacts or ".")
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    print(f"failing input saved to {path}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in raw:
        cut = raw.index("--")
        raw, extra = raw[:cut], raw[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz")
    parser.add_argument("--corpus", help="corpus directory (kept between runs)")
    parser.add_argument("--artifacts", help="where failing inputs are saved (end with /)")
    parser.add_argument("--engine", choices=["atheris", "random"], default="atheris")
    parser.add_argument("--seed", type=int, default=1, help="random engine seed")
    parser.add_argument("--replay", metavar="FILE", help="run the checks on one saved input")
    args = parser.parse_args(raw)
    if args.replay:
        data: Union[bytes, bytearray] = Path(args.replay).read_bytes()
        test_one_input(bytes(data))
        print(f"{args.replay}: no property violated", file=sys.stderr)
        return 0
    if args.engine == "atheris":
        if atheris is None:
            print(
                "atheris is not installed (see the docstring); try --engine random", file=sys.stderr
            )
            return 2
        return run_atheris(args, extra)
    return run_random(args)


if __name__ == "__main__":
    sys.exit(main())

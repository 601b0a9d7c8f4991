"""Garbage in, through every command: no traceback, a table exit code, nothing lost.

Hypothesis feeds arbitrary bytes (and rmtab-shaped garbage, which reaches deeper)
as files and on stdin to stats (also with --prometheus), dedupe, merge, backup,
restore and forget, with and without --json/--strict/--drop-zero, through typer's
CliRunner. The laws:

* never a traceback; the exit code is one of issue 4's table, and never 70
  (an internal error on some input is a bug); bytes alone are never an error
  unless --strict (65) or a stats threshold (1) asks for one;
* with --json, stdout is exactly one JSON object;
* everything written into an rmtab is canonical (``client:/path:0x%08x``, one
  line per (client, path)) and parses back to itself;
* lossless: every input line of a file rewritten in place is either represented
  by an output entry or appended byte-exact to ``<file>.rejects``; read-only
  sources are never modified;
* dedupe is idempotent: a second run leaves the file identical;
* a metrics file is valid node_exporter textfile-collector input and tells the
  truth about the file.

The expected tables are computed here from rpc.mountd-style line semantics (one
entry per (client, path), the max count); rmtabtool's own parser decides only
which lines are valid, and the tests then hold it to that decision.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rmtabtool import Entry, format_entry, parse_line
from rmtabtool.cli import app
from rmtabtool.safefile import temp_name_pattern

Key = tuple[bytes, bytes]

CANONICAL = re.compile(rb"[^:\n]+:/[^:\n]*:0x[0-9a-f]{8}")
#: exit codes of issue 4's table, less 70: an internal error is a bug here
ALLOWED = {0, 1, 2, 65, 66, 73, 74, 75, 77}
EXPORT = "/srv/data"
#: ways to name an export on the command line (all but "/" mean /srv/data)
EXPORT_SPELLINGS = ["/srv/data", "/srv/data/", "/srv//data", "/srv/data/sub/..", "/"]
JSON_KEYS = {
    "command",
    "file",
    "changed",
    "dry_run",
    "lines_in",
    "entries_out",
    "duplicates_removed",
    "rejected",
    "rejects_file",
    "lock_wait_seconds",
    "lock_hold_seconds",
}

#: modest by default (the whole file stays well under a minute); raise it for a
#: long hunt: RMTABTOOL_FUZZ_EXAMPLES=5000 pytest tests/test_cli_fuzz.py
FUZZ = settings(
    max_examples=int(os.environ.get("RMTABTOOL_FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------- inputs

CLIENT_BITS = [
    b"10.0.0.1",
    b"10.0.0.2",
    b"fe80;;1",
    b"fe80::1",
    b"FE80::1",
    b"2001:db8::1%eth0",
    b"host.example",
    b"#host",
    b"",
    b" 10.0.0.1",
    b"a\tb",
    b"\xff\xfe",
    b"a\x00b",
]
PATH_BITS = [
    b"/srv/data",
    b"/srv/data/sub",
    b"/srv/data/",
    b"/srv/datax",
    b"/srv/other",
    b"/srv/data/\xe9t\xe9",
    b"/srv/data/a b",
    b"/srv/\r",
    b"relative",
    b"",
    b"/a:b",
    b"/" + b"x" * 1030,
]
COUNT_BITS = [
    b"0x00000001",
    b"0x00000002",
    b"0x00000000",
    b"0x1",
    b"1",
    b"0",
    b"010",
    b"0X0000000A",
    b"0xffffffff",
    b"0x100000000",
    b"99999999999999999999",
    b"-1",
    b"",
    b"0x",
    b"1z",
    b" 1",
    b"0x00000001\r",
]


@st.composite
def rmtab_line(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    line = draw(st.sampled_from(CLIENT_BITS)) + b":" + draw(st.sampled_from(PATH_BITS))
    if draw(st.booleans()):
        line += b":" + draw(st.sampled_from(COUNT_BITS))
    return line


@st.composite
def rmtab_shaped(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(rmtab_line(), max_size=12))
    data = b"\n".join(lines)
    if lines and draw(st.integers(0, 4)) > 0:
        data += b"\n"
    return data


#: arbitrary bytes, and garbage shaped like an rmtab (which gets past the parser)
files = st.one_of(st.binary(max_size=300), rmtab_shaped(), rmtab_shaped())


# ---------------------------------------------------------------- the oracle


def lines_of(data: bytes) -> list[bytes]:
    """Lines as a reader that splits on b'\\n' sees them (a last line may lack it)."""
    if not data:
        return []
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return lines


@dataclass
class Parsed:
    """What a file holds: the table (max count per key, first-seen order) and rejects."""

    table: dict[Key, int]
    rejected: list[bytes]  # distinct, first-seen order

    @property
    def rejected_any(self) -> bool:
        return bool(self.rejected)


def parse(data: bytes) -> Parsed:
    table: dict[Key, int] = {}
    rejected: list[bytes] = []
    for line in lines_of(data):
        item = parse_line(line)
        if isinstance(item, Entry):
            table[item.key] = max(table.get(item.key, 0), item.count)
        elif line not in rejected:
            rejected.append(line)
    return Parsed(table, rejected)


def merged(*tables: dict[Key, int]) -> dict[Key, int]:
    out: dict[Key, int] = {}
    for table in tables:
        for key, count in table.items():
            out[key] = max(out.get(key, 0), count)
    return out


def in_export(path: bytes, export: str = EXPORT, *, exact: bool = False) -> bool:
    """Plain comparison on the normalised export: the directory or below it."""
    name = os.fsencode(os.path.normpath(export))
    if path == name:
        return True
    return not exact and path.startswith(name.rstrip(b"/") + b"/")


def drop_zero(table: dict[Key, int], drop: bool) -> dict[Key, int]:
    return {k: n for k, n in table.items() if n or not drop}


def canonical_table(data: bytes) -> dict[Key, int]:
    """Everything rmtabtool writes into an rmtab: canonical, one line per key."""
    assert data == b"" or data.endswith(b"\n"), data[-60:]
    table: dict[Key, int] = {}
    for line in lines_of(data):
        assert CANONICAL.fullmatch(line), f"not canonical: {line!r}"
        entry = parse_line(line)
        assert isinstance(entry, Entry), f"does not parse back: {line!r}"
        assert format_entry(entry) == line + b"\n", f"does not format back: {line!r}"
        assert entry.key not in table, f"duplicate (client, path): {line!r}"
        table[entry.key] = entry.count
    return table


def rejects_of(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data.endswith(b"\n"), "rejected lines are newline-terminated"
    return lines_of(data)


def assert_lossless(data: bytes, out: dict[Key, int], appended: Sequence[bytes]) -> None:
    """Each input line is an output entry (key present, count at least its own) or
    was appended, byte-exact, to the rejects file (each distinct line once)."""
    assert len(set(appended)) == len(appended), "a rejected line appended twice"
    for line in lines_of(data):
        if line in appended:
            continue
        entry = parse_line(line)
        assert isinstance(entry, Entry), f"rejected line lost (not in .rejects): {line!r}"
        assert entry.key in out, f"entry lost: {line!r}"
        assert out[entry.key] >= entry.count, f"count lowered: {line!r}"


# ---------------------------------------------------------------- textfile format

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_FLOAT = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:[+-]?inf|nan)"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? ({_FLOAT})")
_HELP = re.compile(rf"# HELP ({_NAME}) (?:[^\\]|\\[\\n])*")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")

Series = tuple[str, tuple[tuple[str, str], ...]]


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    """``a="x",b="y"`` -> pairs, values unescaped; anything else fails the test."""
    pairs = []
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, f"bad label list at {text[pos:]!r}"
        value = re.sub(r"\\(.)", lambda e: "\n" if e[1] == "n" else e[1], m[2])
        pairs.append((m[1], value))
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", f"bad label list at {text[pos:]!r}"
            pos += 1
    names = [n for n, _ in pairs]
    assert len(set(names)) == len(names), f"a label twice: {text!r}"
    assert not any(n.startswith("__") for n in names), f"reserved label name: {text!r}"
    return tuple(pairs)


def textfile_samples(data: bytes) -> dict[Series, float]:
    r"""Check ``data`` is textfile-collector input in its strict form; its samples.

    What node_exporter refuses (it then reports ``node_textfile_scrape_error
    1`` and drops the file): not UTF-8, a last line without newline, a
    timestamp, a second HELP or TYPE, an escape other than ``\\``, ``\"``,
    ``\n``, a label twice, a value that is not a number. What it takes but
    mangles, also refused here: a series twice (one value is dropped), samples
    of a family apart, no TYPE (untyped), label names that differ within a
    family (filled with empty values). (Checked by hand against
    prometheus-node-exporter 1.5.0: this checker's cases below, and 200 random
    stats outputs with hostile paths and file names, all accepted.)
    """
    text = data.decode("utf-8")  # label values must be UTF-8
    assert text.endswith("\n"), repr(text[-80:])
    samples: dict[Series, float] = {}
    typed: set[str] = set()
    helped: set[str] = set()
    closed: set[str] = set()  # families whose lines are over
    current = ""
    label_names: dict[str, tuple[str, ...]] = {}

    def enter(name: str) -> None:
        nonlocal current
        if name != current:
            assert name not in closed, f"{name}: lines not together"
            if current:
                closed.add(current)
            current = name

    for line in text[:-1].split("\n"):
        if line.startswith(("# HELP ", "# TYPE ")):
            kind = line[2:6]
            m = (_HELP if kind == "HELP" else _TYPE).fullmatch(line)
            assert m, f"bad {kind} line: {line!r}"
            enter(m[1])
            declared = helped if kind == "HELP" else typed
            assert m[1] not in declared, f"second {kind} for {m[1]}"
            assert not any(n == m[1] for n, _ in samples), f"{kind} after samples: {line!r}"
            declared.add(m[1])
        else:
            assert not line.startswith("#"), f"stray comment: {line!r}"
            m = _SAMPLE.fullmatch(line)
            assert m, f"not a sample (or a timestamp): {line!r}"
            name = m[1]
            enter(name)
            assert name in typed, f"a sample of {name} without its TYPE"
            labels = _labels(m[2] or "")
            assert label_names.setdefault(name, tuple(sorted(n for n, _ in labels))) == tuple(
                sorted(n for n, _ in labels)
            ), f"{name}: label names differ between samples"
            series = (name, tuple(sorted(labels)))
            assert series not in samples, f"duplicate series: {line!r}"
            samples[series] = float(m[3])
    return samples


def test_the_textfile_checker_refuses_malformed_and_mangled_metrics() -> None:
    good = b'# HELP m A \\\\ b.\n# TYPE m gauge\nm{a="x\\"y\\n",b="\\\\"} 1.5\nm{a="",b="z"} 2\n'
    assert textfile_samples(good) == {
        ("m", (("a", 'x"y\n'), ("b", "\\"))): 1.5,
        ("m", (("a", ""), ("b", "z"))): 2.0,
    }
    bad = [
        # refused by node_exporter
        b"# TYPE m gauge\nm 1",  # no final newline
        b"# TYPE m gauge\nm 1 1700000000000\n",  # a timestamp
        b"# TYPE m gauge\nm 1\n# TYPE m gauge\n",  # second TYPE
        b'# TYPE m gauge\nm{a="\\x"} 1\n',  # an escape the format has not
        b"# HELP m A \\ b.\n# TYPE m gauge\nm 1\n",  # nor in HELP
        b'# TYPE m gauge\nm{a="x\ny"} 1\n',  # a raw newline in a value
        b'# TYPE m gauge\nm{a="x",a="y"} 1\n',
        b"# TYPE m gauge\nm one\n",
        b'# TYPE m gauge\nm{a="\xff"} 1\n',  # not UTF-8
        # taken, but mangled
        b"# TYPE m gauge\nm 1\nm 2\n",  # duplicate series: "m 2" is lost
        b"# TYPE m gauge\n# TYPE n gauge\nn 1\nm 1\n",  # not together
        b"m 1\n",  # no TYPE
        b'# TYPE m gauge\nm{a="x"} 1\nm{b="x"} 1\n',  # becomes a="x",b="" and a="",b="x"
    ]
    for data in bad:
        try:
            textfile_samples(data)
        except (AssertionError, UnicodeDecodeError):
            continue
        raise AssertionError(f"accepted: {data!r}")


# ---------------------------------------------------------------- running the CLI


def _runner() -> CliRunner:
    # click < 8.2 (older typer) mixes stderr into stdout unless told not to;
    # click >= 8.2 and the click bundled in typer >= 0.26 always keep them apart
    # and have no such parameter.
    kwargs: dict[str, Any] = {}
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        kwargs["mix_stderr"] = False
    return CliRunner(**kwargs)


@dataclass
class Run:
    code: int
    stdout: bytes
    stderr: bytes

    def json(self) -> dict[str, Any]:
        """Exactly one JSON object, nothing else on stdout."""
        text = self.stdout.decode("utf-8")
        assert text.endswith("\n"), text
        assert text.count("\n") == 1, text
        obj = json.loads(text)
        assert isinstance(obj, dict)
        return obj


def cli(args: Sequence[str], *, stdin: bytes = b"", live: Path) -> Run:
    env = {"RMTABTOOL_RMTAB": str(live), "TERM": "dumb", "NO_COLOR": "1", "RMTABTOOL_DEBUG": None}
    result = _runner().invoke(app, list(args), input=stdin, env=env, catch_exceptions=False)
    stdout = result.stdout_bytes or b""
    try:
        stderr = result.stderr_bytes or b""
    except ValueError:  # click < 8.2 when stderr was mixed in
        stderr = b""
    code = result.exit_code
    assert code in ALLOWED, (args, code, stderr)
    assert b"Traceback" not in stdout + stderr, stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    run = Run(code, stdout, stderr)
    if code == 2:
        assert stdout == b"", "a usage error prints nothing on stdout"
    elif "--json" in args:
        run.json()  # results and errors alike: one JSON object
    return run


#: fsync dominates the run time on a busy disk; these laws are about content, so
#: use a tmpfs when there is one (the subprocess tests keep the real disk)
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rmtabtool-fuzz-", dir=SCRATCH) as name:
        yield Path(name)


def flags(as_json: bool, strict: bool = False, zero: bool = False) -> list[str]:
    return [
        *(["--json"] if as_json else []),
        *(["--strict"] if strict else []),
        *(["--drop-zero"] if zero else []),
    ]


# ---------------------------------------------------------------- stats


def stats_sources(f: Path, data: bytes) -> list[tuple[list[str], bytes]]:
    """``stats`` of the file ``f`` holding ``data``, of stdin, and of the live
    rmtab (``f`` again, named by RMTABTOOL_RMTAB): arguments and stdin."""
    return [(["stats", str(f)], b""), (["stats", "-"], data), (["stats"], b"")]


@FUZZ
@given(data=files, as_json=st.booleans(), fail_on_rejected=st.booleans())
def test_stats_of_garbage_file_and_stdin(
    data: bytes, as_json: bool, fail_on_rejected: bool
) -> None:
    with workdir() as d:
        f = d / "rmtab"
        f.write_bytes(data)
        extra = ["--fail-on-rejected"] if fail_on_rejected else []
        expected = parse(data)
        code = 1 if fail_on_rejected and expected.rejected_any else 0
        for args, stdin in stats_sources(f, data):
            run = cli([*args, *extra, *flags(as_json)], stdin=stdin, live=f)
            assert run.code == code, (args, run.stderr)
            if as_json:
                report = run.json()
                assert report["bytes"] == len(data)
                assert report["lines"] == len(lines_of(data))
                assert report["entries"] == len(expected.table)
                assert report["rejected"] == sum(
                    1 for line in lines_of(data) if line in expected.rejected
                )
                assert isinstance(report["rejected_by_reason"], dict)
                assert sum(p["mounts"] for p in report["paths"]) == sum(expected.table.values())
            elif code == 0:
                assert run.stdout  # a human summary
        assert f.read_bytes() == data  # stats never writes


#: file names as they come from a command line: bytes that are not UTF-8 reach
#: the program as surrogates (a label must still be UTF-8)
FILE_NAMES = st.sampled_from([b"rmtab", b"r\xe9mtab", b'r\xffm"t\\ab', b"rm\ntab"])


@FUZZ
@given(
    data=files,
    name=FILE_NAMES,
    old=st.one_of(st.none(), st.binary(max_size=200)),
    to_stdout=st.booleans(),
    as_json=st.booleans(),
    fail_on_rejected=st.booleans(),
)
def test_stats_prometheus_of_garbage_is_valid_textfile_format(
    data: bytes,
    name: bytes,
    old: bytes | None,
    to_stdout: bool,
    as_json: bool,
    fail_on_rejected: bool,
) -> None:
    """Whatever the rmtab holds, whatever the file is called and whatever the
    metrics file held before: node_exporter can read the new one, and its
    numbers are the file's."""
    with workdir() as d:
        f = d / os.fsdecode(name)
        f.write_bytes(data)
        prom = d / "rmtab.prom"
        if old is not None:
            prom.write_bytes(old)
        extra = ["--fail-on-rejected"] if fail_on_rejected else []
        expected = parse(data)
        code = 1 if fail_on_rejected and expected.rejected_any else 0
        for args, stdin in stats_sources(f, data):
            to = "-" if to_stdout else str(prom)
            # -q: the human summary is test_stats_of_garbage_file_and_stdin's business
            run = cli(
                [*args, "-q", "--prometheus", to, *extra, *flags(as_json)], stdin=stdin, live=f
            )
            if to_stdout and as_json:
                assert run.code == 2  # both want stdout
                continue
            assert run.code == code, (args, run.stderr)
            samples = textfile_samples(run.stdout if to_stdout else prom.read_bytes())

            def value(metric: str, s: dict[Series, float] = samples) -> float:
                (found,) = [v for (n, _), v in s.items() if n == metric]
                return found

            assert value("rmtabtool_rmtab_bytes") == len(data)
            assert value("rmtabtool_rmtab_lines") == len(lines_of(data))
            assert value("rmtabtool_rmtab_entries") == len(expected.table)
            rejected = sum(1 for line in lines_of(data) if line in expected.rejected)
            assert (
                sum(v for (n, _), v in samples.items() if n == "rmtabtool_rmtab_rejected_lines")
                == rejected
            )
            assert sum(
                v for (n, _), v in samples.items() if n == "rmtabtool_rmtab_path_mounts"
            ) == sum(expected.table.values())
            files_named = {dict(labels)["file"] for _, labels in samples}
            assert len(files_named) == 1, files_named
        assert f.read_bytes() == data  # stats never writes its input
        assert not [p for p in d.iterdir() if temp_name_pattern(prom).fullmatch(p.name)]
        if to_stdout:
            assert (prom.read_bytes() if prom.exists() else None) == old


# ---------------------------------------------------------------- dedupe


@FUZZ
@given(data=files, as_json=st.booleans(), strict=st.booleans(), zero=st.booleans())
def test_dedupe_in_place_is_canonical_lossless_and_idempotent(
    data: bytes, as_json: bool, strict: bool, zero: bool
) -> None:
    with workdir() as d:
        f = d / "rmtab"
        f.write_bytes(data)
        rejects = d / "rmtab.rejects"
        expected = parse(data)

        # to stdout first: FILE is left alone, the rejected lines only reported
        to_stdout = cli(["dedupe", str(f), "-o", "-", *flags(False, strict, zero)], live=f)
        assert f.read_bytes() == data
        assert not rejects.exists()

        run = cli(["dedupe", str(f), *flags(as_json, strict, zero)], live=f)
        if strict and expected.rejected_any:
            assert (run.code, to_stdout.code) == (65, 65)
            assert to_stdout.stdout == b""
            assert f.read_bytes() == data
            assert not rejects.exists()
            return
        assert (run.code, to_stdout.code) == (0, 0), run.stderr
        out = f.read_bytes()
        table = canonical_table(out)
        assert out == to_stdout.stdout
        appended = rejects_of(rejects)
        assert appended == expected.rejected  # distinct, first-seen order, byte-exact
        assert table == drop_zero(expected.table, zero)
        if not zero:
            assert_lossless(data, table, appended)
        if as_json:
            report = run.json()
            assert set(report) >= JSON_KEYS
            assert report["command"] == "dedupe"
            assert report["entries_out"] == len(table)
            assert report["changed"] == (out != data)
            assert report["rejects_file"] == (str(rejects) if appended else None)

        # a second run changes nothing at all
        again = cli(["dedupe", str(f), "--json", *flags(False, strict, zero)], live=f)
        assert again.code == 0
        assert again.json()["changed"] is False
        assert f.read_bytes() == out
        assert rejects_of(rejects) == appended


@FUZZ
@given(data=files, via_link=st.booleans(), zero=st.booleans())
def test_output_onto_the_input_is_an_in_place_rewrite(
    data: bytes, via_link: bool, zero: bool
) -> None:
    """`dedupe F -o F` and `merge F -o F` rewrite F: its rejected lines must be
    appended to a .rejects file exactly as with an in-place dedupe, never vanish.
    (Through a symlink, either name's .rejects will do: in place on a symlinked
    file puts it beside the link.)"""
    with workdir() as d:
        reference = d / "reference"
        reference.write_bytes(data)
        live = d / "live"
        assert cli(["dedupe", str(reference), *flags(False, zero=zero)], live=live).code == 0
        for command in ("dedupe", "merge"):
            f = d / command
            f.write_bytes(data)
            target = f
            if via_link:
                target = d / f"{command}-link"
                target.symlink_to(f)
            run = cli([command, str(f), "-o", str(target), *flags(False, zero=zero)], live=live)
            assert run.code == 0, run.stderr
            assert f.read_bytes() == reference.read_bytes(), command
            appended = rejects_of(d / f"{command}.rejects")
            if via_link:
                appended += rejects_of(d / f"{command}-link.rejects")
            assert appended == rejects_of(d / "reference.rejects"), command
            if not zero:
                assert_lossless(data, canonical_table(f.read_bytes()), appended)


@FUZZ
@given(data=files, strict=st.booleans(), zero=st.booleans(), as_json=st.booleans())
def test_dedupe_of_stdin_into_a_file(data: bytes, strict: bool, zero: bool, as_json: bool) -> None:
    with workdir() as d:
        out = d / "out"
        run = cli(
            ["dedupe", "-", "-o", str(out), *flags(as_json, strict, zero)],
            stdin=data,
            live=d / "live",
        )
        expected = parse(data)
        if strict and expected.rejected_any:
            assert run.code == 65
            assert not out.exists()
            return
        assert run.code == 0, run.stderr
        assert canonical_table(out.read_bytes()) == drop_zero(expected.table, zero)
        assert not (d / "out.rejects").exists()  # stdin is a read-only source
        assert not (d / "live").exists()


# ---------------------------------------------------------------- merge


@FUZZ
@given(
    one=files,
    two=files,
    into=files,
    as_json=st.booleans(),
    strict=st.booleans(),
    zero=st.booleans(),
)
def test_merge_to_stdout_file_and_into(
    one: bytes, two: bytes, into: bytes, as_json: bool, strict: bool, zero: bool
) -> None:
    with workdir() as d:
        a, b, target, out = d / "a", d / "b", d / "into", d / "out"
        a.write_bytes(one)
        b.write_bytes(two)
        target.write_bytes(into)
        live = d / "live"
        pa, pb, pt = parse(one), parse(two), parse(into)
        refuse = strict and (pa.rejected_any or pb.rejected_any)

        to_stdout = cli(["merge", str(a), "-", *flags(False, strict, zero)], stdin=two, live=live)
        to_file = cli(
            ["merge", str(a), str(b), "-o", str(out), *flags(as_json, strict, zero)], live=live
        )
        if refuse:
            assert (to_stdout.code, to_file.code) == (65, 65)
            assert to_stdout.stdout == b""
            assert not out.exists()
        else:
            assert (to_stdout.code, to_file.code) == (0, 0), to_file.stderr
            union = drop_zero(merged(pa.table, pb.table), zero)
            assert canonical_table(to_stdout.stdout) == union
            assert out.read_bytes() == to_stdout.stdout
            assert not (d / "out.rejects").exists()

        run = cli(
            ["merge", str(a), "-", "--into", str(target), *flags(as_json, strict, zero)],
            stdin=two,
            live=live,
        )
        if refuse or (strict and pt.rejected_any):
            assert run.code == 65
            assert target.read_bytes() == into
            assert not (d / "into.rejects").exists()
        else:
            assert run.code == 0, run.stderr
            result = canonical_table(target.read_bytes())
            assert result == drop_zero(merged(pt.table, pa.table, pb.table), zero)
            # only the file rewritten in place gives up its rejected lines
            appended = rejects_of(d / "into.rejects")
            assert appended == pt.rejected
            if not zero:
                assert_lossless(into, result, appended)
        # sources are read-only
        assert (a.read_bytes(), b.read_bytes()) == (one, two)
        assert not (d / "a.rejects").exists()
        assert not (d / "b.rejects").exists()


# ---------------------------------------------------------------- backup and restore


@FUZZ
@given(
    live_data=files,
    backup_data=files,
    as_json=st.booleans(),
    strict=st.booleans(),
    zero=st.booleans(),
    replace=st.booleans(),
    exact=st.booleans(),
    export=st.sampled_from(EXPORT_SPELLINGS),
)
def test_backup_and_restore_of_garbage(
    live_data: bytes,
    backup_data: bytes,
    as_json: bool,
    strict: bool,
    zero: bool,
    replace: bool,
    exact: bool,
    export: str,
) -> None:
    with workdir() as d:
        statedir = d / "varlibnfs"
        statedir.mkdir()
        live = statedir / "rmtab"
        live.write_bytes(live_data)
        saved = d / "shared" / "export.rmtab"
        saved.parent.mkdir()
        pl, pb = parse(live_data), parse(backup_data)

        def under(path: bytes) -> bool:
            return in_export(path, export, exact=exact)

        # backup: the export's valid entries, canonical; the live file is not touched
        scope = ["--exact"] if exact else []
        run = cli(
            ["backup", export, "--rmtab", str(live), "--to", str(saved), *scope, *flags(as_json)],
            live=live,
        )
        assert run.code == 0, run.stderr
        assert canonical_table(saved.read_bytes()) == {
            k: n for k, n in pl.table.items() if under(k[1])
        }
        assert live.read_bytes() == live_data
        assert not (statedir / "rmtab.rejects").exists()

        # restore a garbage backup into the garbage live rmtab
        saved.write_bytes(backup_data)
        args = [
            "restore",
            export,
            "--rmtab",
            str(live),
            "--from",
            str(saved),
            *scope,
            *(["--replace"] if replace else []),
            *flags(as_json, strict, zero),
        ]
        run = cli(args, live=live)
        if strict and (pl.rejected_any or pb.rejected_any):
            assert run.code == 65
            assert live.read_bytes() == live_data
            assert not (statedir / "rmtab.rejects").exists()
            return
        assert run.code == 0, run.stderr
        wanted = {k: n for k, n in pb.table.items() if under(k[1])}
        local = pl.table
        if replace:
            local = {k: n for k, n in local.items() if not under(k[1]) or k in wanted}
        result = canonical_table(live.read_bytes())
        assert result == drop_zero(merged(local, wanted), zero)
        appended = rejects_of(statedir / "rmtab.rejects")
        assert appended == pl.rejected  # the backup is read-only: only reported
        assert saved.read_bytes() == backup_data
        if not zero and not replace:
            assert_lossless(live_data, result, appended)
        if as_json:
            report = run.json()
            assert set(report) >= JSON_KEYS
            assert report["ignored_outside_export"] == len(pb.table) - len(wanted)

        # restoring k times gives the same file as restoring once
        once = live.read_bytes()
        assert cli(args, live=live).code == 0
        assert live.read_bytes() == once
        assert rejects_of(statedir / "rmtab.rejects") == appended


# ---------------------------------------------------------------- forget


@FUZZ
@given(
    data=files,
    client=st.one_of(
        st.none(),
        st.sampled_from(["10.0.0.1", "fe80::1", "fe80;;1", "host.example", "#host"]),
        st.text(max_size=12),
    ),
    path=st.one_of(st.none(), st.sampled_from(["/srv/data", "/srv/data/sub", "/srv/x", "/"])),
    export=st.one_of(st.none(), st.sampled_from(EXPORT_SPELLINGS)),
    as_json=st.booleans(),
    strict=st.booleans(),
)
def test_forget_on_garbage(
    data: bytes,
    client: str | None,
    path: str | None,
    export: str | None,
    as_json: bool,
    strict: bool,
) -> None:
    with workdir() as d:
        live = d / "rmtab"
        live.write_bytes(data)
        expected = parse(data)
        filters = [
            *([f"--client={client}"] if client is not None else []),
            *([f"--path={path}"] if path is not None else []),
            *([f"--export={export}"] if export is not None else []),
        ]
        run = cli(["forget", *filters, *flags(as_json, strict)], live=live)
        if not filters:
            assert run.code == 2
            assert live.read_bytes() == data
            return
        if strict and expected.rejected_any:
            assert run.code == 65
            assert live.read_bytes() == data
            return
        assert run.code == 0, run.stderr

        def forgotten(key: Key) -> bool:
            """All given filters must match; IPv6 in either spelling."""
            c, p = key
            return (
                (client is None or c == os.fsencode(client).replace(b";", b":"))
                and (path is None or p == os.fsencode(path))
                and (export is None or in_export(p, export))
            )

        result = canonical_table(live.read_bytes())
        assert result == {k: n for k, n in expected.table.items() if not forgotten(k)}
        appended = rejects_of(d / "rmtab.rejects")
        assert appended == expected.rejected
        for line in lines_of(data):
            entry = parse_line(line)
            if not isinstance(entry, Entry):
                assert line in appended
            elif not forgotten(entry.key):
                assert entry.key in result
        if as_json:
            report = run.json()
            assert set(report) >= JSON_KEYS
            assert len(report["removed"]) == len(expected.table) - len(result)


def test_helpers_see_what_the_reader_sees() -> None:
    """The oracle's line splitting matches the reader's (a last line may lack '\\n')."""
    assert lines_of(b"") == []
    assert lines_of(b"\n") == [b""]
    assert lines_of(b"a\nb") == [b"a", b"b"]
    assert lines_of(b"a\n\n") == [b"a", b""]
    parsed = parse(b"h:/p:0x1\nh:/p:0x00000002\n\nh:/p\n\n")
    assert parsed.table == {(b"h", b"/p"): 2}
    assert parsed.rejected == [b""]

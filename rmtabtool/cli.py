"""The ``rmtabtool`` command: options -> library operations -> output and exit codes.

Only this module knows about typer and rich, and rich is imported only when a
human is looking at a terminal (``--json``, ``--quiet`` and piped output never
load it). stdout carries the data asked for; stderr carries warnings and the
one-line errors. Exit codes come from :mod:`rmtabtool.errors` (docs/exit-codes.md).
"""

import contextlib
import importlib
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Callable, List, NoReturn, Optional, TypeVar

import typer

from . import __version__, errors, operations
from .operations import Live, StatsResult, WriteResult, show_bytes, show_path

F = TypeVar("F", bound=Callable[..., Any])

EPILOG_STATS = """Examples:

  rmtabtool stats                         # the live rmtab

  rmtabtool stats --json /var/lib/nfs/rmtab | jq .bloat

  rmtabtool stats -q --max-bloat 2 --max-bytes 1M --fail-on-rejected || alert
"""
EPILOG_DEDUPE = """Examples:

  rmtabtool dedupe                        # the live rmtab, in place, locked

  rmtabtool dedupe --dry-run --json

  rmtabtool dedupe -o - bloated-rmtab > clean-rmtab
"""
EPILOG_MERGE = """Examples:

  rmtabtool merge node1/rmtab node2/rmtab -o merged

  rmtabtool merge /srv/data/.rmtab --into /var/lib/nfs/rmtab
"""
EPILOG_BACKUP = """Examples:

  rmtabtool backup /srv/data              # writes /srv/data/.rmtab

  rmtabtool backup /srv/data --to /shared/rmtab-data --missing-ok -q
"""
EPILOG_RESTORE = """Examples:

  rmtabtool restore /srv/data             # merges /srv/data/.rmtab into the live rmtab

  rmtabtool restore /srv/data --replace --missing-ok -q
"""
EPILOG_FORGET = """Examples:

  rmtabtool forget --client 10.0.0.7      # a decommissioned client

  rmtabtool forget --export /srv/old --dry-run

  rmtabtool forget --client fe80::1 --path /srv/data
"""

app = typer.Typer(
    name="rmtabtool",
    help="Keep an NFS server's rmtab small, correct and safe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _State:
    debug = os.environ.get("RMTABTOOL_DEBUG", "") not in ("", "0")
    stdout_failed = False


# ---------------------------------------------------------------- shared options

RmtabOpt = Annotated[
    Optional[str],
    typer.Option(
        "--rmtab",
        envvar=operations.RMTAB_ENV,
        metavar="PATH",
        help="The live rmtab (its directory is rpc.mountd's statedir).",
        show_default=operations.DEFAULT_RMTAB,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]


def _debug(value: bool) -> None:
    if value:
        _State.debug = True


#: ``--debug`` after the command as well as before it (the error hint's reader
#: types it at the end of the line they just ran)
DebugOpt = Annotated[
    bool,
    typer.Option(
        "--debug",
        callback=_debug,
        expose_value=False,
        help="Show a traceback on internal errors (as before the command).",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing on success; errors still go to stderr.")
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--lock-timeout", metavar="SECONDS", min=0.0, help="How long to wait for each lock."
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", "-n", help="Write nothing; report what would change.")
]
DropZeroOpt = Annotated[
    bool, typer.Option("--drop-zero", help="Also remove entries whose count is 0.")
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict", help="Refuse (exit 65, nothing written) if any input has a rejected line."
    ),
]
RejectsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--rejects",
        metavar="PATH",
        help="Where rejected lines of a file rewritten in place are appended.",
        show_default="<file>.rejects",
    ),
]
JobsOpt = Annotated[
    int,
    typer.Option(
        "--jobs", "-j", metavar="N", min=0, help="Reader processes for big files (0: automatic)."
    ),
]
ExactOpt = Annotated[
    bool, typer.Option("--exact", help="Match only the export directory itself, not below it.")
]


# ---------------------------------------------------------------- output


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _display(text: str, *, newlines: bool = True) -> str:
    """Text safe to show a person: undecodable bytes of file names and control
    characters (an escape sequence in a client's path) as \\xNN.

    ``newlines`` False also escapes tabs and line feeds (a value in a one-line row).
    """
    text = show_path(text)
    pattern = _CONTROL if newlines else re.compile(r"[\x00-\x1f\x7f]")
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _err(text: str) -> None:
    """Write to stderr now: a line must not wait in a buffer behind a crash or exit."""
    try:
        sys.stderr.write(_display(text))
        sys.stderr.flush()
    except OSError:
        pass  # nowhere left to report to; the exit code still says it


class _StdoutFailed(errors.IOFailure):
    """Writing what was asked for to stdout failed (a full disk behind `>`, EIO)."""


@contextlib.contextmanager
def _to_stdout() -> Iterator[None]:
    """Writes to stdout whose failure is exit 74 with one line on stderr.

    The broken stdout is swapped for /dev/null, so that neither the JSON error
    object nor the interpreter's final flush tries it again.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        _State.stdout_failed = True
        _silence_stdout()
        raise _StdoutFailed(f"cannot write to standard output: {exc.strerror or exc}") from exc


class Output:
    """Renders results; chooses JSON, quiet, plain text or rich on a terminal."""

    def __init__(self, *, as_json: bool, quiet: bool, data_on_stdout: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet
        # when stdout carries data (-o -), the human summary goes to stderr, and
        # only for a person at a terminal: pipelines and cron mail stay clean
        self.summary_stream = sys.stderr if data_on_stdout else sys.stdout
        self.summary_wanted = not data_on_stdout or sys.stderr.isatty()

    def warn(self, message: str) -> None:
        if (not self.quiet and not self.as_json) or (self.as_json and not self.quiet):
            _err(f"rmtabtool: warning: {message}\n")

    def json(self, payload: dict[str, Any]) -> None:
        import json  # only for --json: kept out of the start-up

        with _to_stdout():
            sys.stdout.write(json.dumps(payload, sort_keys=False) + "\n")

    def lines(self, rows: list[tuple[str, str]], title: str) -> None:
        """A short summary as label/value rows: rich on a terminal, plain otherwise."""
        if self.quiet or not self.summary_wanted:
            return
        stream = self.summary_stream
        rows = [(label, _display(value, newlines=False)) for label, value in rows]
        if stream.isatty() and not os.environ.get("NO_COLOR"):
            from rich.console import Console
            from rich.table import Table as RichTable
            from rich.text import Text

            console = Console(file=stream, highlight=False)
            table = RichTable(title=title, show_header=False, box=None, title_justify="left")
            table.add_column(style="bold")
            table.add_column()
            for label, value in rows:
                # Text, not a string: a path such as /srv/[red]x is no markup
                table.add_row(label, Text(value))
            with _to_stdout():
                console.print(table)
            return
        width = max((len(label) for label, _ in rows), default=0)
        with _to_stdout():
            stream.write(f"{title}\n")
            for label, value in rows:
                stream.write(f"  {label.ljust(width)}  {value}\n")
            stream.flush()


def _fail(message: str, code: int, *, as_json: bool = False) -> NoReturn:
    message = _display(message, newlines=False)
    # usage errors go to stderr only (the parser's own cannot know about --json)
    if as_json and code != errors.EXIT_USAGE and not _State.stdout_failed:
        import json

        try:
            sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")
            sys.stdout.flush()
        except OSError:
            _silence_stdout()
    prefix = "usage error" if code == errors.EXIT_USAGE else "error"
    _err(f"rmtabtool: {prefix}: {message}\n")
    raise typer.Exit(code)


def _guard(fn: Callable[[], None], *, as_json: bool) -> None:
    """Run a command body; map our errors to exit codes, bugs to 70."""
    try:
        fn()
    except typer.Exit:
        raise
    except errors.RmtabError as exc:
        _fail(str(exc), exc.exit_code, as_json=as_json)
    except KeyboardInterrupt as exc:
        # SIGINT, or SIGTERM/SIGHUP turned into SignalReceived by safefile after
        # it removed its temp file: the target is untouched -- unless the signal
        # came just after the rename. Exit like the shell.
        signum = getattr(exc, "signum", 2)
        replaced = getattr(exc, "replaced", None)
        if replaced is not None:
            message = (
                f"interrupted by signal {signum} after {replaced} was replaced "
                "(its new content is complete)"
            )
        else:
            message = f"interrupted by signal {signum}; nothing was changed"
        if as_json:
            _fail(message, 128 + signum, as_json=True)
        _err(f"rmtabtool: {message}\n")
        raise typer.Exit(128 + signum) from None
    except BrokenPipeError:
        # the reader of our stdout went away (e.g. `| head`): not our failure
        _silence_stdout()
        raise typer.Exit(errors.EXIT_IOERR) from None
    except Exception as exc:
        if _State.debug:
            traceback.print_exc()
        hint = (
            "" if _State.debug else " (run again with --debug or RMTABTOOL_DEBUG=1 for a traceback)"
        )
        _fail(
            f"internal error: {type(exc).__name__}: {exc}{hint}",
            errors.EXIT_SOFTWARE,
            as_json=as_json,
        )


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


PROGRESS_MIN_BYTES = 64 * 1024 * 1024


class _ProgressBar:
    """A rich progress bar on stderr for big inputs, only for a person at a terminal.

    Redrawn from the reader's own calls, never by rich's refresh thread: while
    another thread runs, the reader does not fork its workers (``--jobs``).
    """

    REFRESH_SECONDS = 0.1

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._drawn = 0.0

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self.enabled or total < PROGRESS_MIN_BYTES:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

            self._bar = Progress(
                "{task.description}",
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
                auto_refresh=False,
            )
            self._bar.start()
        task = self._tasks.get(name)
        if task is None:
            from rich.markup import escape

            label = f"reading {escape(_display(name, newlines=False))}"
            task = self._tasks[name] = self._bar.add_task(label, total=total)
        self._bar.update(task, completed=done)
        now = time.monotonic()
        if now - self._drawn >= self.REFRESH_SECONDS or done >= total:
            self._drawn = now
            self._bar.refresh()

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _stdin() -> Any:
    return sys.stdin.buffer


def _write_stdout(content: Optional[Iterable[bytes]]) -> None:
    if content is None:
        return
    out = sys.stdout.buffer
    buf: list[bytes] = []
    size = 0
    with _to_stdout():
        for line in content:
            buf.append(line)
            size += len(line)
            if size >= 1 << 16:
                out.write(b"".join(buf))
                buf, size = [], 0
        out.write(b"".join(buf))
        out.flush()


def _reject_rows(result: WriteResult) -> list[tuple[str, str]]:
    if not result.rejected:
        return []
    parts: list[str] = []
    moved = result.rejected_moved
    if moved and result.rejects_file:
        distinct = len(result.rejected_lines) - _source_distinct(result)
        what = f"{moved}" if distinct == moved else f"{moved} ({distinct} distinct)"
        verb = "would go to" if result.dry_run else "appended to"
        parts.append(f"{what} -> {verb} {result.rejects_file}")
    left = result.rejected - moved
    if not left:
        return [("rejected lines", parts[0] if parts else str(result.rejected))]
    parts.append(f"{left} in read-only input(s), not written")
    return [("rejected lines", f"{result.rejected}: {'; '.join(parts)}")]


def _source_distinct(result: WriteResult) -> int:
    """Distinct rejected lines that came from read-only sources (listed after the file's own)."""
    moved_occurrences = 0
    for index, line in enumerate(result.rejected_lines):
        if moved_occurrences >= result.rejected_moved:
            return len(result.rejected_lines) - index
        moved_occurrences += line.occurrences
    return 0


def _render_write(out: Output, result: WriteResult) -> None:
    for message in result.warnings:
        out.warn(message)
    left = result.rejected - result.rejected_moved
    if left:
        out.warn(f"{left} rejected line(s) in read-only input(s) were not written")
    if out.as_json:
        out.json(result.to_json())
        return
    if result.skipped:
        return
    verb = (
        ("would change" if result.changed else "unchanged")
        if result.dry_run
        else (("created" if result.created else "rewritten") if result.changed else "unchanged")
    )
    rows = [
        ("file", result.file),
        ("result", verb),
        ("lines in", str(result.lines_in)),
        ("entries out", str(result.entries_out)),
        ("duplicates removed", str(result.duplicates_removed)),
    ]
    if result.zero_dropped:
        rows.append(("zero-count dropped", str(result.zero_dropped)))
    if result.ignored_outside_export:
        rows.append(("outside the export", f"{result.ignored_outside_export} (ignored)"))
    for entry in result.removed:
        rows.append(("removed", f"{show_bytes(entry.client)}:{show_bytes(entry.path)}"))
    rows.extend(_reject_rows(result))
    if result.lock_hold_seconds:
        rows.append(("mountd lock held", f"{result.lock_hold_seconds * 1000:.2f} ms"))
    out.lines(rows, f"rmtabtool {result.command}")


def _live(rmtab: Optional[str], lock_timeout: float = 10.0) -> Live:
    return Live.from_env(rmtab, lock_timeout)


def _jobs(jobs: int) -> int:
    return jobs if jobs >= 1 else 0


# ---------------------------------------------------------------- app callback


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"rmtabtool {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show a traceback on internal errors.")
    ] = False,
) -> None:
    """Keep an NFS server's rmtab small, correct and safe.

    Every rewrite is atomic (temp file, fsync, rename) and taken under
    rpc.mountd's own lock (<statedir>/.rmtab.lock); lines rmtabtool cannot
    represent are never dropped silently.
    """
    if debug:
        _State.debug = True


# ---------------------------------------------------------------- stats

_SIZE_PATTERN = r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[iI]?[bB]?\s*"
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``10M`` -> 10485760 (K/M/G/T are 1024-based)."""
    match = re.fullmatch(_SIZE_PATTERN, text)  # compiled on first use (re's cache)
    if match is None:
        raise typer.BadParameter(f"not a size: {text!r} (use e.g. 512K, 10M, 1G)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _above(value: float, limit: float) -> str:
    """``value > limit`` with as many digits as it takes to see the difference."""
    for digits in range(2, 18):
        shown, bound = f"{value:.{digits}f}", f"{limit:.{digits}f}"
        if shown != bound:
            break
    return f"{shown} > {bound.rstrip('0').rstrip('.')}"


def _stats_rows(result: StatsResult) -> list[tuple[str, str]]:
    rows = [
        ("file", result.file),
        ("bytes", str(result.bytes)),
        ("lines", str(result.lines)),
        ("entries", str(result.entries)),
        ("duplicate lines", str(result.duplicate_lines)),
        ("bloat", f"{result.bloat:.2f}x"),
        ("size after dedupe", str(result.size_after_dedupe)),
        ("clients", str(result.clients)),
        ("zero-count entries", str(result.zero_count_entries)),
        ("rejected lines", str(result.rejected)),
    ]
    for reason, count in result.rejected_by_reason.items():
        rows.append((f"  {reason}", str(count)))
    if result.mountd_stops_at_line is not None:
        rows.append(
            (
                "rpc.mountd stops at",
                f"line {result.mountd_stops_at_line} "
                f"({result.mountd_hidden_lines} later line(s) invisible to it)",
            )
        )
    if result.missing_final_newline:
        rows.append(("last line", "has no newline (interrupted write?)"))
    for p in result.paths:
        rows.append(("path", f"{show_bytes(p.path)}  clients={p.clients} mounts={p.mounts}"))
    for c in result.top_clients:
        rows.append(("client", f"{show_bytes(c.client)}  paths={c.paths} mounts={c.mounts}"))
    return rows


@app.command(epilog=EPILOG_STATS)
def stats(
    file: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[FILE]",
            help="The rmtab to describe ('-': stdin). Default: the live rmtab.",
            show_default=False,
        ),
    ] = None,
    rmtab: RmtabOpt = None,
    max_bloat: Annotated[
        Optional[float],
        typer.Option("--max-bloat", metavar="RATIO", help="Exit 1 if lines/entries exceeds RATIO."),
    ] = None,
    max_bytes: Annotated[
        Optional[str],
        typer.Option(
            "--max-bytes",
            metavar="SIZE",
            help="Exit 1 if the file exceeds SIZE (K/M/G, 1024-based).",
        ),
    ] = None,
    fail_on_rejected: Annotated[
        bool, typer.Option("--fail-on-rejected", help="Exit 1 if any line is rejected.")
    ] = False,
    prometheus: Annotated[
        Optional[str],
        typer.Option(
            "--prometheus",
            metavar="PATH|-",
            help="Also write node_exporter textfile metrics to PATH (atomically; '-': stdout).",
        ),
    ] = None,
    top: Annotated[
        int, typer.Option("--top", metavar="N", min=0, help="How many top clients to list.")
    ] = 10,
    jobs: JobsOpt = 0,
    lock_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Describe an rmtab: size, bloat, duplicates, rejected lines, mounts per path."""
    if as_json and prometheus == operations.STDIO:
        _usage("--json and --prometheus - both want stdout")
    limit_bytes = parse_size(max_bytes) if max_bytes is not None else None

    def body() -> None:
        out = Output(as_json=as_json, quiet=quiet)
        with _ProgressBar(quiet or as_json) as bar:
            result = operations.stats(
                file,
                _live(rmtab, lock_timeout),
                stdin=_stdin(),
                top=top,
                jobs=_jobs(jobs),
                progress=bar,
            )
        exceeded: list[str] = []
        if max_bloat is not None and result.bloat > max_bloat:
            exceeded.append(f"bloat {_above(result.bloat, max_bloat)}")
        if limit_bytes is not None and result.bytes > limit_bytes:
            exceeded.append(f"size {result.bytes} bytes > {limit_bytes}")
        if fail_on_rejected and result.rejected > 0:
            exceeded.append(f"{result.rejected} rejected line(s)")
        if prometheus is not None:
            from .metrics import prometheus_text, write_metrics

            text = prometheus_text(result)
            if prometheus == operations.STDIO:
                with _to_stdout():
                    sys.stdout.write(text)
            else:
                write_metrics(prometheus, text, timeout=lock_timeout)
        if out.as_json:
            payload = result.to_json()
            payload["thresholds_exceeded"] = exceeded
            out.json(payload)
        elif prometheus != operations.STDIO:
            out.lines(_stats_rows(result), "rmtabtool stats")
        if exceeded:
            # one line even under --quiet: cron and monitoring want the reason
            _err(f"rmtabtool: threshold exceeded: {result.file}: {'; '.join(exceeded)}\n")
            raise typer.Exit(errors.EXIT_THRESHOLD)

    _guard(body, as_json=as_json)


# ---------------------------------------------------------------- writing commands


def _usage(message: str) -> NoReturn:
    _err(f"rmtabtool: usage error: {message}\n")
    raise typer.Exit(errors.EXIT_USAGE)


def _no_json_with_stdout_data(as_json: bool, output: Optional[str]) -> None:
    if as_json and output == operations.STDIO:
        _usage("--json cannot be combined with data on stdout (-o -)")


@app.command(epilog=EPILOG_DEDUPE)
def dedupe(
    file: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[FILE]",
            help="The rmtab to clean. Default: the live rmtab.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Optional[str],
        typer.Option(
            "--output", "-o", metavar="PATH|-", help="Write the result here and leave FILE alone."
        ),
    ] = None,
    rmtab: RmtabOpt = None,
    dry_run: DryRunOpt = False,
    drop_zero: DropZeroOpt = False,
    strict: StrictOpt = False,
    rejects: RejectsOpt = None,
    jobs: JobsOpt = 0,
    lock_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Collapse to one canonical line per (client, path), keeping the max count."""
    _no_json_with_stdout_data(as_json, output)

    def body() -> None:
        out = Output(as_json=as_json, quiet=quiet, data_on_stdout=output == operations.STDIO)
        with _ProgressBar(quiet or as_json) as bar:
            result = operations.dedupe(
                file,
                _live(rmtab, lock_timeout),
                output=output,
                dry_run=dry_run,
                drop_zero=drop_zero,
                strict=strict,
                rejects=rejects,
                stdin=_stdin(),
                jobs=_jobs(jobs),
                progress=bar,
            )
        _write_stdout(result.content)
        _render_write(out, result)

    _guard(body, as_json=as_json)


@app.command(epilog=EPILOG_MERGE)
def merge(
    sources: Annotated[
        List[str], typer.Argument(metavar="SOURCE...", help="rmtab files to merge ('-': stdin).")
    ],
    into: Annotated[
        Optional[str],
        typer.Option(
            "--into", metavar="FILE", help="Merge into FILE in place (created if missing)."
        ),
    ] = None,
    output: Annotated[
        Optional[str],
        typer.Option(
            "--output",
            "-o",
            metavar="PATH|-",
            help="Write the union here ('-': stdout).",
            show_default="stdout",
        ),
    ] = None,
    rmtab: RmtabOpt = None,
    dry_run: DryRunOpt = False,
    drop_zero: DropZeroOpt = False,
    strict: StrictOpt = False,
    rejects: RejectsOpt = None,
    jobs: JobsOpt = 0,
    lock_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Union of rmtab files: one line per (client, path) with the max count."""
    if into is not None and output is not None:
        _usage("--into and -o/--output exclude each other")
    to_stdout = into is None and (output is None or output == operations.STDIO)
    if as_json and to_stdout:
        _usage("--json needs --into or -o PATH (the merged data would go to stdout)")

    def body() -> None:
        out = Output(as_json=as_json, quiet=quiet, data_on_stdout=to_stdout)
        with _ProgressBar(quiet or as_json) as bar:
            result = operations.merge(
                sources,
                _live(rmtab, lock_timeout),
                into=into,
                output=output,
                dry_run=dry_run,
                drop_zero=drop_zero,
                strict=strict,
                rejects=rejects,
                stdin=_stdin(),
                jobs=_jobs(jobs),
                progress=bar,
            )
        _write_stdout(result.content)
        _render_write(out, result)

    _guard(body, as_json=as_json)


@app.command(epilog=EPILOG_BACKUP)
def backup(
    export_dir: Annotated[
        str, typer.Argument(metavar="EXPORT_DIR", help="The exported directory.")
    ],
    to: Annotated[
        Optional[str],
        typer.Option(
            "--to",
            metavar="PATH|-",
            help="Backup file ('-': stdout).",
            show_default="EXPORT_DIR/.rmtab",
        ),
    ] = None,
    exact: ExactOpt = False,
    missing_ok: Annotated[
        bool,
        typer.Option(
            "--missing-ok", help="A missing live rmtab is a warning (exit 0), not exit 66."
        ),
    ] = False,
    rmtab: RmtabOpt = None,
    dry_run: DryRunOpt = False,
    lock_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Save the live rmtab's entries for one export, atomically."""
    if as_json and to == operations.STDIO:
        _usage("--json cannot be combined with data on stdout (--to -)")

    def body() -> None:
        out = Output(as_json=as_json, quiet=quiet, data_on_stdout=to == operations.STDIO)
        with _ProgressBar(quiet or as_json) as bar:
            result = operations.backup(
                export_dir,
                _live(rmtab, lock_timeout),
                to=to,
                exact=exact,
                missing_ok=missing_ok,
                dry_run=dry_run,
                progress=bar,
            )
        _write_stdout(result.content)
        _render_write(out, result)

    _guard(body, as_json=as_json)


@app.command(epilog=EPILOG_RESTORE)
def restore(
    export_dir: Annotated[
        str, typer.Argument(metavar="EXPORT_DIR", help="The exported directory.")
    ],
    from_: Annotated[
        Optional[str],
        typer.Option(
            "--from", metavar="PATH", help="Backup file.", show_default="EXPORT_DIR/.rmtab"
        ),
    ] = None,
    exact: ExactOpt = False,
    missing_ok: Annotated[
        bool,
        typer.Option("--missing-ok", help="A missing backup is a warning (exit 0), not exit 66."),
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="The backup is authoritative for this export: remove local entries under it "
            "that the backup lacks.",
        ),
    ] = False,
    rmtab: RmtabOpt = None,
    dry_run: DryRunOpt = False,
    drop_zero: DropZeroOpt = False,
    strict: StrictOpt = False,
    rejects: RejectsOpt = None,
    lock_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge an export's backup into the live rmtab (never append), atomically."""

    def body() -> None:
        out = Output(as_json=as_json, quiet=quiet)
        with _ProgressBar(quiet or as_json) as bar:
            result = operations.restore(
                export_dir,
                _live(rmtab, lock_timeout),
                from_=from_,
                exact=exact,
                missing_ok=missing_ok,
                replace=replace,
                drop_zero=drop_zero,
                strict=strict,
                rejects=rejects,
                dry_run=dry_run,
                progress=bar,
            )
        _render_write(out, result)

    _guard(body, as_json=as_json)


@app.command(epilog=EPILOG_FORGET)
def forget(
    client: Annotated[
        Optional[List[str]],
        typer.Option(
            "--client",
            "-c",
            metavar="CLIENT",
            help="Client address (repeatable; IPv6 in any spelling, host names in any case).",
        ),
    ] = None,
    path: Annotated[
        Optional[str], typer.Option("--path", metavar="PATH", help="Exact mounted path.")
    ] = None,
    export: Annotated[
        Optional[str],
        typer.Option(
            "--export", metavar="DIR", help="An export: the directory and everything under it."
        ),
    ] = None,
    rmtab: RmtabOpt = None,
    dry_run: DryRunOpt = False,
    strict: StrictOpt = False,
    rejects: RejectsOpt = None,
    lock_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Remove stale entries (all given filters must match), in place, locked."""
    if not client and path is None and export is None:
        _usage("forget needs at least one of --client, --path, --export")

    def body() -> None:
        out = Output(as_json=as_json, quiet=quiet)
        with _ProgressBar(quiet or as_json) as bar:
            result = operations.forget(
                _live(rmtab, lock_timeout),
                clients=[os.fsencode(c) for c in client or []],
                path=os.fsencode(path) if path is not None else None,
                export=export,
                dry_run=dry_run,
                strict=strict,
                rejects=rejects,
                progress=bar,
            )
        _render_write(out, result)

    _guard(body, as_json=as_json)


def _click_exception() -> type[Exception]:
    """The click exception class typer raises (from its own copy of click since 0.26)."""
    try:
        module = importlib.import_module("typer._click.exceptions")
    except ImportError:
        module = importlib.import_module("click.exceptions")
    cls: type[Exception] = module.ClickException
    return cls


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point.

    Errors of the option parser become one line on stderr (exit 2), like the
    command's own usage errors, instead of a framed panel: resource agents and
    cron mail log them. Help is rich on a terminal and plain text otherwise.
    """
    if not sys.stdout.isatty() or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        app.rich_markup_mode = None
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:  # a bare `rmtabtool`: the help, as a usage error (as click >= 8.2 does)
        app(args=["--help"], prog_name="rmtabtool", standalone_mode=False)
        sys.exit(errors.EXIT_USAGE)
    click_error = _click_exception()
    try:
        code = app(args=args, prog_name="rmtabtool", standalone_mode=False)
    except click_error as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        message = exc.format_message()  # type: ignore[attr-defined]
        _err(f"rmtabtool: usage error: {message}{hint}\n")
        sys.exit(getattr(exc, "exit_code", errors.EXIT_USAGE))
    except typer.Abort:
        _err("rmtabtool: aborted\n")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)

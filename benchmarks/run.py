#!/usr/bin/env python3
"""Speed and memory of rmtabtool against sort -u, mawk and cat, in one run.

From a fresh clone (after ``pip install .``)::

    python benchmarks/run.py --sizes 16M,160M,1.6G --reps 3

generates the seed-like files into ``benchmarks/data/`` (git-ignored; reused when
already there, ``--clean`` deletes them at the end) and, for each size, runs
every command ``--reps`` times, alternating (the order rotates each round, after
one warm-up ``cat``): rmtabtool's ``read_table`` (the library, in a fresh
interpreter), ``rmtabtool stats`` and ``rmtabtool dedupe -o -`` when the command
is installed, ``LC_ALL=C sort -u``, ``sort -u`` in the default locale,
``mawk '!seen[$0]++'`` and ``cat``. Every command writes to /dev/null. Each run
is measured with ``os.wait4``: wall time, CPU time (user + sys, workers
included) and peak RSS (the largest single process). The tables show medians,
the speed-up against ``LC_ALL=C sort -u`` and against mawk (how many times
faster), and the largest peak RSS over the repetitions.

Also: an adversarial file (``--adversarial-size``, 200M by default, every line
distinct: the case the repeat-aware reader cannot shortcut), with the cost per
line of ``parse_line`` and ``stops_mountd`` on its first ``--parse-lines``
lines, and a start-up case (a 50-line file: ``rmtabtool dedupe`` against
``python -c "import typer"``).

Start-up is mostly import time, so the bytecode of the rmtabtool package the
commands import is compiled first (``compileall``): with
``PYTHONDONTWRITEBYTECODE`` set and a stale ``__pycache__``, every run would
compile the package from source again (tens of ms).

Medians of wall time are what a user waits; on a busy machine they also carry
other people's load, so the CPU column and the load average (printed before and
after) say how much of it was ours. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import locale
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"

sys.path.insert(0, str(HERE))
from generate import generate, parse_size  # noqa: E402  # sibling script, not a package

LIB_CODE = (
    "import sys; from rmtabtool import read_table; read_table(sys.argv[1], jobs=int(sys.argv[2]))"
)
BASELINE = "LC_ALL=C sort -u"
MAWK = "mawk '!seen[$0]++'"


@dataclass
class Command:
    name: str
    argv: list[str]
    env: Optional[dict[str, str]] = None


@dataclass
class Sample:
    wall: float
    cpu: float
    maxrss_kib: int
    status: int


@dataclass
class Measured:
    name: str
    argv: list[str]
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)

    @property
    def maxrss_kib(self) -> int:
        return max(s.maxrss_kib for s in self.samples)

    @property
    def failed(self) -> bool:
        return any(s.status != 0 for s in self.samples)


#: GNU time reports the peak RSS of the command itself. os.wait4 alone cannot:
#: a child forked from this (bigger) Python process keeps its high-water mark
#: through exec, so every command would show at least this script's RSS.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_once(cmd: Command) -> Sample:
    """Run ``cmd`` with stdout and stderr to /dev/null; measure it."""
    env = dict(os.environ)
    if cmd.env:
        env.update(cmd.env)
    argv = cmd.argv
    with tempfile.NamedTemporaryFile("r", prefix="rmtab-bench-", suffix=".rss") as rss:
        if GNU_TIME is not None:
            argv = [GNU_TIME, "-f", "%M", "-o", rss.name, *argv]
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        # wait4 counts the reaped descendants too (GNU time's child, the
        # reader's workers): CPU is the whole tree's.
        maxrss = usage.ru_maxrss
        if GNU_TIME is not None:
            text = rss.read().strip().splitlines()
            maxrss = int(text[-1]) if text and text[-1].isdigit() else -1
    return Sample(wall, usage.ru_utime + usage.ru_stime, maxrss, proc.returncode)


def measure(commands: Sequence[Command], reps: int) -> list[Measured]:
    """Run every command ``reps`` times, alternating; the order rotates each round."""
    results = [Measured(c.name, c.argv) for c in commands]
    for rep in range(reps):
        for i in range(len(commands)):
            j = (i + rep) % len(commands)
            results[j].samples.append(run_once(commands[j]))
            print(
                f"  round {rep + 1}/{reps}: {commands[j].name}: "
                f"{results[j].samples[-1].wall:.3f} s",
                file=sys.stderr,
            )
    return results


# ---------------------------------------------------------------- the contenders


def rmtabtool_command() -> Optional[str]:
    """The installed ``rmtabtool`` (next to this Python first), if it has the commands."""
    beside = Path(sys.executable).with_name("rmtabtool")
    found = str(beside) if beside.exists() else shutil.which("rmtabtool")
    if found is None:
        return None
    try:
        out = subprocess.run(
            [found, "--help"], check=False, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or "stats" not in out.stdout or "dedupe" not in out.stdout:
        return None
    return found


def cli_has_jobs(cli: str) -> bool:
    out = subprocess.run(
        [cli, "dedupe", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    return "--jobs" in out.stdout


def default_locale() -> str:
    try:
        return locale.setlocale(locale.LC_COLLATE, "")
    except locale.Error:
        return "C"


def contenders(
    path: Path, jobs: Sequence[int], cli: Optional[str], notes: list[str]
) -> list[Command]:
    file = str(path)
    cmds = [
        Command(f"read_table jobs={n}", [sys.executable, "-c", LIB_CODE, file, str(n)])
        for n in jobs
    ]
    if cli is not None:
        # explicit --jobs N (the command's default may be automatic)
        variants = [["--jobs", str(n)] for n in jobs] if cli_has_jobs(cli) else [[]]
        for extra in variants:
            tail = " " + " ".join(extra) if extra else ""
            cmds.append(Command(f"rmtabtool stats{tail}", [cli, "stats", file, *extra]))
            cmds.append(
                Command(f"rmtabtool dedupe -o -{tail}", [cli, "dedupe", file, "-o", "-", *extra])
            )
    cmds.append(Command(BASELINE, ["sort", "-u", file], env={"LC_ALL": "C"}))
    cmds.append(Command(f"sort -u ({default_locale()})", ["sort", "-u", file]))
    if shutil.which("mawk"):
        cmds.append(Command(MAWK, ["mawk", "!seen[$0]++", file]))
    elif "no mawk" not in " ".join(notes):
        notes.append("mawk is not installed: its rows are missing")
    cmds.append(Command("cat", ["cat", file]))
    return cmds


# ---------------------------------------------------------------- inputs


def seed_file(size_text: str, seed: int) -> Path:
    size = parse_size(size_text)
    path = DATA / f"seed{seed}-{size_text}.rmtab"
    if not path.exists() or path.stat().st_size not in (size, size - 1):
        DATA.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        print(f"generating {path} ...", file=sys.stderr)
        with tmp.open("wb") as out:
            generate(out, size, seed)
        tmp.rename(path)
    return path


def distinct_file(size_text: str) -> Path:
    """``size`` bytes of lines that are all different (valid entries, IPv4 clients)."""
    size = parse_size(size_text)
    path = DATA / f"distinct-{size_text}.rmtab"
    if path.exists() and path.stat().st_size >= size:
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    print(f"generating {path} ...", file=sys.stderr)
    written = 0
    i = 0
    with tmp.open("wb") as out:
        while written < size:
            block = b"".join(
                b"10.%d.%d.%d:/srv/nfs/home/u%07d:0x00000001\n"
                % ((n >> 16) & 255, (n >> 8) & 255, n & 255, n)
                for n in range(i, i + 10000)
            )
            out.write(block)
            written += len(block)
            i += 10000
    tmp.rename(path)
    return path


def small_file() -> Path:
    path = DATA / "small-50-lines.rmtab"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        lines = [
            b"192.168.1.%d:/srv/nfs/home:0x%08x\n" % (i % 40 + 2, i % 3 + 1) for i in range(50)
        ]
        path.write_bytes(b"".join(lines))
    return path


# ---------------------------------------------------------------- reporting


def precompile(notes: list[str]) -> None:
    """Write the bytecode of the rmtabtool the commands import (from ROOT, like them)."""
    where = subprocess.run(
        [sys.executable, "-c", "import os, rmtabtool; print(os.path.dirname(rmtabtool.__file__))"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    package = where.stdout.strip()
    if where.returncode != 0 or not package:
        return
    # compileall writes .pyc files even under PYTHONDONTWRITEBYTECODE
    subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=False)
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        notes.append(
            f"PYTHONDONTWRITEBYTECODE is set: the bytecode of {package} was compiled "
            "before measuring (an installed package has it)"
        )


PARSE_CODE = """
import sys, time
from rmtabtool import parse_line, stops_mountd
with open(sys.argv[1], "rb") as f:
    lines = f.read(int(sys.argv[2]) * 64).split(b"\\n")[: int(sys.argv[2])]
best = {}
for name, fn in (("parse_line", parse_line), ("stops_mountd", stops_mountd)):
    for _ in range(3):
        t = time.perf_counter()
        for line in lines:
            fn(line)
        per = (time.perf_counter() - t) / len(lines) * 1e6
        best[name] = min(best.get(name, per), per)
print(len(lines), best["parse_line"], best["stops_mountd"])
"""


def parse_cost(path: Path, lines: int) -> Optional[str]:
    """Microseconds per line of parse_line and stops_mountd (best of 3, fresh interpreter)."""
    out = subprocess.run(
        [sys.executable, "-c", PARSE_CODE, str(path), str(lines)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    try:
        count, parse, stops = out.stdout.split()
        return (
            f"Per distinct line, on the first {int(count)} lines (best of 3): "
            f"`parse_line` {float(parse):.2f} µs, `stops_mountd` {float(stops):.2f} µs.\n"
        )
    except ValueError:
        return None


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = str(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        usable = str(os.cpu_count())
    sort_version = subprocess.run(
        ["sort", "--version"], check=False, capture_output=True, text=True
    )
    return {
        "nproc": usable,
        "cpu": model,
        "memory": _meminfo(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "sort": sort_version.stdout.splitlines()[0] if sort_version.stdout else "?",
        "mawk": _mawk_version(),
        "default locale": default_locale(),
    }


def _meminfo() -> str:
    try:
        with open("/proc/meminfo") as info:
            kib = int(info.readline().split()[1])
        return f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"


def _mawk_version() -> str:
    if not shutil.which("mawk"):
        return "not installed"
    out = subprocess.run(["mawk", "-W", "version"], check=False, capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "?"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def table(title: str, results: Sequence[Measured]) -> str:
    by_name = {r.name: r for r in results}
    base = by_name.get(BASELINE)
    mawk = by_name.get(MAWK)
    rows = [
        f"#### {title}",
        "",
        "| command | median wall s | median CPU s | peak RSS MiB | vs `LC_ALL=C sort -u` "
        "| vs mawk |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        vs_sort = f"{base.wall / r.wall:.1f}x" if base and r.wall > 0 else "-"
        vs_mawk = f"{mawk.wall / r.wall:.1f}x" if mawk and r.wall > 0 else "-"
        flag = " (FAILED)" if r.failed else ""
        rows.append(
            f"| `{r.name}`{flag} | {r.wall:.3f} | {r.cpu:.3f} | {mib(r.maxrss_kib)} "
            f"| {vs_sort} | {vs_mawk} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="16M,160M", help="seed-like file sizes (16M,160M,1.6G)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per command (median)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    parser.add_argument("--jobs", default="1,2", help="reader processes to compare (1,2)")
    parser.add_argument("--adversarial-size", default="200M", help="all-distinct file; 0 skips")
    parser.add_argument(
        "--parse-lines", type=int, default=460_000, help="lines for the per-line cost; 0 skips"
    )
    parser.add_argument("--startup-reps", type=int, default=20, help="0 skips the start-up case")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    parser.add_argument("--clean", action="store_true", help="delete benchmarks/data at the end")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    jobs = [int(j) for j in args.jobs.split(",") if j]
    notes: list[str] = []
    if GNU_TIME is None:
        notes.append(
            "/usr/bin/time is missing: peak RSS comes from os.wait4 and includes what "
            "the child inherited from this script at fork"
        )
    cli = rmtabtool_command()
    if cli is None:
        notes.append("the rmtabtool command is not installed: only the library was measured")
    precompile(notes)

    info = machine()
    load_before = os.getloadavg()
    out: list[str] = ["## Machine", ""]
    out += [f"- {k}: {v}" for k, v in info.items()]
    out.append(f"- load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    out.append(f"- command: `python benchmarks/run.py {' '.join(argv or sys.argv[1:])}`")
    out.append("")
    raw: dict[str, object] = {"machine": info, "load_before": load_before, "cases": {}}
    cases: dict[str, object] = {}

    for size_text in [s for s in args.sizes.split(",") if s]:
        path = seed_file(size_text, args.seed)
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        print(f"{path.name}: {path.stat().st_size} bytes", file=sys.stderr)
        results = measure(contenders(path, jobs, cli, notes), args.reps)
        title = f"seed-like {size_text} ({path.stat().st_size} bytes, seed {args.seed})"
        out.append(table(title, results))
        cases[title] = [asdict(r) for r in results]

    if parse_size(args.adversarial_size) > 0:
        path = distinct_file(args.adversarial_size)
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        cmds = [
            Command(f"read_table jobs={n}", [sys.executable, "-c", LIB_CODE, str(path), str(n)])
            for n in jobs
        ]
        if cli is not None:
            cmds.append(Command("rmtabtool stats", [cli, "stats", str(path)]))
        cmds.append(Command(BASELINE, ["sort", "-u", str(path)], env={"LC_ALL": "C"}))
        if shutil.which("mawk"):
            cmds.append(Command(MAWK, ["mawk", "!seen[$0]++", str(path)]))
        cmds.append(Command("cat", ["cat", str(path)]))
        results = measure(cmds, max(1, min(args.reps, 3)))
        title = f"adversarial: {args.adversarial_size} of all-distinct lines"
        out.append(table(title, results))
        cases[title] = [asdict(r) for r in results]
        cost = parse_cost(path, args.parse_lines) if args.parse_lines > 0 else None
        if cost is not None:
            out.append(cost)

    if args.startup_reps > 0 and cli is not None:
        path = small_file()
        cmds = [
            Command("rmtabtool dedupe -o - (50 lines)", [cli, "dedupe", str(path), "-o", "-"]),
            Command(
                "rmtabtool dedupe -o /dev/null (50 lines)",
                [cli, "dedupe", "-o", "/dev/null", str(path)],
            ),
            Command('python -c "import typer"', [sys.executable, "-c", "import typer"]),
            Command('python -c "pass"', [sys.executable, "-c", "pass"]),
        ]
        results = measure(cmds, args.startup_reps)
        typer_wall = results[2].wall
        out.append(table("start-up: a 50-line file", results))
        for r in results[:2]:
            command = r.name.replace(" (50 lines)", "")
            out.append(f"`{command}` / `import typer` (median wall): {r.wall / typer_wall:.2f}\n")
        cases["startup"] = [asdict(r) for r in results]

    load_after = os.getloadavg()
    out.append(f"load average after: {' '.join(f'{x:.2f}' for x in load_after)}\n")
    out += [f"Note: {n}" for n in notes]
    print("\n".join(out))
    if args.json:
        raw["cases"] = cases
        raw["load_after"] = load_after
        args.json.write_text(json.dumps(raw, indent=1) + "\n")
    if args.clean:
        shutil.rmtree(DATA, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

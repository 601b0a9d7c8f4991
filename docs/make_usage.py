"""Build docs/usage.md: run every example for real and paste its output.

    python docs/make_usage.py > docs/usage.md

Lines of the template starting with ``$ `` are run with bash in a scratch
directory (``demo/``, with ``state/rmtab`` as the live rmtab and the export
``srv/data``) and replaced by a code block holding the command and what it
printed. Run it from the repository root with the venv's ``rmtabtool`` on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEMPLATE = r"""# Using rmtabtool

Every example below was run by `docs/make_usage.py` (which wrote this file) in a
scratch directory holding a copy of the bundled example `examples/bloated-rmtab`.
`state/rmtab` stands for `/var/lib/nfs/rmtab`: on a server you leave `--rmtab`
out (or set `RMTABTOOL_RMTAB`). The output is what the commands printed, not
typed by hand. The scratch directory is `/tmp/rmtabtool-demo`.

Common options: `--json` (exactly one JSON object on stdout), `-q`/`--quiet`
(nothing on success; errors still one line on stderr), `--rmtab PATH` (the live
rmtab; its directory is rpc.mountd's statedir, where `.rmtab.lock` lives), and
for the writing commands `--lock-timeout SECONDS`, `--dry-run`, `--strict`,
`--rejects PATH`; `--debug` (before or after the command, or
`RMTABTOOL_DEBUG=1`) adds a traceback to an internal error (exit 70). Colour
only on a terminal; `NO_COLOR` is respected. The
complete option list is in [cli-reference.md](cli-reference.md), the exit codes
in [exit-codes.md](exit-codes.md).

## `stats`: how bad is it?

$ rmtabtool stats --top 3 state/rmtab

The file is 57 times larger than it needs to be, rpc.mountd stops reading at the
blank line 2210 (the 2755 lines after it are invisible to `showmount -a`, and its
next UMNT would delete them), and 27 lines cannot be represented at all.
For scripts, `--json`:

$ rmtabtool stats --json state/rmtab | python3 -m json.tool | head -n 24

Thresholds for cron and monitoring (`--max-bloat RATIO`, `--max-bytes SIZE`
with K/M/G 1024-based, `--fail-on-rejected`) exit 1 with one line on stderr:

$ rmtabtool stats -q --max-bloat 2 --max-bytes 1M --fail-on-rejected state/rmtab; echo "exit $?"

`--prometheus PATH` also writes node_exporter textfile metrics atomically (see
[monitoring.md](monitoring.md)); `-` prints them:

$ rmtabtool stats --prometheus - state/rmtab | grep -E '^rmtabtool_rmtab_(bloat|entries|mountd)'

`stats -` reads standard input; `--top N` sets how many clients are listed;
`--jobs N` reads a big file with N processes
(0 picks a number from the file size).

## `dedupe`: collapse it, in place and locked

First see what would happen (`--dry-run`, `-n`), then do it:

$ rmtabtool dedupe --dry-run state/rmtab

$ rmtabtool dedupe state/rmtab

$ wc -l state/rmtab state/rmtab.rejects; head -n 3 state/rmtab; cat state/rmtab.rejects | head -n 3

One canonical line per (client, path), the highest count, first-seen order. The
27 rejected lines are 3 distinct lines, repeated: each distinct one was appended
once, byte for byte, to `state/rmtab.rejects` (or `--rejects PATH`) before the
rename, in first-seen order (see [format.md](format.md#the-rejects-file)), so
nothing is lost. A second run changes nothing, not even the file's mtime:

$ rmtabtool dedupe --json state/rmtab

`--strict` refuses instead when any line would be rejected (exit 65, nothing
written); `--drop-zero` also removes entries whose count is 0. `-o/--output PATH` writes
elsewhere and leaves the input alone, `-o -` writes to stdout (the summary then
goes to stderr):

$ rmtabtool dedupe -q -o - bloated-rmtab | tail -n 3

## `merge`: union of several files

$ printf '10.0.0.5:/srv/data:0x00000001\n10.0.0.6:/srv/data:0x00000002\n' > a; printf '10.0.0.6:/srv/data:0x00000001\nfe80::7:/srv/data:0x1\n' > b; rmtabtool merge a b

The same law as dedupe: one entry per (client, path) with the maximum count
(max, not sum: a restored backup must not inflate counts on every failover).
`--into FILE` merges into FILE in place under the same locks (creating it if
missing); `-o/--output PATH` writes a new file; `-` reads stdin.

$ rmtabtool merge a b --into merged --json

## `backup` and `restore`: what a resource agent needs

`backup EXPORT_DIR` writes the live rmtab's entries for that export (the
directory and everything under it; `--exact` for the directory only) to
`EXPORT_DIR/.rmtab`, or `--to PATH`, atomically. Identical content is not
rewritten (monitor runs every 10 s):

$ rmtabtool backup --rmtab state/rmtab srv/data

$ rmtabtool backup --rmtab state/rmtab srv/data

A missing live rmtab (an unmounted /var) never wipes a good backup: exit 66, or
a warning and exit 0 with `--missing-ok`:

$ rmtabtool backup --rmtab nowhere/rmtab --missing-ok srv/data; echo "exit $?"

`restore EXPORT_DIR` merges the backup into the live rmtab (never appends).
Restoring again changes nothing, however often a cluster fails over:

$ rm -f node2/rmtab; rmtabtool restore --rmtab node2/rmtab srv/data

$ rmtabtool restore --rmtab node2/rmtab srv/data --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["changed"], d["entries_out"])'

`--replace` makes the backup authoritative for its export: local entries under
the export that the backup lacks (clients that unmounted while the other node
was active) are removed and listed; entries of other exports are never touched.
`--from PATH` names another backup file, `--missing-ok` makes a missing backup a
warning.

$ printf '192.0.2.99:%s/old:0x00000001\n' "$PWD/srv/data" >> node2/rmtab; rmtabtool restore --rmtab node2/rmtab srv/data --replace

## `forget`: remove stale entries

Decommissioned clients and exports that are gone. All filters given must
match: `--client` (repeatable; IPv6 in any spelling, host names in any case), `--path` (exact),
`--export` (the directory and everything under it).

$ rmtabtool forget --rmtab state/rmtab --client 'fe80::1' --client 10.20.30.40 --dry-run

$ rmtabtool forget --rmtab state/rmtab --export /srv/nfs/home --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["changed"], len(d["removed"]), "removed;", d["entries_out"], "left")'

## Errors

One line on stderr, naming the file and what went wrong, and a documented exit
code:

$ rmtabtool dedupe --rmtab missing/rmtab; echo "exit $?"

$ rmtabtool dedupe -o no/such/dir/out state/rmtab; echo "exit $?"
"""


def main() -> None:
    demo = Path("/tmp/rmtabtool-demo")
    shutil.rmtree(demo, ignore_errors=True)
    try:
        (demo / "state").mkdir(parents=True)
        (demo / "srv" / "data").mkdir(parents=True)
        (demo / "node2").mkdir()
        shutil.copy(ROOT / "examples" / "bloated-rmtab", demo / "state" / "rmtab")
        shutil.copy(ROOT / "examples" / "bloated-rmtab", demo / "bloated-rmtab")
        # give the example a real export under the scratch dir: rewrite /srv/nfs/data
        data = (demo / "state" / "rmtab").read_bytes()
        (demo / "state" / "rmtab").write_bytes(
            data.replace(b":/srv/nfs/data", b":" + os.fsencode(demo / "srv" / "data"))
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("RMTABTOOL_")}
        env.update({"TERM": "dumb", "NO_COLOR": "1", "COLUMNS": "100"})
        out: list[str] = []
        for line in TEMPLATE.splitlines():
            if not line.startswith("$ "):
                out.append(line)
                continue
            cmd = line[2:]
            proc = subprocess.run(
                ["bash", "-c", cmd],
                cwd=demo,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="backslashreplace",
                check=False,
            )
            text = proc.stdout.rstrip("\n")
            out.append("```console")
            out.append(f"$ {cmd}")
            if text:
                out.append(text)
            out.append("```")
        sys.stdout.write("\n".join(out) + "\n")
    finally:
        shutil.rmtree(demo, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The command-line contract, flag by flag, through typer's CliRunner.

Exit codes and JSON keys are a contract with resource agents and cron jobs:
these tests pin them. Subprocess tests of the installed command live in
test_cli_exitcodes.py and test_failover.py.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Optional

import pytest
from typer.testing import CliRunner

from rmtabtool import __version__, read_table
from rmtabtool.cli import app, parse_size

CLEAN = (
    b"10.0.0.1:/srv/data:0x00000001\n"
    b"10.0.0.2:/srv/data/sub:0x00000002\n"
    b"fe80;;1:/srv/other:0x00000001\n"
)
BLOATED = (
    b"10.0.0.1:/srv/data:0x00000001\n"
    b"10.0.0.2:/srv/data/sub:0x00000001\n"
    b"10.0.0.1:/srv/data:0x00000002\n"
    b"fe80::1:/srv/other:0x1\n"
    b"10.0.0.1:/srv/data:0x00000001\n"
    b"10.0.0.3:/srv/zero:0x00000000\n"
    b"\n"
    b"# a comment\n"
    b"10.0.0.2:/srv/data/sub:0x00000001\n"
)


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


def _runner() -> CliRunner:
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg,unused-ignore]
    return CliRunner()


def run(*args: str, stdin: Optional[bytes] = None, env: Optional[dict[str, str]] = None) -> Result:
    res = _runner().invoke(app, list(args), input=stdin, env=env, catch_exceptions=False)
    return Result(res.exit_code, res.stdout, res.stderr)


@pytest.fixture
def live(tmp_path: Path) -> Path:
    statedir = tmp_path / "state"
    statedir.mkdir()
    rmtab = statedir / "rmtab"
    rmtab.write_bytes(BLOATED)
    return rmtab


def test_version() -> None:
    res = run("--version")
    assert res.code == 0
    assert res.stdout.strip() == f"rmtabtool {__version__}"


@pytest.mark.parametrize("command", ["stats", "dedupe", "merge", "backup", "restore", "forget"])
def test_every_command_has_help_with_examples(command: str) -> None:
    res = run(command, "--help")
    assert res.code == 0
    assert "Examples" in res.stdout
    assert "--json" in res.stdout


def test_parse_size_is_1024_based() -> None:
    assert parse_size("10") == 10
    assert parse_size("1K") == 1024
    assert parse_size("2M") == 2 * 1024 * 1024
    assert parse_size("1G") == 1 << 30
    assert parse_size("1.5k") == 1536


# ---------------------------------------------------------------- stats


def test_stats_json_has_the_contract_keys(live: Path) -> None:
    res = run("stats", "--json", "--rmtab", str(live))
    assert res.code == 0, res.stderr
    data = res.json()
    for key in (
        "bytes",
        "lines",
        "entries",
        "duplicate_lines",
        "bloat",
        "rejected",
        "rejected_by_reason",
        "mountd_stops_at_line",
        "zero_count_entries",
        "clients",
        "paths",
    ):
        assert key in data
    assert data["bytes"] == len(BLOATED)
    assert data["lines"] == 9
    assert data["entries"] == 4
    assert data["rejected"] == 2
    assert data["rejected_by_reason"] == {"blank": 1, "comment": 1}
    assert data["duplicate_lines"] == 9 - 2 - 4
    assert data["mountd_stops_at_line"] == 7
    assert data["zero_count_entries"] == 1
    assert data["clients"] == 4
    assert data["bloat"] == pytest.approx(9 / 4)
    paths = {p["path"]: p for p in data["paths"]}
    assert paths["/srv/data"] == {"path": "/srv/data", "clients": 1, "mounts": 2}
    assert paths["/srv/other"]["clients"] == 1


def test_stats_reads_a_file_argument_and_stdin(live: Path) -> None:
    by_file = run("stats", "--json", str(live)).json()
    by_stdin = run("stats", "--json", "-", stdin=BLOATED).json()
    for key in ("lines", "entries", "rejected", "bloat", "paths"):
        assert by_file[key] == by_stdin[key]


def test_stats_defaults_to_the_live_rmtab_from_the_environment(live: Path) -> None:
    res = run("stats", "--json", env={"RMTABTOOL_RMTAB": str(live)})
    assert res.code == 0
    assert res.json()["file"] == str(live)


def test_stats_shows_undecodable_bytes_escaped(tmp_path: Path) -> None:
    f = tmp_path / "rmtab"
    f.write_bytes(b"10.0.0.1:/srv/caf\xe9:0x00000001\n")
    res = run("stats", "--json", str(f))
    assert res.code == 0
    assert res.json()["paths"][0]["path"] == "/srv/caf\\xe9"
    human = run("stats", str(f))
    assert human.code == 0
    assert "/srv/caf\\xe9" in human.stdout


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        (["--max-bloat", "2"], 1),
        (["--max-bloat", "3"], 0),
        (["--max-bytes", "100"], 1),
        (["--max-bytes", "1K"], 0),
        (["--fail-on-rejected"], 1),
    ],
)
def test_stats_thresholds_exit_1_only_when_exceeded(
    live: Path, flags: list[str], code: int
) -> None:
    res = run("stats", "-q", str(live), *flags)
    assert res.code == code
    assert res.stdout == ""
    if code:
        assert len(res.stderr.strip().splitlines()) == 1
        assert "threshold" in res.stderr


def test_stats_threshold_with_json_still_prints_one_object(live: Path) -> None:
    res = run("stats", "--json", "--max-bloat", "1.5", str(live))
    assert res.code == 1
    assert res.json()["thresholds_exceeded"]


def test_stats_missing_file_is_66(tmp_path: Path) -> None:
    res = run("stats", str(tmp_path / "nope"))
    assert res.code == 66
    assert "nope" in res.stderr


def test_stats_json_error_is_one_object(tmp_path: Path) -> None:
    res = run("stats", "--json", str(tmp_path / "nope"))
    assert res.code == 66
    assert res.json()["exit_code"] == 66


# ---------------------------------------------------------------- dedupe


def test_dedupe_in_place_then_clean_run_changes_nothing(live: Path) -> None:
    res = run("dedupe", "--json", "--rmtab", str(live))
    assert res.code == 0, res.stderr
    data = res.json()
    for key in (
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
    ):
        assert key in data
    assert data["changed"] is True
    assert data["entries_out"] == 4
    assert data["rejected"] == 2
    assert live.read_bytes() == (
        b"10.0.0.1:/srv/data:0x00000002\n"
        b"10.0.0.2:/srv/data/sub:0x00000001\n"
        b"fe80;;1:/srv/other:0x00000001\n"
        b"10.0.0.3:/srv/zero:0x00000000\n"
    )
    rejects = Path(f"{live}.rejects")
    assert data["rejects_file"] == str(rejects)
    assert rejects.read_bytes() == b"\n# a comment\n"
    before = live.stat()
    again = run("dedupe", "--json", "--rmtab", str(live)).json()
    assert again["changed"] is False
    after = live.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_dedupe_output_to_stdout_leaves_the_file_alone(live: Path) -> None:
    res = run("dedupe", "-o", "-", str(live))
    assert res.code == 0
    assert live.read_bytes() == BLOATED
    assert res.stdout.encode() == read_table(live).table.to_bytes()
    assert not Path(f"{live}.rejects").exists()
    assert "rejected" in res.stderr


def test_dedupe_output_to_a_file(live: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean"
    res = run("dedupe", "-o", str(out), "--json", str(live))
    assert res.code == 0
    assert res.json()["file"] == str(out)
    assert out.read_bytes() == read_table(live).table.to_bytes()
    assert live.read_bytes() == BLOATED


def test_json_with_data_on_stdout_is_a_usage_error(live: Path) -> None:
    assert run("dedupe", "--json", "-o", "-", str(live)).code == 2
    assert run("merge", "--json", str(live)).code == 2
    assert run("merge", "--json", "-o", "-", str(live)).code == 2


def test_dedupe_dry_run_writes_nothing(live: Path) -> None:
    res = run("dedupe", "--dry-run", "--json", str(live))
    assert res.code == 0
    data = res.json()
    assert data["dry_run"] is True
    assert data["changed"] is True
    assert live.read_bytes() == BLOATED
    assert not Path(f"{live}.rejects").exists()


def test_dedupe_strict_refuses_rejected_lines(live: Path) -> None:
    res = run("dedupe", "--strict", str(live))
    assert res.code == 65
    assert live.read_bytes() == BLOATED
    assert not Path(f"{live}.rejects").exists()


def test_dedupe_drop_zero(live: Path) -> None:
    res = run("dedupe", "--drop-zero", "--json", str(live))
    assert res.code == 0
    assert res.json()["zero_dropped"] == 1
    assert b"/srv/zero" not in live.read_bytes()


def test_dedupe_rejects_path_option_appends(live: Path, tmp_path: Path) -> None:
    rej = tmp_path / "elsewhere.rejects"
    rej.write_bytes(b"old\n")
    assert run("dedupe", "--rejects", str(rej), str(live)).code == 0
    assert rej.read_bytes() == b"old\n\n# a comment\n"


def test_quiet_prints_nothing_on_success(live: Path) -> None:
    res = run("dedupe", "-q", str(live))
    assert res.code == 0
    assert res.stdout == ""
    assert res.stderr == ""


def test_human_summary_is_plain_when_piped(live: Path) -> None:
    res = run("dedupe", str(live))
    assert res.code == 0
    assert "\x1b[" not in res.stdout
    assert "duplicates removed" in res.stdout


# ---------------------------------------------------------------- merge


def test_merge_to_stdout_takes_the_max(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.write_bytes(b"h1:/x:0x00000001\nh2:/y:0x00000003\n")
    b.write_bytes(b"h2:/y:0x00000001\nh1:/x:0x00000002\nh3:/z\n")
    res = run("merge", str(a), str(b))
    assert res.code == 0
    assert res.stdout == "h1:/x:0x00000002\nh2:/y:0x00000003\nh3:/z:0x00000001\n"


def test_merge_into_creates_a_missing_file(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(CLEAN)
    into = tmp_path / "new"
    res = run("merge", str(a), "--into", str(into), "--json")
    assert res.code == 0
    assert res.json()["created"] is True
    assert into.read_bytes() == CLEAN
    assert oct(into.stat().st_mode & 0o777) == oct(0o644)


def test_merge_into_and_output_exclude_each_other(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(CLEAN)
    res = run("merge", str(a), "--into", str(tmp_path / "x"), "-o", str(tmp_path / "y"))
    assert res.code == 2


def test_merge_reads_stdin(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"h1:/x:0x00000001\n")
    res = run("merge", str(a), "-", stdin=b"h2:/y:0x00000001\n")
    assert res.stdout == "h1:/x:0x00000001\nh2:/y:0x00000001\n"


# ---------------------------------------------------------------- backup / restore


@pytest.fixture
def export(tmp_path: Path) -> Path:
    d = tmp_path / "srv" / "data"
    d.mkdir(parents=True)
    return d


def _rmtab_with(tmp_path: Path, data: bytes) -> Path:
    statedir = tmp_path / "state"
    statedir.mkdir(exist_ok=True)
    rmtab = statedir / "rmtab"
    rmtab.write_bytes(data)
    return rmtab


def test_backup_selects_the_export_and_its_subdirectories(tmp_path: Path, export: Path) -> None:
    e = os.fsencode(export)
    rmtab = _rmtab_with(
        tmp_path,
        b"h1:" + e + b":0x00000001\n"
        b"h2:" + e + b"/sub:0x00000001\n"
        b"h3:" + e + b"2:0x00000001\n"
        b"h4:/elsewhere:0x00000001\n",
    )
    res = run("backup", str(export), "--rmtab", str(rmtab), "--json")
    assert res.code == 0, res.stderr
    assert res.json()["entries_out"] == 2
    assert (export / ".rmtab").read_bytes() == (
        b"h1:" + e + b":0x00000001\nh2:" + e + b"/sub:0x00000001\n"
    )
    exact = tmp_path / "exact"
    assert (
        run("backup", str(export), "--exact", "--to", str(exact), "--rmtab", str(rmtab)).code == 0
    )
    assert exact.read_bytes() == b"h1:" + e + b":0x00000001\n"


def test_an_export_reached_through_a_symlink_matches_what_mountd_records(
    tmp_path: Path,
) -> None:
    """mountd records the realpath of what a client mounted: an agent configured
    with /export/home (a link to /srv/home) must back up, restore and forget the
    /srv/home lines, and never report an empty export."""
    real = tmp_path / "srv" / "home"
    real.mkdir(parents=True)
    (tmp_path / "export").symlink_to(tmp_path / "srv")
    linked = tmp_path / "export" / "home"
    mine = f"10.0.0.1:{real}:0x00000001\n10.0.0.2:{real}/sub:0x00000001\n".encode()
    other = b"10.0.0.3:/srv/other:0x00000001\n"
    rmtab = _rmtab_with(tmp_path, mine + other)

    res = run("backup", str(linked), "--rmtab", str(rmtab), "--json")
    assert res.code == 0, res.stderr
    assert res.json()["entries_out"] == 2
    assert (real / ".rmtab").read_bytes() == mine

    rmtab.write_bytes(other + f"10.0.0.9:{real}:0x00000001\n".encode())
    res = run("restore", str(linked), "--replace", "--rmtab", str(rmtab), "--json")
    assert res.code == 0, res.stderr
    assert [e["client"] for e in res.json()["removed"]] == ["10.0.0.9"]
    assert rmtab.read_bytes() == other + mine

    res = run("forget", "--export", str(linked), "--rmtab", str(rmtab), "--json")
    assert len(res.json()["removed"]) == 2
    assert rmtab.read_bytes() == other


def test_path_in_export_takes_several_spellings() -> None:
    from rmtabtool import path_in_export

    assert path_in_export(b"/srv/home/x", (b"/export/home", b"/srv/home"))
    assert not path_in_export(b"/srv/homes", (b"/export/home", b"/srv/home"))
    assert not path_in_export(b"/srv/home/x", (b"/export/home", b"/srv/home"), exact=True)


def test_backup_missing_live_rmtab_keeps_the_old_backup(tmp_path: Path, export: Path) -> None:
    good = b"h1:" + os.fsencode(export) + b":0x00000001\n"
    (export / ".rmtab").write_bytes(good)
    missing = tmp_path / "state" / "rmtab"
    assert run("backup", str(export), "--rmtab", str(missing)).code == 66
    assert (export / ".rmtab").read_bytes() == good
    res = run("backup", str(export), "--rmtab", str(missing), "--missing-ok")
    assert res.code == 0
    assert "warning" in res.stderr
    assert (export / ".rmtab").read_bytes() == good


def test_backup_of_an_empty_rmtab_empties_the_backup(tmp_path: Path, export: Path) -> None:
    (export / ".rmtab").write_bytes(b"h1:" + os.fsencode(export) + b":0x00000001\n")
    rmtab = _rmtab_with(tmp_path, b"")
    assert run("backup", str(export), "--rmtab", str(rmtab)).code == 0
    assert (export / ".rmtab").read_bytes() == b""


def test_restore_k_times_equals_restore_once(tmp_path: Path, export: Path) -> None:
    e = os.fsencode(export)
    (export / ".rmtab").write_bytes(
        b"h1:" + e + b":0x00000002\nh2:" + e + b"/sub:0x00000001\nh9:/other:0x00000001\n"
    )
    rmtab = _rmtab_with(tmp_path, b"h1:" + e + b":0x00000001\nh5:/mine:0x00000001\n")
    first = run("restore", str(export), "--rmtab", str(rmtab), "--json")
    assert first.code == 0, first.stderr
    assert first.json()["ignored_outside_export"] == 1
    once = rmtab.read_bytes()
    assert once == (
        b"h1:" + e + b":0x00000002\nh5:/mine:0x00000001\nh2:" + e + b"/sub:0x00000001\n"
    )
    for _ in range(3):
        again = run("restore", str(export), "--rmtab", str(rmtab), "--json")
        assert again.json()["changed"] is False
    assert rmtab.read_bytes() == once


def test_restore_creates_a_missing_live_rmtab(tmp_path: Path, export: Path) -> None:
    line = b"h1:" + os.fsencode(export) + b":0x00000001\n"
    (export / ".rmtab").write_bytes(line)
    statedir = tmp_path / "state"
    statedir.mkdir()
    rmtab = statedir / "rmtab"
    res = run("restore", str(export), "--rmtab", str(rmtab))
    assert res.code == 0, res.stderr
    assert rmtab.read_bytes() == line
    assert rmtab.stat().st_mode & 0o777 == 0o644


def test_restore_missing_backup(tmp_path: Path, export: Path) -> None:
    rmtab = _rmtab_with(tmp_path, CLEAN)
    assert run("restore", str(export), "--rmtab", str(rmtab)).code == 66
    res = run("restore", str(export), "--rmtab", str(rmtab), "--missing-ok")
    assert res.code == 0
    assert rmtab.read_bytes() == CLEAN


def test_restore_replace_removes_what_the_backup_lacks(tmp_path: Path, export: Path) -> None:
    e = os.fsencode(export)
    (export / ".rmtab").write_bytes(b"h1:" + e + b":0x00000001\n")
    rmtab = _rmtab_with(
        tmp_path,
        b"h1:" + e + b":0x00000001\nh2:" + e + b"/sub:0x00000001\nh3:/other:0x00000001\n",
    )
    res = run("restore", str(export), "--replace", "--rmtab", str(rmtab), "--json")
    assert res.code == 0, res.stderr
    removed = res.json()["removed"]
    assert removed == [{"client": "h2", "path": f"{export}/sub", "count": 1}]
    assert rmtab.read_bytes() == b"h1:" + e + b":0x00000001\nh3:/other:0x00000001\n"


def test_restore_from_option(tmp_path: Path, export: Path) -> None:
    src = tmp_path / "shared-backup"
    src.write_bytes(b"h1:" + os.fsencode(export) + b":0x00000001\n")
    rmtab = _rmtab_with(tmp_path, b"")
    assert run("restore", str(export), "--from", str(src), "--rmtab", str(rmtab)).code == 0
    assert rmtab.read_bytes() == src.read_bytes()


# ---------------------------------------------------------------- forget


def test_forget_by_client_in_either_ipv6_spelling(tmp_path: Path) -> None:
    rmtab = _rmtab_with(tmp_path, CLEAN)
    res = run("forget", "--client", "fe80;;1", "--rmtab", str(rmtab), "--json")
    assert res.code == 0
    assert res.json()["removed"] == [{"client": "fe80::1", "path": "/srv/other", "count": 1}]
    rmtab.write_bytes(CLEAN)
    assert run("forget", "--client", "fe80::1", "--rmtab", str(rmtab)).code == 0
    assert b"fe80" not in rmtab.read_bytes()


@pytest.mark.parametrize("spelling", ["FE80::1", "fe80:0:0:0:0:0:0:1", "FE80;0;;1"])
def test_forget_matches_an_ipv6_client_however_it_is_written(tmp_path: Path, spelling: str) -> None:
    rmtab = _rmtab_with(tmp_path, CLEAN)
    res = run("forget", "--client", spelling, "--rmtab", str(rmtab), "--json")
    assert res.code == 0
    assert [e["client"] for e in res.json()["removed"]] == ["fe80::1"]


@pytest.mark.parametrize(
    ("typed", "written", "same"),
    [
        (b"fe80::1%eth0", b"fe80;;1%eth0", True),
        (b"fe80::1%eth0", b"fe80;;1", False),  # another interface's neighbour
        (b"fe80::1", b"fe80::2", False),
        (b"NFS-Client.example", b"nfs-client.example", True),
        (b"10.0.0.1", b"10.0.0.10", False),
        (b"not::an::address", b"not;;an;;address", True),  # same bytes, not parsed
    ],
)
def test_client_key_spellings(typed: bytes, written: bytes, same: bool) -> None:
    from rmtabtool.operations import client_key

    assert (client_key(typed) == client_key(written)) is same


def test_forget_filters_must_all_match(tmp_path: Path) -> None:
    rmtab = _rmtab_with(tmp_path, CLEAN)
    res = run("forget", "--client", "10.0.0.1", "--path", "/srv/other", "--rmtab", str(rmtab))
    assert res.code == 0
    assert rmtab.read_bytes() == CLEAN
    assert run("forget", "--export", "/srv/data", "--rmtab", str(rmtab)).code == 0
    assert rmtab.read_bytes() == b"fe80;;1:/srv/other:0x00000001\n"


def test_forget_dry_run_and_usage(tmp_path: Path) -> None:
    rmtab = _rmtab_with(tmp_path, CLEAN)
    res = run("forget", "--path", "/srv/data", "--dry-run", "--json", "--rmtab", str(rmtab))
    assert res.json()["changed"] is True
    assert rmtab.read_bytes() == CLEAN
    assert run("forget", "--rmtab", str(rmtab)).code == 2
    assert run("forget", "--client", "x", "--rmtab", str(tmp_path / "none")).code == 66


# ---------------------------------------------------------------- internal errors


def test_internal_error_is_one_line_and_70(live: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rmtabtool import operations

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(operations, "stats", boom)
    res = run("stats", str(live))
    assert res.code == 70
    assert res.stderr.count("\n") == 1
    assert "kaboom" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("replaced", [False, True])
def test_a_signal_says_whether_the_file_was_replaced(
    live: Path, monkeypatch: pytest.MonkeyPatch, replaced: bool
) -> None:
    from rmtabtool import operations
    from rmtabtool.safefile import SignalReceived

    def interrupted(*_a: object, **_k: object) -> None:
        exc = SignalReceived(15)
        if replaced:
            exc.replaced = live
        raise exc

    monkeypatch.setattr(operations, "dedupe", interrupted)
    res = run("dedupe", "--rmtab", str(live))
    assert res.code == 128 + 15
    assert res.stderr.count("\n") == 1
    if replaced:
        assert f"after {live} was replaced" in res.stderr
    else:
        assert "nothing was changed" in res.stderr


# ---------------------------------------------------------------- prometheus


def test_stats_prometheus_file_is_written_atomically(live: Path, tmp_path: Path) -> None:
    prom = tmp_path / "rmtab.prom"
    res = run("stats", "-q", "--prometheus", str(prom), str(live))
    assert res.code == 0
    text = prom.read_text()
    assert f'rmtabtool_rmtab_lines{{file="{live}"}} 9\n' in text
    assert f'rmtabtool_rmtab_entries{{file="{live}"}} 4\n' in text
    assert f'rmtabtool_rmtab_rejected_lines{{file="{live}",reason="blank"}} 1\n' in text
    assert f'rmtabtool_rmtab_mountd_stop_line{{file="{live}"}} 7\n' in text
    assert prom.stat().st_mode & 0o777 == 0o644
    # no temp file left; the one other name is the lock every rmtabtool output takes
    # (node_exporter's textfile collector reads *.prom only)
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == [".rmtab.prom.rmtabtool-lock"]


def test_stats_prometheus_to_stdout_is_only_metrics(live: Path) -> None:
    res = run("stats", "--prometheus", "-", str(live))
    assert res.code == 0
    for line in res.stdout.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ", "rmtabtool_"))
    assert run("stats", "--json", "--prometheus", "-", str(live)).code == 2


def test_backup_counts_the_duplicates_it_collapsed(tmp_path: Path, export: Path) -> None:
    e = os.fsencode(export)
    rmtab = _rmtab_with(
        tmp_path,
        b"10.0.0.1:" + e + b":0x00000001\n"
        b"10.0.0.1:" + e + b":0x00000002\n"
        b"10.0.0.2:" + e + b"/sub:0x00000001\n"
        b"10.0.0.3:/elsewhere:0x00000001\n",
    )
    data = run("backup", str(export), "--rmtab", str(rmtab), "--json").json()
    assert (data["lines_in"], data["entries_out"], data["duplicates_removed"]) == (4, 2, 1)
    assert data["ignored_outside_export"] == 1


def test_stats_reports_progress_up_to_the_file_size(live: Path) -> None:
    from rmtabtool.operations import Live, stats

    calls: list[tuple[str, int, int]] = []
    stats(
        str(live), Live.from_env(live.parent / "other"), jobs=1, progress=lambda *a: calls.append(a)
    )
    assert calls
    dones = [done for _, done, _ in calls]
    assert dones == sorted(dones)
    assert calls[-1] == (str(live), len(BLOATED), len(BLOATED))


def test_no_progress_bar_when_stderr_is_not_a_terminal(live: Path) -> None:
    res = run("stats", str(live))
    assert "reading" not in res.stderr


def test_dedupe_output_to_dev_null(live: Path) -> None:
    res = run("dedupe", "-q", "-o", "/dev/null", str(live))
    assert res.code == 0, res.stderr
    assert live.read_bytes() == BLOATED


def test_prometheus_output_to_dev_null_leaves_nothing_in_dev(live: Path) -> None:
    before = set(os.listdir("/dev"))
    res = run("stats", "-q", "--prometheus", "/dev/null", str(live))
    assert res.code == 0, res.stderr
    assert set(os.listdir("/dev")) - before == set()


def test_prometheus_output_waits_only_lock_timeout_for_another_run(
    live: Path, tmp_path: Path
) -> None:
    from filelock import FileLock

    from rmtabtool.locking import tool_lock_path

    prom = tmp_path / "rmtab.prom"
    with FileLock(os.fspath(tool_lock_path(prom))):
        res = run("stats", "-q", "--prometheus", str(prom), "--lock-timeout", "0.2", str(live))
    assert res.code == 75, res.stderr
    assert not prom.exists()

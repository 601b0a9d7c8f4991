"""The hand-written record classes behave as the dataclasses they replaced did.

Constructor signatures (positional order, defaults, fresh mutable defaults),
equality by class and fields, ``repr`` in field order, frozen ones immutable
and hashable, mutable ones unhashable, and every record picklable and
copyable (frozen ones too, whose ``__setattr__`` refuses).
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest

from rmtabtool._record import FrozenRecord, Record
from rmtabtool.entry import Entry
from rmtabtool.operations import ClientStats, Live, PathStats, StatsResult, WriteResult, _Plan
from rmtabtool.safefile import FileState, RewriteReport, _Reading


def _stats(**changes: Any) -> StatsResult:
    fields: dict[str, Any] = {
        "file": "rmtab",
        "bytes": 10,
        "lines": 2,
        "entries": 1,
        "duplicate_lines": 1,
        "bloat": 2.0,
        "rejected": 0,
        "rejected_by_reason": {},
        "rejected_lines": [],
        "mountd_stops_at_line": None,
        "mountd_hidden_lines": 0,
        "zero_count_entries": 0,
        "clients": 1,
        "paths": [PathStats(b"/srv", 1, 2)],
        "top_clients": [ClientStats(b"h", 1, 2)],
        "size_after_dedupe": 5,
        "missing_final_newline": False,
    }
    fields.update(changes)
    return StatsResult(**fields)


def _kind(record: Record) -> str:
    return type(record).__name__


def _all_records() -> list[Record]:
    return [
        FileState(1, 2, 3, 4),
        _Reading(None, 2),
        RewriteReport(Path("/x"), changed=True, stale_temps_removed=[Path("/x/.t")]),
        Live(Path("/var/lib/nfs/rmtab"), 5.0),
        WriteResult("dedupe", "rmtab", lines_in=3, removed=[Entry(b"h", b"/p", 2)]),
        PathStats(b"/srv", 1, 2),
        ClientStats(b"h", 1, 2),
        _stats(),
        _Plan(),
    ]


def test_positional_order_and_defaults_are_the_dataclass_ones() -> None:
    state = FileState(1, 2, 3, 4)
    assert (state.dev, state.ino, state.size, state.mtime_ns) == (1, 2, 3, 4)
    assert (_Reading().progress, _Reading().jobs) == (None, 1)
    live = Live(Path("/r"))
    assert live.lock_timeout == 10.0
    assert live.statedir == Path("/")
    report = RewriteReport(Path("/x"))
    assert (report.changed, report.created, report.dry_run, report.snapshot) == (
        False,
        False,
        False,
        None,
    )
    assert report.stale_temps_removed == []
    result = WriteResult("merge", "out")
    assert (result.rejects_file, result.skipped, result.content) == (None, None, None)
    assert (result.rejected_lines, result.removed, result.warnings) == ([], [], [])
    assert PathStats(b"/p", 3, 4).mounts == 4
    plan = _Plan()
    assert (len(plan.table), plan.lines_in, plan.removed, plan.own_rejected) == (0, 0, [], [])


def test_mutable_defaults_are_not_shared() -> None:
    first, second = WriteResult("a", "f"), WriteResult("a", "f")
    first.warnings.append("w")
    first.removed.append(Entry(b"h", b"/p"))
    assert second.warnings == []
    assert second.removed == []
    one, two = RewriteReport(Path("/x")), RewriteReport(Path("/x"))
    one.stale_temps_removed.append(Path("/x/.t"))
    assert two.stale_temps_removed == []
    plan_a, plan_b = _Plan(), _Plan()
    plan_a.removed.append(Entry(b"h", b"/p"))
    assert plan_b.removed == []
    assert plan_a.table is not plan_b.table


def test_equality_is_by_class_and_every_field() -> None:
    assert FileState(1, 2, 3, 4) == FileState(1, 2, 3, 4)
    assert FileState(1, 2, 3, 4) != FileState(1, 2, 3, 5)
    assert WriteResult("a", "f", changed=True) == WriteResult("a", "f", changed=True)
    assert WriteResult("a", "f", changed=True) != WriteResult("a", "f")
    assert _stats() == _stats()
    assert _stats() != _stats(paths=[])
    # same fields, other class: not equal (as with dataclasses)
    assert PathStats(b"x", 1, 2) != ClientStats(b"x", 1, 2)
    assert FileState(1, 2, 3, 4) != (1, 2, 3, 4)


def test_repr_names_the_fields_in_order() -> None:
    assert repr(FileState(1, 2, 3, 4)) == "FileState(dev=1, ino=2, size=3, mtime_ns=4)"
    assert repr(PathStats(b"/srv", 1, 2)) == "PathStats(path=b'/srv', clients=1, mounts=2)"
    assert repr(Live(Path("/r"), 1.5)).startswith("Live(path=")


@pytest.mark.parametrize("record", [FileState(1, 2, 3, 4), _Reading(), Live(Path("/r"))])
def test_frozen_records_refuse_changes_and_hash_by_value(record: FrozenRecord) -> None:
    name = type(record).__slots__[0]
    with pytest.raises(AttributeError):
        setattr(record, name, 0)
    with pytest.raises(AttributeError):
        delattr(record, name)
    with pytest.raises(AttributeError):
        record.other = 1
    assert hash(record) == hash(copy.copy(record))
    assert {record, copy.deepcopy(record)} == {record}


@pytest.mark.parametrize("record", _all_records(), ids=_kind)
def test_records_pickle_and_copy_to_equal_values(record: Record) -> None:
    assert pickle.loads(pickle.dumps(record)) == record
    assert copy.copy(record) == record
    assert copy.deepcopy(record) == record


@pytest.mark.parametrize(
    "record", [r for r in _all_records() if not isinstance(r, FrozenRecord)], ids=_kind
)
def test_mutable_records_are_unhashable_and_have_no_stray_attributes(record: Record) -> None:
    with pytest.raises(TypeError):
        hash(record)
    with pytest.raises(AttributeError):
        record.misspelled_field = 1  # type: ignore[attr-defined]

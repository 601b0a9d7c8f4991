"""rmtabtool's rewrite of the live rmtab never hides mountd's next change from DUMP.

mountd's DUMP (``showmount -a``) re-reads rmtab only when its mtime SECOND
changed. A rewrite made in the second S of mountd's last write must therefore
land in another second; rmtabtool once dated its file ``S+1`` (in the future),
and any UMNT mountd made during the real second S+1 then got an mtime in that
same, already cached second: invisible to DUMP until the file changed in yet
another second. Now rmtabtool waits (without mountd's lock) for the clock to
enter S+1 and keeps the natural mtime; mountd's next change in S+1 or later is
seen.
"""

from __future__ import annotations

import os
import time

import pytest

from rmtabtool import Entry

from .conftest import Mountd
from .test_mountd_cli import (
    _dump_of,
    _file,
    _rewrite_in_the_second_of,
    _sleep_to_next_second,
    _umnt_once,
)

pytestmark = [pytest.mark.mountd, pytest.mark.root]


def _wait_for_second(second: int) -> None:
    while int(time.time()) < second:
        time.sleep(0.005)


def test_a_umnt_in_the_second_after_a_rewrite_is_visible_to_dump(mountd: Mountd) -> None:
    export = mountd.export
    model = [
        Entry(b"127.0.0.2", export, 100),
        Entry(b"127.0.0.3", export, 1),
        Entry(b"127.0.0.4", export, 1),
        Entry(b"10.0.1.1", export, 1),
        Entry(b"10.0.1.2", export, 1),
    ]
    mountd.write_rmtab(_file(model))

    # mountd alone: UMNT in S, DUMP caches S, UMNT in S+1: DUMP sees it
    _sleep_to_next_second()
    model = _umnt_once(mountd, model, "127.0.0.2", export)
    assert mountd.dump() == _dump_of(model)
    _wait_for_second(int(time.time()) + 1)
    model = _umnt_once(mountd, model, "127.0.0.4", export)
    assert mountd.dump() == _dump_of(model)

    # with rmtabtool: UMNT in S, DUMP, rmtabtool rewrite in S, DUMP, UMNT in S+1
    def umnt_and_dump() -> None:
        nonlocal model
        model = _umnt_once(mountd, model, "127.0.0.2", export)
        assert mountd.dump() == _dump_of(model)

    for victim, warmup in ((b"10.0.1.1", 1.0), (b"10.0.1.2", 3.0)):
        result, second, rewritten = _rewrite_in_the_second_of(
            mountd, umnt_and_dump, "forget", "--client", victim.decode(), warmup=warmup
        )
        assert result["changed"] is True
        model = [e for e in model if e.client != victim]
        assert mountd.dump() == _dump_of(model)  # mountd now caches the new file's second
        # The rewrite was released in S, right after mountd wrote in S: it had to
        # leave S (renamed in S: the old, future-dated way; in S+1: waiting).
        if rewritten in (second, second + 1):
            break
    else:
        pytest.skip("could not place the rewrite in the second of the UMNT before it")
    st = os.stat(mountd.rmtab)
    mtime = st.st_mtime_ns / 1e9
    assert int(mtime) != second  # the DUMP cache saw the rewrite...
    assert st.st_mtime_ns // 10**9 <= st.st_ctime_ns // 10**9, (
        f"renamed at {st.st_ctime_ns / 1e9:.3f}, dated {mtime:.3f}: in the future"
    )

    # mountd's next change, in the first second after the rewrite: DUMP must see it
    _wait_for_second(rewritten + 1)
    model = _umnt_once(mountd, model, "127.0.0.3", export)
    umnt_mtime = os.stat(mountd.rmtab).st_mtime_ns / 1e9

    assert mountd.read_rmtab() == _file(model)  # the UMNT did happen
    assert mountd.dump() == _dump_of(model), (
        f"DUMP is stale: rmtabtool's rewrite (renamed in second {rewritten}) is dated "
        f"{mtime:.3f}; mountd's UMNT at {umnt_mtime:.3f} fell in that second, so "
        "mountd kept its cached list"
    )

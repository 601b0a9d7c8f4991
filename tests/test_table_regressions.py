"""read_table regressions: behaviour an earlier reader got wrong.

An unterminated last line of exactly 2046 bytes was reported as a place where
rpc.mountd stops parsing; mountd simply reaches the end of the file there.
"""

from __future__ import annotations

from mountd_model import mountd_read

from rmtabtool import MAX_LINE, read_bytes


def test_an_unterminated_last_line_of_whole_fgets_pieces_does_not_stop_mountd() -> None:
    # Last line: 2046 bytes, no final newline. fgets returns the 2046 bytes, then
    # EOF: mountd reads the whole file. A terminated 2046-byte line WOULD stop it
    # (its newline comes back alone, a blank line), and read_table cannot tell the
    # two apart unless it calls stops_mountd(line, terminated=False) for the last line.
    last = b"h:/" + b"x" * (MAX_LINE - 3)
    data = b"a:/p:0x00000001\n" + last
    assert mountd_read(data).stopped_at_line is None
    assert mountd_read(data + b"\n").stopped_at_line == 2
    assert read_bytes(data + b"\n").mountd_stops_at_line == 2
    assert read_bytes(data).mountd_stops_at_line is None

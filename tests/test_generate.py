"""benchmarks/generate.py: deterministic, exact in size, seed-like, and it dedupes.

The benchmark figures and the bundled example are only worth something if the
generator makes the same file every time, of the size asked for, holding every
feature of the 2012 incident, and collapsing (via read_table) to a small set.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from scripts import load_script

from rmtabtool import read_table

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "generate.py"
KIB = 1024
MIB = 1024 * KIB


gen = load_script("benchmarks/generate.py", "rmtab_generate")


def make(size: int, seed: int = 1) -> bytes:
    out = io.BytesIO()
    gen.generate(out, size, seed)
    return out.getvalue()


@pytest.fixture(scope="module")
def medium() -> bytes:
    return make(2 * MIB, seed=1)


def test_same_seed_same_bytes() -> None:
    assert make(300 * KIB, seed=7) == make(300 * KIB, seed=7)


def test_other_seed_other_bytes() -> None:
    assert make(300 * KIB, seed=1) != make(300 * KIB, seed=2)


def test_output_does_not_depend_on_hash_randomisation(tmp_path: Path) -> None:
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"out{hash_seed}"
        subprocess.run(
            [sys.executable, str(SCRIPT), "--size", "100K", "--seed", "3", "-o", str(out)],
            check=True,
            env={"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"},
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] == make(100 * KIB, seed=3)


@pytest.mark.parametrize("size", [40 * KIB, 192 * KIB, 1 * MIB + 7, 5 * MIB])
def test_requested_size_within_one_byte(size: int) -> None:
    data = make(size)
    # exactly the size, or one byte less when the cut would have ended a line
    assert size - 1 <= len(data) <= size
    assert not data.endswith(b"\n")


@pytest.mark.parametrize(
    ("text", "size"),
    [("200K", 200 * KIB), ("16M", 16 * MIB), ("1.6G", int(1.6 * 1024**3)), ("512", 512)],
)
def test_size_suffixes_are_powers_of_1024(text: str, size: int) -> None:
    assert gen.parse_size(text) == size


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="not a size"):
        gen.parse_size("lots")


def test_simulated_features_are_all_there(medium: bytes) -> None:
    lines = medium.split(b"\n")
    last = lines.pop()
    assert last, "the last line is cut off (the disk filled up), no final newline"
    counts = Counter(lines)
    # the base set of mounts
    assert any(re.match(rb"^\d+\.\d+\.\d+\.\d+:/srv/nfs/", x) for x in counts)  # IPv4
    assert any(re.match(rb"^[0-9a-f]*;[0-9a-f;]*:/", x) for x in counts)  # IPv6 with ';'
    assert any(b"%eth0:" in x for x in counts)  # a scope id
    assert any(re.match(rb"^[a-z][a-z0-9.-]*[a-z]:/", x) for x in counts)  # host names
    assert any(b":/srv/nfs/home/alice:" in x for x in counts)  # sub-directory mounts
    non_utf8 = [x for x in counts if not _is_utf8(x)]
    assert non_utf8, "a Latin-1 path"
    # mountd's in-place count bumps: the same mount at two counts
    keys = Counter(x.rsplit(b":", 1)[0] for x in counts if x.endswith(b"0x00000002"))
    assert any(x.rsplit(b":", 1)[0] in keys for x in counts if x.endswith(b"0x00000001"))
    # the doubling: a handful of distinct lines, each many times
    assert len(counts) < 300
    assert counts.most_common(1)[0][1] > 200
    # the malformed lines
    assert counts[b""] >= 1  # a blank line
    assert any(x.startswith(b"#") for x in counts)  # a '#' comment
    assert any(x.endswith(b":0x1") for x in counts)  # a short count
    glued = [x for x in counts if len(re.findall(rb":/srv/nfs/", x)) == 2]
    assert glued, "a line glued to the next one"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_output_dedupes_to_the_small_distinct_set(medium: bytes) -> None:
    result = read_table(io.BytesIO(medium))
    assert result.lines == medium.count(b"\n") + 1
    assert result.distinct_lines == len(set(medium.split(b"\n")))
    assert result.distinct_lines < 300
    assert len(result.table) < result.distinct_lines
    assert result.lines > 100 * result.distinct_lines
    assert result.missing_final_newline
    reasons = {r.reason.value for r in result.rejected}
    assert {"blank", "comment", "bad-count"} <= reasons
    # mountd stops at the blank line, and there is something after it
    blank = next(r for r in result.rejected if r.reason.value == "blank")
    assert result.mountd_stops_at_line == blank.first_line < result.lines
    # what dedupe writes is tiny
    assert len(result.table.to_bytes()) < 16 * KIB


def test_the_bundled_example_is_what_the_documented_command_makes() -> None:
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    match = re.search(
        r"python benchmarks/generate.py --size (\S+) --seed (\d+) -o examples/bloated-rmtab",
        readme,
    )
    assert match is not None, "benchmarks/README.md documents the example's command"
    example = (ROOT / "examples" / "bloated-rmtab").read_bytes()
    assert len(example) <= 200 * KIB
    assert example == make(gen.parse_size(match.group(1)), int(match.group(2)))


def test_writes_to_stdout(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "50K", "--seed", "2", "-o", "-"],
        check=True,
        capture_output=True,
    )
    assert out.stdout == make(50 * KIB, seed=2)


def test_memory_is_bounded_and_writing_is_streamed() -> None:
    """Memory follows the history (failovers, ~log of the size), not the size.

    Measured: 24 MiB of peak RSS for 4 MiB, 39 MiB for 64 MiB, 78 MiB for 1.6 GiB.
    """
    code = (
        "import resource, sys, io; sys.path.insert(0, sys.argv[1]); import generate\n"
        "class Null(io.RawIOBase):\n"
        "    def writable(self): return True\n"
        "    def write(self, b): return len(b)\n"
        "generate.generate(Null(), int(sys.argv[2]), 1)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )

    def peak(size: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", code, str(SCRIPT.parent), str(size)],
            check=True,
            capture_output=True,
            text=True,
        )
        return int(out.stdout)

    small, big = peak(4 * MIB), peak(64 * MIB)
    assert big - small < 32 * 1024  # KiB, for 60 MiB more output

"""Work units (`pipeline/units.py`): whatever the unit size, the units' records concatenated in unit order are the
records of reading each whole file (source, line, bytes, error and detail), for JSONL byte ranges and Parquet
row-group ranges; and planning is deterministic and cuts only at line starts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lossmask.pipeline.read import iter_file
from lossmask.pipeline.units import count_unit, number_units, plan_units, unit_records

MAX_RECORD = 48  # small, so some lines are too large and must be skipped to their end inside a unit

_line = st.one_of(
    st.builds(lambda v: json.dumps(v).encode(), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3)),
    st.just(b""),  # blank lines: no record, but counted
    st.sampled_from([b"   ", b"\t", b"\r", b"{", b"not json", b"\xff\xfe", b"\xef\xbb\xbf{}", b"[1, 2]"]),
    st.binary(max_size=80),  # anything, newlines included: lines of any length, too large ones too
    st.builds(lambda n: b'{"x": "' + b"y" * n + b'"}', st.integers(40, 120)),
)


def as_tuples(records) -> list[tuple]:
    return [(r.source, r.line, r.error, r.detail, r.value) for r in records]


def read_by_units(paths, unit_bytes: int) -> list[tuple]:
    """Each unit read apart, numbered from the counts alone (as a planner would: no unit sees another's records)."""
    units = plan_units(paths, unit_bytes)
    out: list[tuple] = []
    for unit, first_index in number_units(units, [count_unit(u, MAX_RECORD) for u in units]):
        out.extend(as_tuples(unit_records(unit, first_index, MAX_RECORD)))
    return out


def read_whole(paths) -> list[tuple]:
    out: list[tuple] = []
    for path in paths:
        out.extend(as_tuples(iter_file(path, str(path), len(out), MAX_RECORD)))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(_line, max_size=40),
    ending=st.sampled_from([b"\n", b"\r\n"]),
    final_newline=st.booleans(),
    bom=st.booleans(),
    unit_bytes=st.integers(1, 400),
)
def test_jsonl_byte_ranges_concatenated_are_the_files_records(
    tmp_path: Path, lines, ending, final_newline, bom, unit_bytes
):
    data = (b"\xef\xbb\xbf" if bom else b"") + ending.join(lines) + (ending if final_newline and lines else b"")
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    other = tmp_path / "other.jsonl"  # a second file: indices and lines go on across files, restart per file
    other.write_bytes(b'{"a": 1}\n\n{"a": 2}\n' * 3)
    paths = [path, other]
    assert read_by_units(paths, unit_bytes) == read_whole(paths)
    units = plan_units(paths, unit_bytes)
    assert units == plan_units(paths, unit_bytes)  # deterministic
    assert [u.index for u in units] == list(range(len(units)))
    for unit in units:
        if unit.kind == "bytes":  # each range starts at a line start and they tile the file
            assert unit.start == 0 or data[unit.start - 1 : unit.start] == b"\n" or unit.path == other
    ranges = [(u.start, u.end) for u in units if u.path == path and u.kind == "bytes"]
    if ranges:
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_a_large_jsonl_file_is_cut_into_many_units_near_the_unit_size(tmp_path: Path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(json.dumps({"i": i, "pad": "x" * (i % 17)}).encode() + b"\n" for i in range(2000)))
    units = plan_units([path], 4096)
    assert len(units) > 10 and all(u.kind == "bytes" for u in units)
    assert all(abs((u.end - u.start) - 4096) < 64 for u in units[:-1])
    assert read_by_units([path], 4096) == read_whole([path])


def test_compressed_and_array_files_are_never_cut_and_small_files_share_a_unit(tmp_path: Path):
    (tmp_path / "a.json").write_text(json.dumps([{"a": i} for i in range(100)]))
    (tmp_path / "b.jsonl.gz").write_bytes(b"")
    (tmp_path / "c.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "d.jsonl").write_text('{"a": 2}\n')
    paths = [tmp_path / n for n in ("a.json", "b.jsonl.gz", "c.jsonl", "d.jsonl")]
    units = plan_units(paths, 16)
    # a.json is larger than a unit but cannot be cut; b and c fit in one unit together (9 bytes), d does not
    assert [(u.kind, [f.name for f in u.files]) for u in units] == [
        ("file", ["a.json"]),
        ("file", ["b.jsonl.gz", "c.jsonl"]),
        ("file", ["d.jsonl"]),
    ]
    assert read_by_units(paths, 16) == read_whole(paths)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=12), unit_bytes=st.integers(1, 120))
def test_whole_files_are_grouped_in_order_within_the_unit_size(tmp_path: Path, sizes, unit_bytes):
    """Files too small to cut are grouped, in input order, as many as fit in `unit_bytes` (a larger one alone),
    and each file is in exactly one unit."""
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i:02d}.json"  # JSON arrays: never cut, whatever their size
        path.write_text(json.dumps(["x" * max(0, size - 4)] if size >= 4 else []) if size else "")
        paths.append(path)
    units = plan_units(paths, unit_bytes)
    assert [f for u in units for f in u.files] == paths
    for unit in units:
        total = sum(f.stat().st_size for f in unit.files)
        assert len(unit.files) == 1 or total <= unit_bytes
    for a, b in itertools.pairwise(units):  # a unit closes only when the next file would not fit
        assert sum(f.stat().st_size for f in (*a.files, b.path)) > unit_bytes
    assert read_by_units(paths, unit_bytes) == read_whole(paths)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(0, 120),
    row_group_size=st.integers(1, 50),
    unit_bytes=st.integers(1, 4000),
)
def test_parquet_row_group_ranges_concatenated_are_the_files_records(tmp_path: Path, rows, row_group_size, unit_bytes):
    table = pa.table({"text": [f"document {i} " + "w" * (i % 13) for i in range(rows)], "n": list(range(rows))})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=row_group_size)
    units = plan_units([path], unit_bytes)
    groups = pq.ParquetFile(path).metadata.num_row_groups
    if len(units) > 1:
        assert units[0].start == 0 and units[-1].end == groups
        assert all(a.end == b.start for a, b in itertools.pairwise(units))
    assert read_by_units([path], unit_bytes) == read_whole([path])

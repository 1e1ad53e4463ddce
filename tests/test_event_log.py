import os
import random

import pytest

from components.event_log import EventLogError, EventLogWriter, Position, plan_read, read_chunk, segment_name


def read_all(log_dir, start=None, chunk_bytes=1 << 20):
    plan = plan_read(log_dir, start, chunk_bytes=chunk_bytes)
    return plan, [(Position(c.segment, off), line) for c in plan.chunks for off, line in read_chunk(log_dir, c)]


def write_random_log(log_dir, n, seed=0, max_segment_bytes=700):
    rng = random.Random(seed)
    lines = [("%d:" % i + "x" * rng.randint(0, 120)).encode() for i in range(n)]
    with EventLogWriter(log_dir, max_segment_bytes=max_segment_bytes) as w:
        for i in range(0, n, 7):
            w.write_lines(lines[i:i + 7])
    return lines


@pytest.mark.parametrize("chunk_bytes", [11, 100, 701, 1 << 20])
def test_every_line_is_read_exactly_once_whatever_the_chunking(tmp_path, chunk_bytes):
    lines = write_random_log(str(tmp_path), 300)
    plan, read = read_all(str(tmp_path), chunk_bytes=chunk_bytes)
    assert [line for _, line in read] == lines
    assert len(os.listdir(tmp_path)) > 5  # rotated
    # Positions are line starts, strictly increasing in log order.
    positions = [p for p, _ in read]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert plan.end == Position(sorted(os.listdir(tmp_path))[-1], os.path.getsize(tmp_path / sorted(os.listdir(tmp_path))[-1]))


def test_reading_resumes_from_any_line_start(tmp_path):
    lines = write_random_log(str(tmp_path), 200)
    _, read = read_all(str(tmp_path))
    for k in (0, 1, 57, 199):
        _, rest = read_all(str(tmp_path), start=read[k][0], chunk_bytes=97)
        assert [line for _, line in rest] == lines[k:]
    _, nothing = read_all(str(tmp_path), start=plan_read(str(tmp_path), None).end)
    assert nothing == []


def test_partial_tail_of_newest_segment_waits_for_the_next_run(tmp_path):
    log = str(tmp_path)
    with EventLogWriter(log) as w:
        w.write_lines([b"one", b"two"])
    with open(os.path.join(log, segment_name(0)), "ab") as f:
        f.write(b"thr")  # a producer mid-write
    plan, read = read_all(log)
    assert [line for _, line in read] == [b"one", b"two"]
    assert plan.end == Position(segment_name(0), 8)
    with open(os.path.join(log, segment_name(0)), "ab") as f:
        f.write(b"ee\n")
    _, rest = read_all(log, start=plan.end)
    assert [line for _, line in rest] == [b"three"]


def test_truncated_line_in_an_older_segment_is_read(tmp_path):
    log = str(tmp_path)
    with open(os.path.join(log, segment_name(0)), "wb") as f:
        f.write(b"a\nb-truncated")
    with open(os.path.join(log, segment_name(1)), "wb") as f:
        f.write(b"c\n")
    _, read = read_all(log)
    assert [line for _, line in read] == [b"a", b"b-truncated", b"c"]


def test_writer_continues_the_newest_segment_and_never_splits_a_line(tmp_path):
    log = str(tmp_path)
    with EventLogWriter(log, max_segment_bytes=10) as w:
        w.write_lines([b"aaaa", b"bbbbbbbbbbbbbbb", b"cc"])
    with EventLogWriter(log, max_segment_bytes=10) as w:
        w.write_lines([b"d"])
    contents = [open(os.path.join(log, n), "rb").read() for n in sorted(os.listdir(log))]
    assert contents == [b"aaaa\n", b"bbbbbbbbbbbbbbb\n", b"cc\nd\n"]


def test_missing_folder_and_missing_segment_are_clear_errors(tmp_path):
    with pytest.raises(EventLogError, match="does not exist.*driftline simulate"):
        plan_read(str(tmp_path / "nope"), None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(EventLogError, match="is a file"):
        plan_read(str(tmp_path / "file"), None)
    log = str(tmp_path / "log")
    with EventLogWriter(log) as w:
        w.write_lines([b"x"])
    with pytest.raises(EventLogError, match="no longer in"):
        plan_read(log, Position("segment-000000000000-gone.jsonl", 0))
    with pytest.raises(EventLogError, match="shorter than the committed offset"):
        plan_read(log, Position(segment_name(0), 99))


def test_empty_log_plans_nothing(tmp_path):
    plan = plan_read(str(tmp_path), None)
    assert plan.chunks == () and plan.total_bytes == 0


def test_position_json_and_order():
    p = Position(segment_name(3), 17)
    assert Position.from_json(p.to_json()) == p
    assert Position(segment_name(2), 999) < Position(segment_name(3), 0) < Position(segment_name(3), 1)

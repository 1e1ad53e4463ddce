import json
import os
import pickle
import random
import subprocess
import sys
import tracemalloc

import pytest

from components.event_log import (
    OVERLONG_PREFIX_BYTES, EventLogError, EventLogWriter, OverlongLine, Position, plan_read, read_chunk, segment_name)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def segments(log_dir):
    """The segment names, oldest first (the folder also holds the writers' lock file)."""
    return sorted(n for n in os.listdir(log_dir) if n.endswith(".jsonl"))


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
    assert len(segments(tmp_path)) > 5  # rotated
    # Positions are line starts, strictly increasing in log order.
    positions = [p for p, _ in read]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    newest = segments(tmp_path)[-1]
    assert plan.end == Position(newest, os.path.getsize(tmp_path / newest))


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
    contents = [open(os.path.join(log, n), "rb").read() for n in segments(log)]
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


# -- several writers, torn lines, segments that grow after they were passed -------------------------------------


def read_on(log_dir, plan, chunk_bytes=1 << 20):
    """The next plan after `plan` (as a published run would commit it), and the lines it reads."""
    nxt = plan_read(log_dir, plan.end, chunk_bytes=chunk_bytes, passed_sizes=plan.segment_sizes)
    return nxt, [line for c in nxt.chunks for _, line in read_chunk(log_dir, c)]


def test_a_second_writer_appends_to_the_segment_the_first_one_rotated_to(tmp_path):
    log = str(tmp_path)
    a = EventLogWriter(log, max_segment_bytes=16)
    b = EventLogWriter(log, max_segment_bytes=16)  # both open while segment 0 is the newest
    a.write_lines([b"a1-------"])
    a.write_lines([b"a2-------"])  # rotates to segment 1
    plan, read = read_all(log)
    assert [line for _, line in read] == [b"a1-------", b"a2-------"]
    b.write_lines([b"b1"])  # must not go into segment 0, which the reader has passed
    a.write_lines([b"a3"])
    b.write_lines([b"b2-------"])  # segment 1 is full (a2, b1, a3): b rotates, a follows
    a.write_lines([b"a4"])
    a.close()
    b.close()
    _, rest = read_on(log, plan)
    assert rest == [b"b1", b"a3", b"b2-------", b"a4"]
    assert [open(os.path.join(log, n), "rb").read() for n in segments(log)] == [
        b"a1-------\n", b"a2-------\nb1\na3\n", b"b2-------\na4\n"]


def test_a_new_writer_starts_on_a_new_line_after_a_torn_one(tmp_path):
    log = str(tmp_path)
    with EventLogWriter(log) as w:
        w.write_events([{"event_id": "e1"}])
    with open(os.path.join(log, segment_name(0)), "ab") as f:
        f.write(b'{"event_id":"e2","ev')  # a writer died mid-line
    with EventLogWriter(log) as w:
        w.write_events([{"event_id": "e3"}])
    _, read = read_all(log)
    assert [line for _, line in read] == [b'{"event_id":"e1"}', b'{"event_id":"e2","ev', b'{"event_id":"e3"}']
    assert json.loads(read[-1][1]) == {"event_id": "e3"}


def test_a_running_writer_starts_on_a_new_line_after_another_writer_died_mid_line(tmp_path):
    log = str(tmp_path)
    w = EventLogWriter(log)
    w.write_lines([b"one"])
    with open(os.path.join(log, segment_name(0)), "ab") as f:
        f.write(b"tor")  # another writer, killed mid-line while `w` stays open
    w.write_lines([b"two"])
    w.close()
    _, read = read_all(log)
    assert [line for _, line in read] == [b"one", b"tor", b"two"]


def test_a_writer_that_died_mid_line_leaves_the_next_writer_a_whole_line(tmp_path):
    # A real process killed in the middle of its write: the lock dies with it.
    log = str(tmp_path)
    code = ("import os, sys; from components.event_log import EventLogWriter\n"
            "w = EventLogWriter(sys.argv[1]); w.write_lines([b'first'])\n"
            "with w._locked():\n"
            "    os.write(w._fd, b'{\"half'); os.kill(os.getpid(), 9)\n")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, "-c", code, log], env=env, cwd=REPO_ROOT)
    assert proc.returncode == -9
    with EventLogWriter(log) as w:
        w.write_lines([b'{"whole":1}'])
    _, read = read_all(log)
    assert [line for _, line in read] == [b"first", b'{"half', b'{"whole":1}']


def test_a_segment_that_grows_after_it_was_passed_stops_the_read_with_the_cause(tmp_path):
    log = str(tmp_path)
    with EventLogWriter(log, max_segment_bytes=10) as w:
        w.write_lines([b"aaaaaaa", b"bbbbbbb", b"ccccccc"])  # three segments
    plan, _ = read_all(log)
    assert plan.segment_sizes == ((segment_name(0), 8), (segment_name(1), 8))
    with EventLogWriter(log, max_segment_bytes=10) as w:
        w.write_lines([b"d"])
    plan, rest = read_on(log, plan)  # a locked writer appends to the newest only: fine
    assert rest == [b"d"]
    # A writer without the lock, still holding segment 1, appends to it.
    with open(os.path.join(log, segment_name(1)), "ab") as f:
        f.write(b"lost\n")
    with pytest.raises(EventLogError) as e:
        read_on(log, plan)
    message = str(e.value)
    assert f"segment {segment_name(1)!r}" in message and "grew from 8 to 13 bytes" in message
    assert "without the writer lock" in message and ".writer.lock" in message
    assert f"truncate {segment_name(1)!r} back to 8" in message
    # The repair the message names: the stray line moves to the newest segment, the passed one is cut back.
    with open(os.path.join(log, segment_name(1)), "r+b") as f:
        f.truncate(8)
    with EventLogWriter(log, max_segment_bytes=10) as w:
        w.write_lines([b"lost"])
    _, rest = read_on(log, plan)
    assert rest == [b"lost"]


def test_passed_segment_sizes_are_bounded_and_a_deleted_passed_segment_is_no_error(tmp_path):
    log = str(tmp_path)
    with EventLogWriter(log, max_segment_bytes=2) as w:
        w.write_lines([b"%d" % (i % 10) for i in range(100)])  # 100 segments of one line each
    plan, read = read_all(log)
    assert len(read) == 100
    assert [n for n, _ in plan.segment_sizes] == [segment_name(i) for i in range(35, 99)]
    os.remove(os.path.join(log, segment_name(40)))
    with EventLogWriter(log, max_segment_bytes=2) as w:
        w.write_lines([b"x"])
    nxt, rest = read_on(log, plan)
    assert rest == [b"x"] and len(nxt.segment_sizes) == 64


# -- over-long lines --------------------------------------------------------------------------------------------


def test_an_overlong_line_is_a_bounded_prefix_with_its_length_and_its_neighbours_are_intact(tmp_path):
    log = str(tmp_path)
    long_line = b'{"x":"' + b"y" * (3 << 20) + b'"}'
    with EventLogWriter(log) as w:
        w.write_lines([b"before", long_line, b"after"])
    for chunk_bytes in (1 << 20, 8 << 20):  # the line runs past a chunk's end / lies inside one chunk
        _, read = read_all(log, chunk_bytes=chunk_bytes)
        assert [(p.offset, bytes(line)) for p, line in read] == [
            (0, b"before"), (7, long_line[:OVERLONG_PREFIX_BYTES]), (7 + len(long_line) + 1, b"after")]
        assert not isinstance(read[0][1], OverlongLine) and not isinstance(read[2][1], OverlongLine)
        assert isinstance(read[1][1], OverlongLine) and read[1][1].full_length == len(long_line)


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1000, 1 << 20])
def test_long_lines_across_chunk_boundaries_are_each_read_once_at_their_offsets(tmp_path, chunk_bytes):
    rng = random.Random(5)
    lines = [(b"%d:" % i) + b"z" * rng.choice([0, 3, 40, 150, 900, 5000]) for i in range(120)]
    log = str(tmp_path)
    with EventLogWriter(log, max_segment_bytes=30_000) as w:
        w.write_lines(lines)
    max_line_bytes = 100
    read = []
    for c in plan_read(log, None, chunk_bytes=chunk_bytes).chunks:
        read += [(c.segment, off, line) for off, line in read_chunk(log, c, max_line_bytes=max_line_bytes)]
    # The truth by plain splitting of the files.
    expected = []
    for name in segments(log):
        offset = 0
        for line in open(os.path.join(log, name), "rb").read().split(b"\n")[:-1]:
            expected.append((name, offset, line))
            offset += len(line) + 1
    assert [(s, o) for s, o, _ in read] == [(s, o) for s, o, _ in expected]
    for (_, _, got), (_, _, line) in zip(read, expected):
        if len(line) > max_line_bytes:
            assert isinstance(got, OverlongLine) and got.full_length == len(line) and got == line[:max_line_bytes]
        else:
            assert got == line and not isinstance(got, OverlongLine)


def test_a_blank_overlong_line_is_skipped_like_any_blank_line(tmp_path):
    log = str(tmp_path)
    with open(os.path.join(log, segment_name(0)), "wb") as f:
        f.write(b"a\n" + b" " * 5000 + b"\nb\n")
    for chunk_bytes in (3, 1000, 1 << 20):
        plan = plan_read(log, None, chunk_bytes=chunk_bytes)
        assert [line for c in plan.chunks for _, line in read_chunk(log, c, max_line_bytes=10)] == [b"a", b"b"]


def test_reading_a_50_mib_line_holds_a_bounded_part_of_it(tmp_path):
    log = str(tmp_path)
    size = 50 << 20
    with open(os.path.join(log, segment_name(0)), "wb") as f:
        f.write(b"head\n")
        block = b"q" * (1 << 20)
        for _ in range(size >> 20):
            f.write(block)
        f.write(b"\ntail\n")
    plan = plan_read(log, None)  # the default 8 MiB chunks
    read_chunk(log, plan.chunks[0]).__next__()  # imports TensorFlow before measuring
    tracemalloc.start()
    try:
        read = [(off, line) for c in plan.chunks for off, line in read_chunk(log, c)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(off, bytes(line)) for off, line in read] == [(0, b"head"), (5, b"q" * 1024), (5 + size + 1, b"tail")]
    assert read[1][1].full_length == size
    # Two chunks' worth at most (a chunk and its split lines); the whole line would be 50 MiB.
    assert peak < 20 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_an_overlong_line_pickles_with_its_length():
    line = OverlongLine(b"abc", 12345)
    back = pickle.loads(pickle.dumps(line))
    assert isinstance(back, OverlongLine) and back == b"abc" and back.full_length == 12345

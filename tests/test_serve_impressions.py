"""The impressions log writer (#20): batched, asynchronous, and never a reason to stop serving."""
import contextlib
import fcntl
import os
import threading
import time

import pytest

from components.event_log import WRITER_LOCK_FILE
from components.event_schema import SchemaError, ad_click_schema
from pipelines.serve.impressions import ImpressionLog, impressions_schema

SCHEMA = ad_click_schema()


def _entry(i, version=1):
    return {"event_id": f"r-{i}", "event_time": 1_790_000_000_000 + i, "user_id": "u", "ad_id": f"a{i}",
            "ad_category": "c", "device": "d", "hour_of_day": 3, "price": 1.5, "request_id": "r",
            "model_version": version, "score": 0.25, "position": i}


class Counts:
    def __init__(self):
        self.logged = 0
        self.dropped = {}
        self.lock = threading.Lock()

    def on_logged(self, n):
        with self.lock:
            self.logged += n

    def on_dropped(self, n, reason):
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n


def _columns(entries):
    return {k: [e[k] for e in entries] for k in entries[0]}, len(entries)


def _lines(folder):
    return [line for name in sorted(os.listdir(folder)) if name.endswith(".jsonl")
            for line in open(os.path.join(folder, name), "rb") if line.strip()]


def _until(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_entries_land_in_the_event_log_and_parse_as_an_impressions_stream(tmp_path):
    counts = Counts()
    log = ImpressionLog(str(tmp_path / "imp"), on_logged=counts.on_logged, on_dropped=counts.on_dropped)
    for r in range(50):
        log.submit(*_columns([_entry(r * 10 + i) for i in range(10)]))
    log.close()
    assert counts.logged == 500 and counts.dropped == {}
    schema = impressions_schema(SCHEMA)
    parsed = [schema.parse(line) for line in _lines(str(tmp_path / "imp"))]
    assert [p["event_id"] for p in parsed] == [f"r-{i}" for i in range(500)]
    # What the server adds beyond these lines (shadow scoring, routing, exploring) is optional: absent, it is None.
    optional = ("shadow_model_id", "shadow_score", "arm", "arm_propensity", "challenger_model_id", "model_id",
                "greedy_position", "explored", "propensity", "arm_latency_ms", "challenger_fallback")
    assert parsed[7] == {**_entry(7), "clicked": None, **{k: None for k in optional}}


def test_the_impressions_schema_keeps_the_label_optional_and_refuses_clashing_names():
    schema = impressions_schema(SCHEMA)
    assert schema.label_field == "clicked" and not schema.field_map["clicked"].required
    assert schema.id_field == SCHEMA.id_field and schema.field_map["model_version"].type == "int"
    # A label is optional only when declared so: a stream's own schema still requires it by default.
    assert SCHEMA.field_map["clicked"].required
    import dataclasses

    from components.event_schema import FieldSpec

    clashing = dataclasses.replace(SCHEMA, fields=SCHEMA.fields + (FieldSpec("score", "float"),))
    with pytest.raises(ValueError, match="score"):
        impressions_schema(clashing)
    # The id and event time stay required.
    with pytest.raises(SchemaError, match="must be required"):
        dataclasses.replace(SCHEMA, fields=tuple(dataclasses.replace(f, required=False) if f.name == "event_id"
                                                 else f for f in SCHEMA.fields))


def test_an_unavailable_log_is_counted_and_recovers(tmp_path):
    counts = Counts()
    path = tmp_path / "imp"
    path.write_text("a file where the folder should be")
    log = ImpressionLog(str(path), on_logged=counts.on_logged, on_dropped=counts.on_dropped)
    log.submit(*_columns([_entry(i) for i in range(3)]))
    _until(lambda: counts.dropped.get("write_error") == 3)
    assert counts.logged == 0 and "FileExistsError" in log.last_error
    path.unlink()  # the log is back
    log.submit(*_columns([_entry(i) for i in range(4)]))
    log.close()
    assert counts.logged == 4 and len(_lines(str(path))) == 4


@contextlib.contextmanager
def _another_writer_holding(folder):
    """`folder` (created) with its writer lock held by someone else, so the log's writer waits behind it."""
    folder.mkdir()
    lock_fd = os.open(str(folder / WRITER_LOCK_FILE), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    """The writer stuck behind another writer's lock: requests keep returning, the overflow is counted."""
    folder = tmp_path / "imp"
    counts = Counts()
    with _another_writer_holding(folder):
        log = ImpressionLog(str(folder), max_pending=2, on_logged=counts.on_logged, on_dropped=counts.on_dropped)
        started = time.monotonic()
        for r in range(20):
            log.submit(*_columns([_entry(r)]))
        assert time.monotonic() - started < 1.0
        # One batch may be in the writer's hands, two wait in the queue; the rest are dropped.
        assert counts.dropped["queue_full"] >= 17
    log.close()
    assert counts.logged + counts.dropped["queue_full"] == 20
    assert len(_lines(str(folder))) == counts.logged


def test_the_shadow_candidate_scores_in_the_writers_thread_and_submit_never_waits_for_it(tmp_path, serve_models):
    """A request's path ends at `submit` (pipelines/serve/app.py): the shadow model is handed over as a
    reference and called by the log's own thread. Held at a gate inside its predict, it stops no submit and
    no response; once released, each line carries its id and its score of that request's features. A shadow
    that fails leaves the lines logged without a shadow score, and counted."""
    import numpy as np

    from pipelines.serve.lineage_watch import ShadowModel
    from pipelines.serve.model_store import load_saved_model

    real = load_saved_model(serve_models[3], 3, SCHEMA)
    gate, threads = threading.Event(), []

    class Gated:  # the real model, held at a gate: its scoring cannot finish until the test opens it
        def predict(self, columns):
            threads.append(threading.current_thread().name)
            assert gate.wait(60)
            return real.predict(columns)

    class Broken:
        def predict(self, columns):
            raise KeyError("a field this candidate needs")

    counts, shadowed = Counts(), {}

    def on_shadow(n, error):
        shadowed[error is None] = shadowed.get(error is None, 0) + n

    folder = str(tmp_path / "imp")
    log = ImpressionLog(folder, on_logged=counts.on_logged, on_dropped=counts.on_dropped, on_shadow=on_shadow)
    batches = [[_entry(r * 10 + i) for i in range(10)] for r in range(3)]
    for b in batches:
        b[0]["price"] = 99.0 + len(b)  # features that differ between items, so scores do too
    started = time.monotonic()
    for b in batches:
        log.submit(*_columns(b), shadow=ShadowModel(7, serve_models[3], Gated()))
    assert time.monotonic() - started < 0.5
    _until(lambda: threads)
    time.sleep(0.3)
    assert threads == ["impressions"] and counts.logged == 0  # the writer waits on the shadow; submit did not
    log.submit(*_columns([_entry(100), _entry(101)]), shadow=ShadowModel(8, serve_models[1], Broken()))
    gate.set()
    log.close()
    assert counts.logged == 32 and shadowed == {True: 30, False: 2}
    parsed = [impressions_schema(SCHEMA).parse(line) for line in _lines(folder)]
    for b, lines in zip(batches, (parsed[0:10], parsed[10:20], parsed[20:30])):
        want = real.predict(_columns(b)[0])
        assert np.ptp(want) > 0
        assert [p["shadow_model_id"] for p in lines] == [7] * 10
        np.testing.assert_array_equal(np.array([p["shadow_score"] for p in lines], dtype=np.float32), want)
    assert [(p["shadow_model_id"], p["shadow_score"]) for p in parsed[30:]] == [(None, None)] * 2


# Values whose JSON texts defeat a naive split: commas, quotes, backslashes, '","' itself, escapes,
# non-ASCII, empty strings, -0.0 beside 0.0 (equal, but not the same text), big ints, nesting.
AWKWARD = {
    "plain": ["a", "b", "c"],
    "commas": ["x,y", ",", "z"],
    "quotes": ['say "hi"', '","', '\\'],
    "escapes": ["line\nbreak", "tab\t", "\u2028é"],
    "empty": ["", "", ""],
    "same_string": ["ctx", "ctx", "ctx"],
    "zeros": [0.0, -0.0, 0.0],
    "floats": [0.1, 1e-7, 3.4e38],
    "same_float": [2.5, 2.5, 2.5],
    "ints": [2 ** 62, -1, 0],
    "same_int": [7, 7, 7],
    "mixed": [1, "1", None],
    "nested": [[1, 2], {"k": "v,w"}, ["a", "b"]],
    "same_nested": [[1, 2], [1, 2], [1, 2]],
    'key "with" quote,': [True, False, True],
}


def test_lines_from_encoded_columns_hold_each_value_as_json_writes_it():
    """The writer process splits the server's JSON arrays instead of parsing them; every line must still
    be the row, value for value and text for text (-0.0 stays -0.0, a value shared by all rows too)."""
    import json
    import math

    from pipelines.serve.impressions import encode_columns, lines_of

    lines = lines_of(encode_columns(AWKWARD, 3))
    assert len(lines) == 3 and all(b"\n" not in line for line in lines)
    for i, line in enumerate(lines):
        row = json.loads(line)
        assert set(row) == set(AWKWARD)
        for key, values in AWKWARD.items():
            assert row[key] == values[i], key
            assert type(row[key]) is type(values[i]), key
        assert math.copysign(1.0, row["zeros"]) == math.copysign(1.0, AWKWARD["zeros"][i])
    assert lines_of(encode_columns({"a": [], "b": []}, 0)) == []
    only_shared = lines_of(encode_columns({"a": ["x", "x"], "b": [1, 1]}, 2))
    assert [json.loads(line) for line in only_shared] == [{"a": "x", "b": 1}] * 2
    one = lines_of(encode_columns({"a": ['q"'], "b": [-0.0]}, 1))
    assert json.loads(one[0]) == {"a": 'q"', "b": -0.0} and b"-0.0" in one[0]


def test_a_value_json_cannot_hold_is_dropped_and_counted_and_the_log_goes_on(tmp_path):
    counts = Counts()
    log = ImpressionLog(str(tmp_path / "imp"), on_logged=counts.on_logged, on_dropped=counts.on_dropped)
    try:
        log.submit({"event_id": ["a", "b"], "score": [object(), 0.5]}, 2)  # never raises into the request
        log.submit(*_columns([_entry(i) for i in range(3)]))
        _until(lambda: counts.logged == 3)
    finally:
        log.close()
    assert counts.dropped == {"write_error": 2}
    assert len(_lines(str(tmp_path / "imp"))) == 3


def test_columns_every_row_shares_are_handed_over_once_and_give_the_same_lines():
    """A request hands its own fields (request id, version, arm...) over as Repeated: one value encoded and
    sent, not n copies; the lines are byte for byte those of the n copies, and the batch's bytes shrink."""
    from pipelines.serve.impressions import Repeated, encode_columns, encoded_bytes, lines_block, lines_of

    n = 50
    base = {"event_id": [f"x-{i}" for i in range(n)], "price": [0.5 + i for i in range(n)],
            "user_id": ["u"] * n}  # shared by value: found by the writer, as before
    extra = {"request_id": "r-1", "model_version": 3, "arm": "champion", "arm_propensity": 1.0, "zero": -0.0,
             "text": 'q",x'}
    spelled = encode_columns({**base, **{k: [v] * n for k, v in extra.items()}, "score": [0.25] * n}, n)
    repeated = encode_columns({**base, **{k: Repeated(v) for k, v in extra.items()}, "score": [0.25] * n}, n)
    assert lines_of(repeated) == lines_of(spelled) and len(lines_of(spelled)) == n
    assert lines_block(repeated) == b"".join(line + b"\n" for line in lines_of(spelled))
    assert encoded_bytes(repeated) < encoded_bytes(spelled)
    one = encode_columns({"a": Repeated("v"), "b": Repeated(2)}, 3)
    assert lines_of(one) == [b'{"a":"v","b":2}'] * 3


def test_the_queue_is_bounded_in_bytes_too(tmp_path):
    """A backlog of large requests is bounded by their encoded bytes, not only by their count: the writer
    stuck behind another writer's lock, requests of ~150 KB each fill a 1 MiB bound after a few, the rest
    are dropped and counted (queue_full) while the count bound (4096) is far away, and submit never waits."""
    folder = tmp_path / "imp"
    counts = Counts()
    big = [dict(_entry(i), ad_id="a" * 120 + str(i)) for i in range(1000)]  # ~160 KB encoded
    with _another_writer_holding(folder):
        log = ImpressionLog(str(folder), max_pending_bytes=1 << 20, on_logged=counts.on_logged,
                            on_dropped=counts.on_dropped)
        started = time.monotonic()
        for _ in range(40):
            log.submit(*_columns(big))
        assert time.monotonic() - started < 2.0
        # At most 1 MiB waits (6 requests) and one batch is in the writer's hands (it took what was queued).
        dropped = counts.dropped.get("queue_full", 0)
        assert 40_000 - 2 * 7 * 1000 <= dropped < 40_000, counts.dropped
    log.close()
    assert counts.logged + counts.dropped["queue_full"] == 40_000
    assert len(_lines(str(folder))) == counts.logged


def test_a_byte_bound_that_cannot_hold_a_request_is_refused_naming_the_fix(tmp_path):
    from pipelines.serve.impressions import check_max_pending_bytes

    with pytest.raises(ValueError, match=r"max_pending_bytes must be a whole number of bytes >= 1048576.*64 MiB"):
        ImpressionLog(str(tmp_path / "imp"), max_pending_bytes=1000)
    for bad in ("lots", 0, 2.5e9, True):
        with pytest.raises(ValueError, match="--impressions-max-pending-bytes must be a whole number"):
            check_max_pending_bytes(bad, "--impressions-max-pending-bytes")
    assert check_max_pending_bytes(1 << 26, "x") == 1 << 26


def test_the_writer_process_runs_at_the_niceness_asked_for(tmp_path):
    """The writer's niceness is the server's plus `writer_nice` (driftline serve --impressions-writer-nice):
    niced, it takes only the CPU that serving leaves idle; by default it has the server's priority."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    for nice, want in ((None, own), (3, min(19, own + 3)), (10, min(19, own + 10))):
        counts = Counts()
        kwargs = {} if nice is None else {"writer_nice": nice}
        log = ImpressionLog(str(tmp_path / f"imp{nice}"), on_logged=counts.on_logged, **kwargs)
        try:
            log.submit(*_columns([_entry(i) for i in range(3)]))
            _until(lambda: counts.logged == 3)
            assert os.getpriority(os.PRIO_PROCESS, log.writer_pid) == want
        finally:
            log.close()


def test_a_batch_past_the_segment_size_rotates_between_whole_lines(tmp_path):
    """The writer appends a batch as one block (EventLogWriter.write_block); past the segment's size it
    rotates between lines, as write_lines does: no line split across segments, none lost."""
    folder = tmp_path / "imp"
    counts = Counts()
    log = ImpressionLog(str(folder), max_segment_bytes=4000, on_logged=counts.on_logged)
    for r in range(4):
        log.submit(*_columns([_entry(r * 20 + i) for i in range(20)]))
    log.close()
    segments = sorted(name for name in os.listdir(folder) if name.endswith(".jsonl"))
    assert counts.logged == 80 and len(segments) >= 4
    for name in segments:
        data = open(folder / name, "rb").read()
        assert data.endswith(b"\n") and len(data) <= 4000
    schema = impressions_schema(SCHEMA)
    assert [schema.parse(line)["event_id"] for line in _lines(str(folder))] == [f"r-{i}" for i in range(80)]


def test_driftline_serve_refuses_a_bad_byte_bound_or_niceness_naming_the_fix(tmp_path, capsys):
    from pipelines import cli

    assert cli.main(["serve", "--home", str(tmp_path), "--impressions-max-pending-bytes", "4096"]) == 2
    assert "--impressions-max-pending-bytes must be a whole number of bytes >= 1048576" in capsys.readouterr().err
    assert cli.main(["serve", "--home", str(tmp_path), "--impressions-max-pending-bytes", "64MB"]) == 2
    assert "e.g. 67108864 (64 MiB, the default)" in capsys.readouterr().err
    assert cli.main(["serve", "--home", str(tmp_path), "--impressions-writer-nice", "20"]) == 2
    assert "--impressions-writer-nice must be a whole number from 0" in capsys.readouterr().err

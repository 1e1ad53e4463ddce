"""The exactly-once rules of ingestion, replayed as a pure state machine.

`simulate_runs` plays the role of the Beam graph with the same functions the
graph uses (classify, decide, next_state), so these tests pin down the rules
themselves on adversarial streams, with crashes modelled as runs that never
publish.
"""
import dataclasses
import random

import pytest

from components.event_log import Position
from components.streaming_example_gen import windowing
from components.streaming_example_gen.windowing import (
    EVAL, LATE, ON_TIME, PENDING, SKIP, TRAIN, CommittedState, Window, classify, decide, next_state)

W = Window(span_ms=1000, allowed_lateness_ms=200, eval_fraction=0.2)


def test_span_bounds_and_split():
    assert W.span_of(0) == 0 and W.span_of(999) == 0 and W.span_of(1000) == 1
    assert W.span_bounds(3) == (3000, 4000)
    assert W.split_of(3, 3799) == TRAIN and W.split_of(3, 3800) == EVAL and W.split_of(3, 3999) == EVAL
    # A late event carries an older time than the span it lands in: it trains.
    assert W.split_of(5, 3900) == TRAIN


def test_closed_through_follows_the_watermark():
    assert W.closed_through(None) is None
    assert W.closed_through(1199) == -1   # watermark 999: span 0 still open
    assert W.closed_through(1200) == 0    # watermark 1000: span 0 closed
    assert W.closed_through(5199) == 3


def test_classify():
    state = CommittedState(end=Position("s", 100), resume=Position("s", 50), last_span=4, max_event_time_ms=5300)
    assert classify(state, Position("s", 60), 4, 5) == SKIP       # emitted by an earlier run
    assert classify(state, Position("s", 100), 4, 5) == LATE      # new line, span already out
    assert classify(state, Position("s", 60), 5, 5) == ON_TIME    # was pending, now closed
    assert classify(state, Position("s", 60), 6, 5) == PENDING
    assert classify(CommittedState(), Position("s", 0), 0, None) == PENDING


def test_only_an_emitted_span_needs_the_events_position():
    state = CommittedState(end=Position("s", 100), resume=Position("s", 50), last_span=4, max_event_time_ms=5300)
    assert windowing.fate_depends_on_position(state, 4) and windowing.fate_depends_on_position(state, 3)
    assert not windowing.fate_depends_on_position(state, 5)
    assert not windowing.fate_depends_on_position(CommittedState(), 0)
    # Without a position, a span not yet emitted gets the fate any of its events would get.
    for span in (5, 6):
        assert classify(state, None, span, 5) == classify(state, Position("s", 60), span, 5)
    assert classify(CommittedState(), None, 0, 0) == ON_TIME
    with pytest.raises(ValueError, match="position decides skip or late"):
        classify(state, None, 4, 5)


def test_decide_emits_closed_candidate_spans_only():
    d = decide(W, CommittedState(), 5300, {0, 2, 3, 5})
    assert d.closed_through == 4 and d.emitted_spans == {0, 2, 3} and d.first_span == 0
    later = decide(W, CommittedState(last_span=3, max_event_time_ms=9000), 100, {4})
    assert later.max_event_time_ms == 9000 and later.emitted_spans == {4}  # the watermark never moves back
    assert not decide(W, CommittedState(), 900, {0}).emits


def test_next_state_is_unchanged_when_nothing_is_emitted():
    state = CommittedState(end=Position("s", 10), resume=Position("s", 5), last_span=1, max_event_time_ms=2300)
    assert next_state(state, decide(W, state, 2400, set()), Position("s", 99), None) == state


def test_decide_caps_a_run_at_its_oldest_closed_spans():
    d = decide(W, CommittedState(), 5300, {0, 2, 3, 5}, max_spans=1)
    # Spans 2 and 3 are closed too, but wait: closed_through moves back so their events are pending.
    assert d.emitted_spans == {0} and d.closed_through == 0 and d.max_event_time_ms == 5300
    assert decide(W, CommittedState(), 5300, {0, 2, 3, 5}, max_spans=2).emitted_spans == {0, 2}
    assert decide(W, CommittedState(), 5300, {0, 2, 3, 5}, max_spans=5).closed_through == 4
    assert not decide(W, CommittedState(), 900, {0}, max_spans=1).emits
    with pytest.raises(ValueError, match="max_spans"):
        decide(W, CommittedState(), 5300, {0}, max_spans=0)


def simulate_runs(events, cut_points, crash_runs=(), max_spans=None):
    """Ingests a log in runs that each see the log up to a cut point.

    events: list of (event_id, event_time) in log (arrival) order; the
    position of an event is its index. Returns {event_id: (span, late)}.
    A crashed run does everything but publish. `max_spans` caps each run.
    """
    state = CommittedState()
    emitted = {}
    for run, cut in enumerate(cut_points):
        start = state.resume.offset if state.resume else 0
        read = [(i, events[i]) for i in range(start, cut)]
        times = [t for _, (_, t) in read]
        candidates = {W.span_of(t) for _, (_, t) in read
                      if state.last_span is None or W.span_of(t) > state.last_span}
        decision = decide(W, state, max(times) if times else None, candidates, max_spans)
        if max_spans is not None:
            assert len(decision.emitted_spans) <= max_spans
        out, first_pending = {}, None
        if decision.emits:
            for i, (eid, t) in read:
                fate = classify(state, Position("s", i), W.span_of(t), decision.closed_through)
                if fate == PENDING:
                    first_pending = i if first_pending is None else min(first_pending, i)
                elif fate in (ON_TIME, LATE):
                    span = decision.first_span if fate == LATE else W.span_of(t)
                    assert span in decision.emitted_spans
                    out.setdefault(eid, []).append((span, fate == LATE))
        if run in crash_runs:
            continue  # never published: no trace
        for eid, places in out.items():
            assert len(places) == 1
            assert eid not in emitted, f"{eid} emitted twice"
            emitted[eid] = places[0]
        state = next_state(state, decision, Position("s", cut),
                           None if first_pending is None else Position("s", first_pending))
    return emitted, state


@pytest.mark.parametrize("seed", range(30))
def test_random_streams_with_crashes_emit_every_event_exactly_once(seed):
    rng = random.Random(seed)
    n = 400
    events, now = [], 0
    for i in range(n):
        now += rng.randint(0, 40)
        delay = rng.choice([0] * 8 + [rng.randint(1, 3000)])  # some arrive very late
        events.append((f"e{i}", max(0, now - delay)))
    cuts = sorted(rng.sample(range(1, n), 25)) + [n]
    crashes = set(rng.sample(range(len(cuts) - 1), 8))
    # Flush: an event far ahead closes every span, so only it stays pending.
    events.append(("flush", now + 10_000))
    cuts.append(n + 1)
    emitted, state = simulate_runs(events, cuts, crashes)
    assert set(emitted) == {eid for eid, _ in events} - {"flush"}
    for eid, t in events[:-1]:
        span, late = emitted[eid]
        if not late:
            assert span == W.span_of(t)
        else:
            assert span > W.span_of(t)
    assert state.resume == Position("s", n)  # the flush event is what stays pending


@pytest.mark.parametrize("seed", range(15))
def test_one_span_per_run_still_emits_every_event_exactly_once(seed):
    """The cap of a driverless run (Vertex AI Pipelines): one span per run, later closed spans wait."""
    rng = random.Random(1000 + seed)
    n = 300
    events, now = [], 0
    for i in range(n):
        now += rng.randint(0, 60)
        delay = rng.choice([0] * 8 + [rng.randint(1, 3000)])
        events.append((f"e{i}", max(0, now - delay)))
    events.append(("flush", now + 10_000))
    cuts = sorted(rng.sample(range(1, n), 15)) + [n + 1]
    # A backlog drains one span per run: repeat the last cut until every span is out.
    cuts += [n + 1] * (now // W.span_ms + 2)
    crashes = set(rng.sample(range(len(cuts) - 1), 5))
    emitted, state = simulate_runs(events, cuts, crashes, max_spans=1)
    uncapped, _ = simulate_runs(events, [n + 1])
    assert set(emitted) == {eid for eid, _ in events} - {"flush"}
    for eid, t in events[:-1]:
        span, late = emitted[eid]
        assert span == W.span_of(t) if not late else span > W.span_of(t)
    # With every event in the log before the first run, capping changes only when spans come out, not where events go.
    assert uncapped == simulate_runs(events, [n + 1] * (now // W.span_ms + 2), max_spans=1)[0]
    assert state.resume == Position("s", n)


def test_crashed_run_changes_nothing():
    events = [(f"e{i}", i * 100) for i in range(50)]
    a, sa = simulate_runs(events, [20, 35, 50])
    b, sb = simulate_runs(events, [20, 30, 35, 50], crash_runs={1})
    assert a == b and sa == sb


def test_late_events_wait_for_the_next_emitted_span():
    # Run 1 emits spans 0..2 (watermark 3200); then only late events for span 1 arrive.
    events = [(f"e{i}", i * 100) for i in range(35)] + [("late1", 1500), ("late2", 1600)]
    emitted, state = simulate_runs(events, [35, 37])
    assert "late1" not in emitted and state.last_span == 2  # nothing newer closed: they wait
    events += [(f"f{i}", 3500 + i * 100) for i in range(20)]
    emitted, state = simulate_runs(events, [35, 37, len(events)])
    assert emitted["late1"] == (3, True) and emitted["late2"] == (3, True)


def test_state_json_round_trip():
    s = CommittedState(end=Position("a", 1), resume=Position("a", 0), last_span=7, max_event_time_ms=99)
    assert CommittedState.from_json(s.to_json()) == s
    assert CommittedState.from_json(None) == CommittedState() and CommittedState().is_initial


def test_state_carries_passed_segment_sizes_and_reads_states_written_without_them():
    sizes = (("segment-000000000003.jsonl", 700), ("segment-000000000004.jsonl", 812))
    s = CommittedState(end=Position("segment-000000000005.jsonl", 9), resume=Position("segment-000000000004.jsonl", 0),
                       last_span=2, max_event_time_ms=99, segment_sizes=sizes)
    assert CommittedState.from_json(s.to_json()) == s
    # A state committed before sizes were recorded (as stored in ML Metadata then) loads with none.
    old = '{"end": ["segment-000000000005.jsonl", 9], "last_span": 2, "max_event_time_ms": 99, ' \
          '"resume": ["segment-000000000004.jsonl", 0]}'
    assert CommittedState.from_json(old) == dataclasses.replace(s, segment_sizes=())
    # A state without sizes writes the same JSON as before (Kafka states have none).
    assert CommittedState.from_json(old).to_json() == old
    d = decide(W, s, 9000, {5})
    assert next_state(s, d, Position("segment-000000000006.jsonl", 1), None, segment_sizes=sizes[1:]).segment_sizes \
        == sizes[1:]
    assert next_state(s, d, Position("segment-000000000006.jsonl", 1), None).segment_sizes == ()


def test_span_stats_merge():
    a, b = windowing.SpanStats(), windowing.SpanStats()
    a.add(10, TRAIN, False)
    b.add(5, EVAL, True)
    m = a.merge(b)
    assert (m.events, m.late, m.train, m.eval, m.min_event_time_ms, m.max_event_time_ms) == (2, 1, 1, 1, 5, 10)


def test_span_stats_add_many_equals_adding_one_at_a_time():
    times = [50, 12, 99, 12, 70]
    one_by_one, at_once = windowing.SpanStats(), windowing.SpanStats()
    for split, late, ts in ((TRAIN, False, times), (EVAL, False, [200, 150]), (TRAIN, True, [3]), (EVAL, True, [])):
        for t in ts:
            one_by_one.add(t, split, late)
        at_once.add_many(ts, split, late)
    assert at_once == one_by_one
    assert (at_once.events, at_once.late, at_once.train, at_once.eval) == (8, 1, 6, 2)
    assert (at_once.min_event_time_ms, at_once.max_event_time_ms) == (3, 200)

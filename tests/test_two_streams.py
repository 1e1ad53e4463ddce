"""The simulator's stream split into impressions and delayed clicks, joined by join_run.run_join."""
from __future__ import annotations

import collections

from components.streaming_example_gen import join, join_run, windowing
from pipelines import simulator, two_streams


def test_simulated_two_streams_join_to_the_labels_the_delays_imply(tmp_path):
    sim = simulator.SimulatorConfig(seed=3, minutes=40, events_per_minute=150, late_fraction=0.0,
                                    hot_ad_minute=None)
    simulator.simulate(str(tmp_path / "events"), sim)
    imp_dir, out_dir = str(tmp_path / "impressions"), str(tmp_path / "outcomes")
    truth = two_streams.split_log(str(tmp_path / "events"), imp_dir, out_dir,
                                  two_streams.TwoStreamConfig(attribution_window_seconds=300,
                                                              after_window_fraction=0.2, seed=1))
    assert truth.impressions == 40 * 150 and truth.clicks > 100 and truth.after_window > 10
    config = two_streams.join_config(imp_dir, out_dir, attribution_window_seconds=300)
    config.validate()
    window = windowing.Window(span_ms=600_000, allowed_lateness_ms=30_000, eval_fraction=0.2)
    run = join_run.run_join(config, window, join.JoinState(), str(tmp_path / "out"))
    result = run.result
    # 40 minutes from a span boundary: spans 0-2 are full; the window of span 2's last impressions closes
    # at 30 min + 5 min, behind the watermark (the newest click, minus 30 s).
    first = sim.start_ms // 600_000
    assert result.emitted_spans[:3] == (first, first + 1, first + 2)
    assert result.examples and all(e.label == truth.labels[e.impression_id] for e in result.examples)
    emitted = {e.impression_id for e in result.examples}
    kinds = collections.Counter(d.kind for d in result.dead_letters)
    # A click after the window is decided as soon as it is read beside its impression, emitted or not.
    outside = sum(1 for d in truth.click_delay_ms.values() if d > 300_000)
    assert kinds == {join.OUTSIDE_WINDOW: outside} and outside >= truth.after_window
    positives = sum(truth.labels[i] for i in emitted)
    assert sum(e.label for e in result.examples) == positives > 0
    # The rest waits: impressions of open windows, and the clicks of theirs that were read.
    assert result.pending_impressions == truth.impressions - len(emitted)

"""Join mode end to end: the controller runs 2 cycles of JoinExampleGen -> Transform -> trainer -> gate -> push.

One module-scoped fixture (two real TFX cycles through the controller, `run_continuous`) is shared by the tests:
the simulator's stream is split into impressions and delayed clicks (pipelines/two_streams.py), and both
logs are fed to the pipeline's logs in two steps of event time, the outcomes stream lagging in the second,
so that it is the stream holding the join back. Expectations come from what the generator wrote.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics

import pytest
from join_helpers import feed, run_two_cycles, staged_two_streams


SPAN_MS = 600_000
WINDOW_S = 120
LATENESS_S = 30
MINUTE = 60_000


@pytest.fixture(scope="module")
def join_run(tmp_path_factory):
    from pipelines import two_streams
    from pipelines.config import ControllerConfig, GateConfig, TrainerConfig, WindowConfig, default_config

    root = tmp_path_factory.mktemp("join_pipeline")
    sim, impressions, outcomes, truth = staged_two_streams(root, 50, 400, WINDOW_S)
    home = str(root / "home")
    imp_dir, out_dir = os.path.join(home, "impressions"), os.path.join(home, "outcomes")
    t0 = sim.start_ms
    # Step 1: both streams to minute 32. Spans 0 and 1 close (their last windows end at minute 22);
    # span 2's would close at minute 32 + the allowed lateness.
    cut1, cut2_imp, cut2_out = t0 + 32 * MINUTE, t0 + 47 * MINUTE, t0 + 44 * MINUTE
    feed(impressions, imp_dir, 0, cut1)
    feed(outcomes, out_dir, 0, cut1)
    join = two_streams.join_config(imp_dir, out_dir, attribution_window_seconds=WINDOW_S)
    config = default_config(home).replace(
        window=WindowConfig(span_seconds=SPAN_MS // 1000, allowed_lateness_seconds=LATENESS_S),
        trainer=TrainerConfig(cold_epochs=2, warm_epochs=1),
        gate=GateConfig(min_auc=0.55, min_calibration=0.5, max_calibration=1.6, max_log_loss=0.6,
                        max_auc_drop=0.05, min_slice_auc=0.5, min_eval_positives=30,
                        # Mechanics are under test: 800 eval examples a span give an AUC interval ~0.12 wide.
                        max_auc_interval_width=0.2),
        controller=ControllerConfig(retry_initial_seconds=1.0, retry_max_seconds=2.0)).with_join(join).validate()
    def step_2() -> None:
        # Once cycle 1 is done: impressions to minute 47, the clicks lagging to minute 44, so the outcomes'
        # watermark holds the join back; spans 2 and 3 close (minute 42 + the lateness < 44).
        feed(impressions, imp_dir, cut1, cut2_imp)
        feed(outcomes, out_dir, cut1, cut2_out)

    lines, said = run_two_cycles(config, step_2)
    return {"config": config, "lines": lines, "said": said, "truth": truth,
            "impressions": impressions, "outcomes": outcomes, "t0": t0,
            "cuts": (cut1, cut2_imp, cut2_out)}


def _attributed_times(run, spans) -> list:
    """Event times of the clicks the generator attributed (within the window) to impressions of `spans`."""
    span_of = {e["event_id"]: e["event_time"] // SPAN_MS for e in run["impressions"]}
    fed_until = run["cuts"][2]
    return [o["event_time"] for o in run["outcomes"]
            if span_of.get(o["impression_id"]) in spans and run["truth"].labels[o["impression_id"]] == 1
            and o["event_time"] < fed_until]


def test_the_controller_runs_join_cycles_that_train_and_push(join_run):
    from pipelines import lineage
    from pipelines.metadata import ingested_spans, open_store

    lines = join_run["lines"]
    first = join_run["t0"] // SPAN_MS
    assert [line["spans"] for line in lines] == [[first, first + 1], [first + 2, first + 3]]
    assert [line["start"] for line in lines] == ["cold", "warm"], [(line["blessed"], line["reason"], line["pushed_version"]) for line in lines]
    assert all(line["pushed_version"] for line in lines), lines
    config = join_run["config"]
    spans = ingested_spans(open_store(config.metadata_connection), config.pipeline_name)
    assert [s.span for s in spans] == [first + i for i in range(4)]
    # Every impression of the emitted spans is an example with the label the generator's delays imply.
    truth = join_run["truth"]
    for record in spans:
        ids = [e["event_id"] for e in join_run["impressions"] if e["event_time"] // SPAN_MS == record.span]
        assert record.event_count == len(ids)
        assert record.attributed_count == sum(truth.labels[i] for i in ids)
    # The controller said why each cycle ran: the join's own rule.
    assert any("joined (attribution windows closed under both watermarks)" in s for s in join_run["said"])


def test_status_names_each_watermark_and_the_stream_holding_the_join_back(join_run, capsys):
    from pipelines import cli, lineage

    config = join_run["config"]
    _, cut_imp, cut_out = join_run["cuts"]
    newest_imp = max(e["event_time"] for e in join_run["impressions"] if e["event_time"] < cut_imp)
    newest_out = max(o["event_time"] for o in join_run["outcomes"] if o["event_time"] < cut_out)
    st = lineage.status(config)
    assert st.join.impressions_watermark_ms == newest_imp - LATENESS_S * 1000
    assert st.join.outcomes_watermark_ms == newest_out - LATENESS_S * 1000
    assert st.join.held_back_by == "outcomes"
    # The CLI, given only --home, reads the home's driftline.yaml (join section included).
    assert cli.main(["status", "--home", config.home]) == 0
    out = capsys.readouterr().out
    assert "the outcomes stream holds the join back" in out
    assert lineage.format_ms(newest_out - LATENESS_S * 1000) in out


def test_freshness_is_measured_from_the_click_per_cycle_in_status_and_lineage(join_run, capsys):
    from pipelines import cli, lineage

    config = join_run["config"]
    first = join_run["t0"] // SPAN_MS
    for line, spans in zip(join_run["lines"], ([first, first + 1], [first + 2, first + 3])):
        times = _attributed_times(join_run, set(spans))
        pushed = line["pushed_at_ms"]
        assert line["clicks_served"] == len(times) > 100
        assert line["click_freshness_newest_seconds"] == (pushed - max(times)) / 1000.0
        assert line["click_freshness_oldest_seconds"] == (pushed - min(times)) / 1000.0
        exact = statistics.median((pushed - t) / 1000.0 for t in times)
        # From 21 stored quantiles per span: within one 5 % step of the true median.
        lo, hi = (statistics.quantiles([(pushed - t) / 1000.0 for t in times], n=20)[i] for i in (8, 10))
        assert lo - 1 <= line["click_freshness_median_seconds"] <= hi + 1, (exact, lo, hi)
    st = lineage.status(config)
    assert st.click_freshness.spans == [first + 2, first + 3]
    assert st.click_freshness.newest_seconds == join_run["lines"][1]["click_freshness_newest_seconds"]
    assert cli.main(["status", "--home", config.home]) == 0
    assert "from click:  median" in capsys.readouterr().out
    assert cli.main(["lineage", "--home", config.home, "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)["chain"]
    assert [m["click_freshness"]["spans"] for m in chain] == [[first + 2, first + 3], [first, first + 1]]
    assert cli.main(["lineage", "--home", config.home]) == 0
    assert capsys.readouterr().out.count("from click: median") == 2

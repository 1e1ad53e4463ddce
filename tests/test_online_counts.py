"""Each arm's counts per span and per challenger, as JoinExampleGen records them (the controller's evidence).

The impressions are written here in the serving contract's format (`arm`, `challenger_model_id`,
`position`, ...), the clicks inside and outside the attribution window, and every expectation is counted
by hand from what was written.
"""
from __future__ import annotations

import dataclasses

import pytest

from components.config_base import ConfigError
from components.event_log import EventLogWriter
from components.event_schema import FieldSpec
from components.online_evaluator import arm_counts
from components.online_evaluator.decision import Counts
from components.streaming_example_gen import join, join_run, windowing
from components.streaming_example_gen.join_config import JoinStreamConfig
from join_helpers import join_config

SPAN_MS = 60_000
WINDOW = windowing.Window(span_ms=SPAN_MS, allowed_lateness_ms=0, eval_fraction=0.2)


def _served_config(tmp_path):
    """The helper's join, with the fields a routing server logs; k = 2 shown per request."""
    cfg = join_config(str(tmp_path / "imp"), str(tmp_path / "out"))
    schema = cfg.impressions.schema
    schema = dataclasses.replace(schema, fields=schema.fields + (
        FieldSpec("position", "int"), FieldSpec("arm", "string", required=False),
        FieldSpec("arm_propensity", "float", required=False),
        FieldSpec("challenger_model_id", "int", required=False)))
    return dataclasses.replace(cfg, impressions=JoinStreamConfig(cfg.impressions.log_dir, schema), max_position=2,
                               drop_fields=("position", "arm", "arm_propensity", "challenger_model_id"))


def _imp(iid, ts, position, arm=None, challenger=None):
    e = {"impression_id": iid, "ts": ts, "ad_id": "a", "position": position}
    if arm is not None:
        e.update(arm=arm, arm_propensity=0.5, challenger_model_id=challenger)
    return e


def _click(iid, ts):
    return {"outcome_id": f"c-{iid}-{ts}", "impression_id": iid, "ts": ts, "outcome_type": "click"}


def test_each_span_counts_each_arms_shown_impressions_and_clicks_per_challenger(tmp_path):
    cfg = _served_config(tmp_path)
    cfg.validate()
    impressions = [
        # Span 0, challenger 7. Champion: 3 shown (positions 0, 1), 1 scored but not shown (position 2).
        _imp("a0", 1_000, 0, "champion", 7), _imp("a1", 1_000, 1, "champion", 7), _imp("a2", 1_000, 2, "champion", 7),
        _imp("b0", 2_000, 0, "champion", 7),
        # Challenger 7: 4 shown; "d1" clicked twice (one success), "d0" clicked after the 10 s window (none).
        _imp("c0", 3_000, 0, "challenger", 7), _imp("c1", 3_000, 1, "challenger", 7),
        _imp("d0", 4_000, 0, "challenger", 7), _imp("d1", 4_000, 1, "challenger", 7),
        # No comparison open when these were served: counted nowhere.
        _imp("e0", 5_000, 0), _imp("e1", 5_000, 1),
        # Another challenger (a replaced comparison's): counted under its own id.
        _imp("f0", 6_000, 0, "challenger", 9), _imp("f1", 6_000, 1, "champion", 9),
        # Span 1, challenger 7 again.
        _imp("g0", SPAN_MS + 1_000, 0, "challenger", 7), _imp("g1", SPAN_MS + 1_000, 1, "challenger", 7),
        # Closes both spans' windows.
        _imp("tick", 3 * SPAN_MS, 0),
    ]
    outcomes = [
        _click("a0", 1_500), _click("a2", 1_600),  # a2 was not shown: no example, no count
        _click("c1", 3_500), _click("d1", 4_100), _click("d1", 4_200),
        _click("d0", 4_000 + 10_001),  # outside the 10 s attribution window
        _click("e0", 5_100), _click("f0", 6_100),
        _click("g0", SPAN_MS + 2_000),
        _click("tick", 3 * SPAN_MS),
    ]
    with EventLogWriter(cfg.impressions.log_dir) as w:
        w.write_events(impressions)
    with EventLogWriter(cfg.outcomes.log_dir) as w:
        w.write_events(outcomes)
    run = join_run.run_join(cfg, WINDOW, join.JoinState(), str(tmp_path / "spans"))
    assert run.result.emitted_spans == (0, 1)
    by_span = {span: arm_counts.from_json(join_run.span_properties(run, WINDOW, span, cfg, reward_field="label")
                                          ["arm_counts"]) for span in (0, 1)}
    assert by_span[0] == {
        7: {"champion": Counts(successes=1, trials=3), "challenger": Counts(successes=2, trials=4)},
        9: {"champion": Counts(successes=0, trials=1), "challenger": Counts(successes=1, trials=1)}}
    assert by_span[1] == {7: {"champion": Counts(0, 0), "challenger": Counts(successes=1, trials=2)}}
    # Without a reward field (online evaluation off) nothing is counted.
    assert "arm_counts" not in join_run.span_properties(run, WINDOW, 0, cfg)
    # The server's fields are no model input: the examples' schema leaves them out.
    assert not {"arm", "challenger_model_id", "arm_propensity"} & set(cfg.examples_schema.field_map)


def test_for_challenger_reads_one_comparisons_arms_and_ignores_the_rest():
    counts = {7: {"challenger": Counts(1, 2)}}
    assert arm_counts.for_challenger(counts, 7) == {"champion": Counts(0, 0), "challenger": Counts(1, 2)}
    assert arm_counts.for_challenger(counts, 8) is None
    assert arm_counts.from_json(arm_counts.to_json(counts)) == counts
    assert arm_counts.from_json("") == {}


def _ads_join(tmp_path, served: bool = True):
    """The simulator's two streams (pipelines/two_streams.py), with the routing server's fields when `served`."""
    from pipelines import two_streams

    cfg = two_streams.join_config(str(tmp_path / "imp"), str(tmp_path / "out"))
    if not served:
        return cfg
    schema = cfg.impressions.schema
    schema = dataclasses.replace(schema, fields=schema.fields + (
        FieldSpec("arm", "string", required=False), FieldSpec("challenger_model_id", "int", required=False)))
    return dataclasses.replace(cfg, impressions=JoinStreamConfig(cfg.impressions.log_dir, schema),
                               drop_fields=("arm", "challenger_model_id"))


def test_online_mode_needs_the_join_and_the_servers_arm_fields(tmp_path):
    from pipelines.config import OnlineEvalConfig, default_config

    on = OnlineEvalConfig(enabled=True)
    home = default_config(str(tmp_path / "home"))
    with pytest.raises(ConfigError, match="online.enabled needs the join section"):
        home.replace(online=on).validate()
    with pytest.raises(ConfigError, match="needs the server's field 'arm'"):
        home.with_join(_ads_join(tmp_path, served=False)).replace(online=on).validate()
    served = home.with_join(_ads_join(tmp_path)).replace(online=on)
    served.validate()
    with pytest.raises(ConfigError, match="online.reward_field 'nope' is not a field"):
        served.replace(online=OnlineEvalConfig(enabled=True, reward_field="nope")).validate()
    with pytest.raises(ConfigError, match="online.enabled must be true or false"):
        served.replace(online=OnlineEvalConfig(enabled="yes")).validate()
    # Off, the join alone is fine, as before.
    home.with_join(_ads_join(tmp_path, served=False)).validate()


def test_each_span_measures_the_guardrails_of_each_arm_from_the_shown_lines(tmp_path):
    """The same join with the guardrail fields a routing server logs (`request_id`, `score`, `arm_latency_ms`,
    `challenger_fallback`): a request counts once whatever number of its lines were shown, and not at all
    when none was; a fallback (the champion answered a request drawn for the challenger) counts on the
    challenger; every expectation by hand."""
    from components.online_evaluator.guardrails import ArmStats, latency_bucket

    cfg = _served_config(tmp_path)
    schema = cfg.impressions.schema
    guard = (FieldSpec("request_id", "string", required=False), FieldSpec("score", "float", required=False),
             FieldSpec("arm_latency_ms", "float", required=False),
             FieldSpec("challenger_fallback", "int", required=False))
    cfg = dataclasses.replace(cfg, impressions=JoinStreamConfig(cfg.impressions.log_dir, dataclasses.replace(
        schema, fields=schema.fields + guard)), drop_fields=cfg.drop_fields + tuple(f.name for f in guard))
    cfg.validate()

    def imp(iid, ts, position, arm, request, latency, score, fallback=0):
        return {**_imp(iid, ts, position, arm, 7), "request_id": request, "arm_latency_ms": latency, "score": score,
                "challenger_fallback": fallback}

    impressions = [
        imp("a0", 1_000, 0, "champion", "ra", 3.0, 0.2), imp("a1", 1_000, 1, "champion", "ra", 3.0, 0.1),
        imp("a2", 1_000, 2, "champion", "ra", 3.0, 0.9),  # not shown: no example, no score
        imp("b0", 2_000, 0, "challenger", "rb", 40.0, 0.5), imp("b1", 2_000, 1, "challenger", "rb", 40.0, 0.3),
        imp("c0", 3_000, 0, "champion", "rc", 5.0, 0.4, fallback=1),
        imp("d2", 4_000, 2, "challenger", "rd", 900.0, 0.7),  # a request with nothing shown: not counted
        _imp("tick", 3 * SPAN_MS, 0),
    ]
    with EventLogWriter(cfg.impressions.log_dir) as w:
        w.write_events(impressions)
    with EventLogWriter(cfg.outcomes.log_dir) as w:
        w.write_events([_click("a0", 1_500), _click("b1", 2_500), _click("tick", 3 * SPAN_MS)])
    run = join_run.run_join(cfg, WINDOW, join.JoinState(), str(tmp_path / "spans"))
    text = join_run.span_properties(run, WINDOW, 0, cfg, reward_field="label")["arm_counts"]
    assert arm_counts.from_json(text) == {7: {"champion": Counts(1, 3), "challenger": Counts(1, 2)}}
    stats = arm_counts.stats_from_json(text)[7]
    assert stats["champion"] == ArmStats(requests=2, fallbacks=0,
                                         latency_ms={latency_bucket(3.0): 1, latency_bucket(5.0): 1},
                                         scored=3, score_sum=stats["champion"].score_sum, scored_successes=1)
    assert abs(stats["champion"].score_sum - 0.7) < 1e-6  # 0.2 + 0.1 + 0.4, float32 in the log
    assert stats["challenger"] == ArmStats(requests=1, fallbacks=1, latency_ms={latency_bucket(40.0): 1},
                                           scored=2, score_sum=stats["challenger"].score_sum, scored_successes=1)
    assert abs(stats["challenger"].score_sum - 0.8) < 1e-6

"""Shared test setup: the repository root is importable even without an editable install."""
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


@pytest.fixture(scope="session")
def continuous_run(tmp_path_factory):
    """Five continuous-training cycles through TFX LocalDagRunner, shared by the e2e tests.

    The built-in drifting stream grows one span per cycle, with a poisoned
    span (labels flipped) in the middle and a change of feature set at the end:

    1. three spans, no base model: cold, blessed on absolute bounds, pushed as version 1;
    2. one span: warm from model 1, blessed against it, version 2;
    3. poisoned span: warm candidate refused by the gate, not pushed, serving stays on 2;
    4. one span: warm from model 2 (the latest *blessed*, not the rejected one), version 3;
       then `rollback` back to version 2's model, atomically and recorded in MLMD;
    5. the `device` field stops being a feature: cold start, with the reason recorded.

    Returns {"config", "reports" (CycleReport per cycle), "rolled", "before_rollback"}.
    """
    import dataclasses

    from components.event_schema import FieldSpec
    from pipelines.config import GateConfig, TrainerConfig, default_config
    from pipelines.local_runner import run_cycle
    from pipelines.simulator import SimulatorConfig, simulate

    home = str(tmp_path_factory.mktemp("home"))
    config = default_config(home).replace(
        # One warm pass at 0.003: the poisoned candidate then stays below the AUC bound (at the default
        # 0.005 it learns the flipped labels well enough that log loss and the label shift catch it).
        trainer=TrainerConfig(cold_epochs=2, warm_epochs=1, warm_learning_rate=0.003),
        # Mechanics, not model quality, are under test: bounds a sound model on
        # 1000 eval examples clears every time, and a flipped-label one never does.
        gate=GateConfig(min_auc=0.55, min_calibration=0.5, max_calibration=1.6, max_log_loss=0.6,
                        max_auc_drop=0.03, min_slice_auc=0.5, min_eval_examples=400, min_eval_positives=30))
    # Cycle 1 emits spans 0-2, each later cycle the next one: cycle 3 gets span 4, minutes 40-50.
    sim = SimulatorConfig(minutes=32, events_per_minute=500, seed=11, hot_ad_minute=45,
                          flip_labels_minutes=(40.0, 50.0))
    log = config.source.log_dir
    simulate(log, sim)
    reports = [run_cycle(config)]
    for _ in range(3):
        simulate(log, dataclasses.replace(sim, minutes=10), append=True)
        reports.append(run_cycle(config))

    from components.blessing_pusher import rollback, serving
    before_rollback = serving.versions(config.serving_dir)
    rolled = rollback.rollback_and_record(config.metadata_path, config.pipeline_name, config.serving_dir)

    # Cycle 5: a new schema where `device` is carried but no longer a feature.
    fields = tuple(FieldSpec(f.name, f.type) if f.name == "device" else f for f in config.source.schema.fields)
    schema = dataclasses.replace(config.source.schema, fields=fields)
    changed = config.replace(source=dataclasses.replace(config.source, schema=schema))
    simulate(log, dataclasses.replace(sim, minutes=10), append=True)
    reports.append(run_cycle(changed))
    return {"config": config, "reports": reports, "rolled": rolled, "before_rollback": before_rollback}

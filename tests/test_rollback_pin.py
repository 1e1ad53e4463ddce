"""A rollback holds: through TFX LocalDagRunner, a rollback pins its model as base model and baseline.

Cycle 1 pushes model 1 as version 1, cycle 2 model 2 as version 2. Then
`driftline rollback --to 1` (under the controller lock) serves model 1
again as version 3 and pins it in ML Metadata. Cycle 3 must warm-start
from model 1 and be judged against model 1; before the pin existed it
continued model 2, the model rolled back from, was judged against it and
pushed its successor over the rollback. A candidate blessed after the pin
becomes the base from then on (learning goes on from the pin), never a
model blessed before it. After `driftline unpin` the base model resolves
to the latest blessed model again.
"""
import dataclasses
import os

import pytest

pytestmark = pytest.mark.e2e


def resolve_base(config):
    """The base model (and blessing) the next cycle's resolver would pick, through TFX's own input resolution."""
    from tfx.orchestration import metadata
    from tfx.orchestration.portable.input_resolution import channel_resolver
    from tfx.proto.orchestration import pipeline_pb2

    from components.warm_start_trainer.resolvers import PinnedOrLatestBlessedModelStrategy
    from pipelines.metadata import connection_config, open_store

    def channel(type_name):
        spec = pipeline_pb2.InputSpec.Channel()
        query = spec.context_queries.add()
        query.type.name = "pipeline"
        query.name.field_value.string_value = config.pipeline_name
        spec.artifact_query.type.name = type_name
        return spec

    with metadata.Metadata(connection_config(config.metadata_connection)) as m:
        inputs = {key: channel_resolver.resolve_single_channel(m, channel(type_name))
                  for key, type_name in (("model", "Model"), ("model_blessing", "ModelBlessing"))}
    assert all(inputs.values())
    strategy = PinnedOrLatestBlessedModelStrategy(pipeline_name=config.pipeline_name)
    result = strategy.resolve_artifacts(open_store(config.metadata_connection), inputs)
    return [a.id for a in result["model"]], [a.id for a in result["model_blessing"]]


def blessings(store):
    from pipelines.metadata import prop

    return {prop(b, "current_model_id"): b for b in store.get_artifacts_by_type("ModelBlessing")}


@pytest.fixture(scope="module")
def pinned_run(tmp_path_factory):
    from pipelines.config import GateConfig, TrainerConfig, default_config
    from pipelines.local_runner import run_cycle
    from pipelines.simulator import SimulatorConfig, simulate

    home = str(tmp_path_factory.mktemp("pin_home"))
    # The settings of the shared `continuous_run` fixture (conftest.py), without its poisoned span.
    config = default_config(home).replace(
        trainer=TrainerConfig(cold_epochs=2, warm_epochs=1, warm_learning_rate=0.003),
        gate=GateConfig(min_auc=0.55, min_calibration=0.5, max_calibration=1.6, max_log_loss=0.6,
                        max_auc_drop=0.03, min_slice_auc=0.5, min_eval_examples=400, min_eval_positives=30))
    sim = SimulatorConfig(minutes=32, events_per_minute=500, seed=11, hot_ad_minute=45)
    simulate(config.source.log_dir, sim)
    reports = [run_cycle(config)]
    simulate(config.source.log_dir, dataclasses.replace(sim, minutes=10), append=True)
    reports.append(run_cycle(config))
    return {"config": config, "sim": sim, "reports": reports}


def test_rollback_pins_and_the_next_cycle_continues_and_is_judged_against_the_pinned_model(pinned_run, capsys):
    from components.blessing_pusher import serving
    from pipelines import cli, lineage
    from pipelines.controller import single_instance
    from pipelines.local_runner import run_cycle
    from pipelines.metadata import open_store, prop
    from pipelines.simulator import simulate

    config, sim = pinned_run["config"], pinned_run["sim"]
    r1, r2 = pinned_run["reports"]
    assert (r1.pushed_version, r2.pushed_version) == ("1", "2"), "cycles 1 and 2 must both push for this test"
    assert r2.start_reason == f"warm start from model {r1.model_id}"
    m1, m2 = r1.model_id, r2.model_id

    # A running controller holds the home: the rollback is refused and touches nothing.
    with single_instance(config.home):
        assert cli.main(["rollback", "--home", config.home, "--to", "1"]) == 1
        assert "already running" in capsys.readouterr().err
    assert serving.versions(config.serving_dir) == [1, 2]

    assert cli.main(["rollback", "--home", config.home, "--to", "1"]) == 0
    out = capsys.readouterr().out
    assert "version 3 now serves the model of version 1" in out and f"pinned: model {m1}" in out
    assert serving.versions(config.serving_dir) == [1, 2, 3]
    assert resolve_base(config)[0] == [m1]

    st = lineage.status(config)
    assert st.pin is not None and (st.pin.model_id, st.pin.to_version, st.pin.new_version) == (m1, 1, 3)
    assert f"pinned:      model {m1} (rollback to version 1, served as version 3)" in lineage.format_status(st)
    assert cli.main(["lineage", "--home", config.home]) == 0
    assert f"pinned: model {m1}" in capsys.readouterr().out

    # Cycle 3: warm from the pinned model 1 and judged against it, not model 2.
    simulate(config.source.log_dir, dataclasses.replace(sim, minutes=10), append=True)
    r3 = run_cycle(config)
    store = open_store(config.metadata_connection)
    [m3] = store.get_artifacts_by_id([r3.model_id])
    assert r3.start == "warm" and r3.start_reason == f"warm start from model {m1}"
    assert prop(m3, "base_model_id") == m1
    assert prop(blessings(store)[r3.model_id], "baseline_model_id") == m1
    # Serving never goes back to model 2: it is model 1 (version 3) or, if it beat model 1, model 3.
    served = lineage.serving(store, config.serving_dir, config.pipeline_name)
    if r3.pushed_version is None:
        assert (served.version, served.model_id) == (3, m1)
    else:
        assert r3.blessed and (served.version, served.model_id) == (4, r3.model_id)
    assert served.model_id != m2
    # While the pin stands, models blessed before it are passed over: the base is model 3 if it beat
    # the pinned model, else model 1 still; never model 2.
    assert resolve_base(config)[0] == ([r3.model_id] if r3.blessed else [m1])

    # Unpin: a record in ML Metadata, and the base model is the latest blessed one again.
    with single_instance(config.home):
        assert cli.main(["unpin", "--home", config.home]) == 1
        assert "already running" in capsys.readouterr().err
    assert cli.main(["unpin", "--home", config.home]) == 0
    assert f"Unpinned model {m1}" in capsys.readouterr().out
    [unpin] = store.get_executions_by_type("driftline.Unpin")
    assert unpin.properties["pinned_model_id"].int_value == m1
    assert lineage.status(config).pin is None
    blessed = [m for m, b in blessings(store).items() if prop(b, "blessed") == 1]
    latest = max(blessed)
    assert latest == (r3.model_id if r3.blessed else m2)
    assert resolve_base(config) == ([latest], [blessings(store)[latest].id])
    assert cli.main(["unpin", "--home", config.home]) == 1
    assert "no pin stands" in capsys.readouterr().err

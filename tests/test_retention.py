"""Retention on a real ML Metadata store (SQLite, or MariaDB with --metadata mysql) and real folders, written the way TFX writes them.

What is kept and why, what is deleted (payload gone, record kept and marked
DELETED), that a deletion cut short by a kill is finished, that folders of
killed runs go but not those of a running execution, and that TFX's own
input resolution never offers a DELETED artifact. The soak benchmark
(benchmarks/soak.py) and the controller crash test run it on real cycles.
"""
import dataclasses
import os

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from mlmd_history import History
from pipelines import lineage, retention
from pipelines.config import PusherConfig, RetentionConfig, TrainerConfig, default_config
from pipelines.metadata import connection_config


def config_for(h: History, keep_cycles=2, replay_spans=2, **retention_kw):
    return default_config(h.home).replace(
        pipeline_name=h.pipeline, trainer=TrainerConfig(replay_spans=replay_spans),
        pusher=PusherConfig(keep_versions=h.keep_versions),
        retention=RetentionConfig(keep_cycles=keep_cycles, **retention_kw))


def six_cycles(tmp_path) -> History:
    """Cycles 1-6; cycle 3's model is rejected (its span quarantined); 5 pushes, the newest 3 in serving."""
    h = History(str(tmp_path), keep_versions=3)
    for i in range(1, 7):
        h.cycle(blessed=(i != 3))
    return h


def cycle_ids(c) -> set:
    ids = {c[k] for k in ("model", "blessing", "evaluation", "transform_graph", "schema", "model_run")}
    return ids | set(c["examples"]) | ({c["pushed"]} if c["pushed"] else set())


def test_plan_keeps_what_the_next_cycle_and_serving_need(tmp_path):
    h = six_cycles(tmp_path)
    c = h.cycles
    plan = retention.plan(config_for(h, keep_cycles=2, replay_spans=2), h.store)
    kept, deleted = plan.keep, {a.id for a in plan.delete}
    for i in (4, 5):  # cycles 5 and 6: everything they made
        assert cycle_ids(c[i]) <= set(kept)
        assert kept[c[i]["transform_graph"]].startswith("made by one of the newest 2 cycles")
    # Serving holds versions 3-5 (cycles 4-6): cycle 4's model stays for a rollback.
    assert sorted(int(v) for v in os.listdir(h.serving_dir)) == [3, 4, 5]
    assert kept[c[3]["model"]] == "behind serving version 3"
    # The replay window: the newest 3 spans that are not quarantined are cycles 4-6's.
    assert kept[c[3]["examples"][0]] == "in the replay window"
    assert kept[c[3]["pushed"]] == "the record of serving version 3"
    # The rest of cycles 1-4 goes: the rejected model and its quarantined span, and the records
    # of versions 1 and 2, which the pusher has deleted from serving, included.
    expected = set()
    for x in c[:4]:
        expected |= cycle_ids(x)
    expected -= {c[3]["model"], c[3]["examples"][0], c[3]["pushed"]}
    assert deleted == expected
    assert c[2]["model"] in deleted and c[2]["examples"][0] in deleted


def test_base_model_and_its_span_are_kept_however_old(tmp_path):
    h = History(str(tmp_path), keep_versions=1)
    base = h.cycle()
    h.cycle(blessed=False)
    h.cycle(blessed=False)
    plan = retention.plan(config_for(h, keep_cycles=1, replay_spans=0), h.store)
    assert plan.keep[base["model"]].startswith("the latest blessed model")
    assert plan.keep[base["blessing"]].startswith("the latest blessed model")
    assert plan.keep[base["examples"][0]].startswith("the span the base model was judged on")
    assert {a.id for a in plan.delete} >= {h.cycles[1]["model"], base["transform_graph"], base["evaluation"]}


def test_keep_all_pushed_models(tmp_path):
    h = six_cycles(tmp_path)
    plan = retention.plan(config_for(h, keep_all_pushed_models=True), h.store)
    for x in h.cycles:
        if x["pushed"]:
            assert x["model"] in plan.keep


def test_apply_deletes_payloads_keeps_records_and_lineage(tmp_path):
    from components.warm_start_trainer.quarantine import rejected_spans

    h = six_cycles(tmp_path)
    config = config_for(h)
    before = {m.model_id: m for m in lineage.models(h.store, h.pipeline)}
    properties = {a.id: (dict(a.properties), dict(a.custom_properties)) for a in h.store.get_artifacts()}
    report = retention.apply(config, h.store)
    assert report.deleted["Model"] == 3 and report.deleted["Examples"] == 3 and report.deleted["PushedModel"] == 2
    for aid in report.deleted_ids:
        a = h.artifact(aid)
        assert a.state == pb.Artifact.DELETED
        assert not os.path.exists(a.uri)
        assert (dict(a.properties), dict(a.custom_properties)) == properties[aid]  # the record is whole
    for aid in retention.plan(config, h.store).keep:
        a = h.artifact(aid)
        assert a.state == pb.Artifact.LIVE and os.path.exists(a.uri)
    # Emptied execution folders go too (a span's folder sits in one), so nothing is left per cycle.
    for x in h.cycles[:3]:
        assert not os.path.exists(os.path.dirname(h.artifact(x["examples"][0]).uri))
    after = {m.model_id: m for m in lineage.models(h.store, h.pipeline)}
    assert after.keys() == before.keys()
    assert [m.model_id for m in after.values() if m.payload_deleted] == [x["model"] for x in h.cycles[:3]]
    for model_id, m in after.items():
        assert (m.blessed, m.base_model_id, m.pushed_version) == (before[model_id].blessed,
                                                                   before[model_id].base_model_id,
                                                                   before[model_id].pushed_version)
    # The quarantine of the rejected span survives its deletion.
    assert rejected_spans(h.store, h.cycles[2]["examples"]) == set(h.cycles[2]["examples"])
    st = lineage.status(config)
    assert (st.spans_payload_deleted, st.models_payload_deleted) == (3, 3)
    assert "payload deleted by retention for 3 of the spans" in lineage.format_status(st)
    chain = lineage.chain(h.store, h.pipeline, serving_dir=h.serving_dir)
    assert "payload deleted by retention" in lineage.format_lineage(chain)
    # Nothing left to do: a second pass deletes nothing.
    again = retention.apply(config, h.store)
    assert again.deleted == {} and again.unused_folders == []


def test_a_deletion_cut_short_is_finished(tmp_path):
    h = six_cycles(tmp_path)
    victim = h.cycles[0]["transform_graph"]
    # A kill between marking and deleting: MARKED_FOR_DELETION, payload still on disk.
    h.store.put_artifacts([pb.Artifact(id=victim, type_id=h.type_ids["TransformGraph"],
                                       state=pb.Artifact.MARKED_FOR_DELETION)], field_mask_paths=["state"])
    assert os.path.exists(h.artifact(victim).uri)
    report = retention.apply(config_for(h, keep_cycles=10), h.store)  # keeps every cycle
    assert report.deleted_ids == [victim]
    assert h.artifact(victim).state == pb.Artifact.DELETED and not os.path.exists(h.artifact(victim).uri)


def test_dry_run_changes_nothing(tmp_path):
    h = six_cycles(tmp_path)
    config = config_for(h)
    report = retention.apply(config, h.store, dry_run=True)
    assert report.deleted_ids and report.freed_bytes > 0
    assert all(h.artifact(a).state == pb.Artifact.LIVE and os.path.exists(h.artifact(a).uri)
               for a in report.deleted_ids)


def test_unused_folders_of_killed_runs_go_but_not_a_running_executions(tmp_path):
    h = six_cycles(tmp_path)
    run = h.new_run()
    # A killed run: its execution stays RUNNING and its output folder has no artifact.
    running, _ = h.execute(run, "Transform", {}, {"transform_graph": [("TransformGraph", {})]},
                           state=pb.Execution.RUNNING)
    dead, _ = h.execute(run, "WarmStartTrainer", {}, {"model": [("Model", {})]}, state=pb.Execution.CANCELED)
    stray = os.path.join(h.root, "Evaluator", "evaluation", "999")
    os.makedirs(stray)
    config = config_for(h, keep_cycles=10)
    removed, freed = retention.remove_unused_folders(config, h.store)
    assert os.path.join("WarmStartTrainer", "model", str(dead)) in removed
    assert os.path.join("Evaluator", "evaluation", "999") in removed and not os.path.exists(stray)
    assert os.path.isdir(os.path.join(h.root, "Transform", "transform_graph", str(running)))
    assert os.path.isdir(os.path.join(h.root, "Transform", ".system", "executor_execution", str(running)))
    assert not os.listdir(os.path.join(h.root, "Evaluator", ".system", "executor_execution"))
    assert freed > 0
    # Every artifact that keeps its payload still has it.
    assert all(os.path.exists(a.uri) for a in h.store.get_artifacts() if a.state == pb.Artifact.LIVE)


def test_retention_config_is_validated():
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="keep_cycles must be >= 1"):
        default_config("h", "l").replace(retention=RetentionConfig(keep_cycles=0)).validate()


def test_tfx_input_resolution_never_offers_a_deleted_artifact(tmp_path):
    """Resolvers (latest blessed model, replay window, resumed spans) only see what TFX resolves: LIVE ones."""
    from tfx.orchestration import metadata
    from tfx.orchestration.portable.input_resolution import channel_resolver
    from tfx.proto.orchestration import pipeline_pb2

    h = six_cycles(tmp_path)
    retention.apply(config_for(h), h.store)
    channel = pipeline_pb2.InputSpec.Channel()
    query = channel.context_queries.add()
    query.type.name = "pipeline"
    query.name.field_value.string_value = h.pipeline
    channel.artifact_query.type.name = "Examples"
    connection = connection_config(config_for(h).metadata_connection)  # as LocalDagRunner is given it
    with metadata.Metadata(connection) as m:
        resolved = {a.id for a in channel_resolver.resolve_single_channel(m, channel)}
    live = {a.id for a in h.store.get_artifacts_by_type("Examples") if a.state == pb.Artifact.LIVE}
    deleted = {a.id for a in h.store.get_artifacts_by_type("Examples") if a.state == pb.Artifact.DELETED}
    assert deleted and resolved == live and not resolved & deleted


def test_gc_command(tmp_path, capsys):
    import json

    from pipelines import cli
    from pipelines.controller import single_instance

    assert cli.main(["gc", "--home", str(tmp_path / "empty")]) == 1
    assert "nothing has run in this home yet" in capsys.readouterr().err
    h = six_cycles(tmp_path)
    assert cli.main(["gc", "--home", h.home, "--keep-cycles", "2", "--dry-run"]) == 0
    assert "would delete the payload of" in capsys.readouterr().out
    assert all(a.state == pb.Artifact.LIVE for a in h.store.get_artifacts())
    with single_instance(h.home):  # a controller holds the home: gc must not touch it
        assert cli.main(["gc", "--home", h.home]) == 1
        assert "already running" in capsys.readouterr().err
    assert cli.main(["gc", "--home", h.home, "--keep-cycles", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deleted"]["Model"] == 3 and report["recovery"] == "nothing was interrupted"
    assert sorted(report["deleted_ids"]) == sorted(a.id for a in h.store.get_artifacts()
                                                   if a.state == pb.Artifact.DELETED)


def test_retention_flags_belong_to_the_controller(tmp_path, capsys):
    from pipelines import cli

    assert cli.main(["run", "--home", str(tmp_path), "--keep-cycles", "2"]) == 2
    assert "--keep-cycles is for --continuous" in capsys.readouterr().err


def test_an_artifact_outside_the_pipeline_root_is_never_deleted(tmp_path):
    """An artifact may name a folder the pipeline does not own (an imported model, a user's data): left alone."""
    h = six_cycles(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "my_model"
    h.put_model_files(str(elsewhere))
    victim = h.cycles[0]["model"]  # an old model nothing needs: its payload would go
    h.store.put_artifacts([pb.Artifact(id=victim, type_id=h.type_ids["Model"], uri=str(elsewhere))],
                          field_mask_paths=["uri"])
    # Also through a symbolic link under the root that leads outside it.
    linked = tmp_path / "elsewhere" / "linked"
    h.put_model_files(str(linked))
    link = os.path.join(h.root, "Transform", "transform_graph", "link")
    os.symlink(str(linked), link)
    via_link = h.cycles[0]["transform_graph"]
    h.store.put_artifacts([pb.Artifact(id=via_link, type_id=h.type_ids["TransformGraph"], uri=link)],
                          field_mask_paths=["uri"])
    report = retention.apply(config_for(h), h.store)
    assert os.path.isfile(elsewhere / "saved_model.pb") and os.path.isfile(linked / "saved_model.pb")
    assert victim not in report.deleted_ids and via_link not in report.deleted_ids
    assert h.artifact(victim).state == pb.Artifact.LIVE
    assert f"artifact {victim} (Model) at {elsewhere}" in report.outside_root
    assert f"artifact {via_link} (TransformGraph) at {link}" in report.outside_root
    assert "outside the pipeline root alone (never deleted)" in report.describe()
    # What lies under the root still goes.
    assert h.cycles[1]["model"] in report.deleted_ids and not os.path.exists(h.artifact(h.cycles[1]["model"]).uri)


def add_dead_letters(h: History, cycle: int) -> str:
    """The first span of a run carries `dead_letter_uri` = <span uri>/dead_letter, as StreamingExampleGen sets it."""
    [span] = h.cycles[cycle]["examples"]
    a = h.artifact(span)
    folder = os.path.join(a.uri, "dead_letter")
    os.makedirs(folder)
    with open(os.path.join(folder, "dead_letter-p00000-00000000000000000000.jsonl"), "w") as f:
        f.write('{"line": "garbage", "reason": "not JSON"}\n')
    a.custom_properties["dead_letter_uri"].string_value = folder
    h.store.put_artifacts([a])
    return folder


def test_a_retained_away_span_keeps_its_dead_letters(tmp_path):
    h = six_cycles(tmp_path)
    folder = add_dead_letters(h, 0)
    [span] = h.cycles[0]["examples"]
    # A run's first span names its dead-letter folder even when nothing was dead-lettered: nothing to keep.
    [clean] = h.store.get_artifacts_by_id(h.cycles[1]["examples"])
    clean.custom_properties["dead_letter_uri"].string_value = os.path.join(clean.uri, "dead_letter")
    h.store.put_artifacts([clean])
    report = retention.apply(config_for(h), h.store)
    assert not os.path.exists(os.path.dirname(clean.uri))  # its execution folder went whole
    assert span in report.deleted_ids and h.artifact(span).state == pb.Artifact.DELETED
    assert not os.path.exists(os.path.join(h.artifact(span).uri, "payload.bin"))  # the examples went
    assert os.listdir(folder) == ["dead_letter-p00000-00000000000000000000.jsonl"]  # the dead letters stayed
    assert report.dead_letters_kept == 1 and "kept the dead letters of 1 of those spans" in report.describe()
    # Its execution folder holds them, so it is not an unused folder, now or later.
    again = retention.apply(config_for(h), h.store)
    assert os.path.isdir(folder) and again.unused_folders == [] and again.dead_letters_deleted == 0


def test_dead_letters_go_after_dead_letter_keep_cycles(tmp_path):
    h = six_cycles(tmp_path)
    folder = add_dead_letters(h, 0)
    retention.apply(config_for(h), h.store)
    assert os.path.isdir(folder)
    report = retention.apply(config_for(h, dead_letter_keep_cycles=3), h.store)
    assert report.dead_letters_deleted == 1 and not os.path.exists(folder)
    # Then the emptied execution folder goes too.
    assert not os.path.exists(os.path.dirname(os.path.dirname(folder)))


def test_dead_letter_keep_cycles_is_validated():
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="dead_letter_keep_cycles must be None"):
        default_config("h", "l").replace(retention=RetentionConfig(dead_letter_keep_cycles=0)).validate()


def test_the_pinned_model_and_its_span_are_kept_however_old(tmp_path):
    """A rollback pins its model as the next base model and baseline: retention keeps it until unpinned."""
    from components.blessing_pusher import rollback
    from components.blessing_pusher.serving import RollbackResult

    h = six_cycles(tmp_path)
    first = h.cycles[0]
    [pushed] = h.store.get_artifacts_by_id([first["pushed"]])  # version 1, no longer in the serving folder
    rollback.record_rollback(h.store, h.pipeline, h.serving_dir,
                             RollbackResult(from_version=5, to_version=1, new_version=6), pushed)
    plan = retention.plan(config_for(h), h.store)
    assert plan.keep[first["model"]].startswith("the pinned model (rollback)")
    assert plan.keep[first["blessing"]].startswith("the pinned model (rollback)")
    assert plan.keep[first["examples"][0]].startswith("the span the pinned model was judged on")
    rollback.unpin(h.store, h.pipeline)
    plan = retention.plan(config_for(h), h.store)
    assert first["model"] in {a.id for a in plan.delete}


def test_carried_and_released_eval_splits_keep_their_spans(tmp_path):
    """A span whose eval split the next cycle scores on (carried) or trains on (released) keeps its payload, though
    its cycle was refused (quarantined, out of the replay window) and older than keep_cycles."""
    from mlmd_history import _set

    h = History(str(tmp_path), keep_versions=3)
    c = [h.cycle(blessed=False, push=False) for _ in range(4)]  # spans 100-103, each refused for evidence

    def judged(cycle, spans, insufficient):
        blessing = h.store.get_artifacts_by_id([cycle["blessing"]])[0]
        props = {"eval_span": spans[-1], "eval_spans": str(spans), "evidence_insufficient": insufficient}
        for key, value in props.items():
            _set(blessing.custom_properties[key], value)
        h.store.put_artifacts([blessing])

    judged(c[3], [100, 101, 102, 103], 1)
    config = config_for(h, keep_cycles=1, replay_spans=0)
    config = config.replace(gate=dataclasses.replace(config.gate, max_carried_eval_spans=2))
    kept = retention.plan(config, h.store).keep
    assert kept[c[3]["examples"][0]].startswith("made by one of the newest 1 cycles")
    assert kept[c[2]["examples"][0]] == "its eval split is carried: the next cycle's gate scores on it"
    assert kept[c[1]["examples"][0]] == "its eval split is released: the next cycle trains on it"
    assert kept[c[0]["examples"][0]] == "its eval split is released: the next cycle trains on it"
    # Off: nothing is carried, and these spans go as refused spans always did.
    config = config.replace(gate=dataclasses.replace(config.gate, max_carried_eval_spans=0))
    assert c[2]["examples"][0] not in retention.plan(config, h.store).keep


def test_the_online_comparisons_challenger_is_kept_however_old(tmp_path):
    """The open comparison's challenger serves beside the champion: retention keeps it until the comparison ends."""
    from components.online_evaluator import record

    h = History(str(tmp_path), keep_versions=1)
    champion = h.cycle()["model"]
    challenger = h.cycle(push=False)["model"]
    h.cycle(push=False)  # a newer blessed model: the next base model, so nothing else keeps the challenger
    for _ in range(3):
        h.cycle(blessed=False)
    record.start(h.store, h.pipeline, champion, challenger)
    plan = retention.plan(config_for(h, keep_cycles=1, replay_spans=0), h.store)
    assert plan.keep[challenger].startswith("the online comparison's challenger")
    record.decide_by_hand(h.store, h.pipeline, "retire")
    plan = retention.plan(config_for(h, keep_cycles=1, replay_spans=0), h.store)
    assert challenger in {a.id for a in plan.delete}


def test_online_mode_keeps_the_champions_blessing_the_next_base_model(tmp_path):
    """In online mode the serving champion, not the latest blessed challenger, is the next base model and baseline:
    its blessing stays LIVE for the resolver, however old."""
    from pipelines.config import OnlineEvalConfig

    h = History(str(tmp_path), keep_versions=1)
    champion = h.cycle()
    h.cycle(push=False)  # blessed: a challenger, the latest blessed model
    for _ in range(3):
        h.cycle(blessed=False)
    config = config_for(h, keep_cycles=1, replay_spans=0)
    assert champion["blessing"] in {a.id for a in retention.plan(config, h.store).delete}
    plan = retention.plan(config.replace(online=OnlineEvalConfig(enabled=True)), h.store)
    assert plan.keep[champion["blessing"]].startswith("the champion (online evaluation)")
    assert plan.keep[champion["examples"][0]].startswith("the span the champion was judged on")

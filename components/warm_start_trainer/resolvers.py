"""Resolver strategies over ML Metadata.

* `LatestSpansStrategy`, the replay window: the newest spans, minus quarantined ones (refused by
  the gate, or quarantined after failing cycles).
* `UntrainedSpansStrategy`, a resumed cycle's new spans: the spans an
  interrupted cycle published but no judged model trained on.
* `CarriedEvalSpansStrategy`, thin spans: the spans whose eval splits are carried to this cycle's
  gate, and those released to its training (`training_inputs.carried_and_released`).
* `PinnedOrLatestBlessedModelStrategy`, the base model and the baseline:
  the model a rollback pinned while the pin stands, else (online evaluation) the champion, else the latest
  blessed model.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

# The quarantine rule lives in a module without TFX, so retention applies the same one.
from components.warm_start_trainer.quarantine import has_key as _has_key  # noqa: F401  (re-exported)
from components.warm_start_trainer.quarantine import quarantined_after_failures, rejected_spans
from components.warm_start_trainer.training_inputs import newest_judged_cycle  # noqa: F401  (re-exported)


class LatestSpansStrategy(resolver.ResolverStrategy):
    """Resolves the `Examples` of the newest `num_spans` spans (one artifact per span, the newest version).

    Use with an unbound channel so that it sees every earlier run::

        Resolver(strategy_class=LatestSpansStrategy, config={"num_spans": 4},
                 examples=Channel(type=Examples)).with_id("replay_resolver")

    Spans whose own candidate was refused by the gate are left out
    (`rejected_spans`). It may also see spans of the current run; the trainer
    only replays spans older than the ones it trains on. An empty result is
    normal early on.
    """

    def __init__(self, num_spans: int = 3, exclude_rejected: bool = True):
        if num_spans < 0:
            raise ValueError(f"num_spans must be >= 0, got {num_spans}")
        self._num_spans = num_spans
        self._exclude_rejected = exclude_rejected

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        result = {}
        for key, artifacts in input_dict.items():
            quarantined = rejected_spans(store, [a.id for a in artifacts]) if self._exclude_rejected else set()
            # A span cycles kept failing on would fail the cycles that replay it, too.
            quarantined |= quarantined_after_failures(store)
            newest_per_span: Dict[int, types.Artifact] = {}
            for a in artifacts:
                if a.id in quarantined:
                    continue
                kept = newest_per_span.get(a.span)
                if kept is None or (a.version, a.id) > (kept.version, kept.id):
                    newest_per_span[a.span] = a
            spans = sorted(newest_per_span)[-self._num_spans:] if self._num_spans else []
            result[key] = [newest_per_span[s] for s in spans]
        return result


class UntrainedSpansStrategy(resolver.ResolverStrategy):
    """Resolves the `Examples` that were published but that no judged model trained on as new spans.

    A cycle killed after StreamingExampleGen published its spans (their
    position is committed) but before the gate judged a model trained on
    them leaves such spans; a resumed cycle (`create_pipeline(config,
    resume=True)`) trains on exactly these, and on spans `driftline replay`
    released from quarantine; spans quarantined after failing cycles are
    left out. The rule is `untrained.untrained_spans` (beside this module)::

        Resolver(strategy_class=UntrainedSpansStrategy, config={"pipeline_name": "driftline"},
                 examples=Channel(type=Examples)).with_id("untrained_spans_resolver")
    """

    def __init__(self, pipeline_name: str):
        self._pipeline_name = pipeline_name

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        from components.warm_start_trainer.untrained import untrained_spans

        wanted = {a.id for a in untrained_spans(store, self._pipeline_name)}
        return {key: sorted((a for a in artifacts if a.id in wanted), key=lambda a: (a.span, a.id))
                for key, artifacts in input_dict.items()}


CARRIED_KEY = "carried"
RELEASED_KEY = "released"


class CarriedEvalSpansStrategy(resolver.ResolverStrategy):
    """Resolves the `Examples` whose eval splits are carried to this cycle's gate, and those released.

    The rule is `training_inputs.carried_and_released`, applied to the newest
    judged cycle in ML Metadata (its `ModelBlessing`'s `eval_spans` and
    `evidence_insufficient`). Give it two unbound channels::

        Resolver(strategy_class=CarriedEvalSpansStrategy,
                 config={"pipeline_name": "driftline", "max_spans": 5},
                 carried=Channel(type=Examples), released=Channel(type=Examples)).with_id("carried_eval_resolver")

    `carried` goes to the trainer (not trained on) and the evaluator (scored
    on); `released` to the trainer (trained on in full). One artifact per
    span, its newest version. Both are empty early on, and with max_spans 0.
    """

    def __init__(self, pipeline_name: str, max_spans: int):
        if max_spans < 0:
            raise ValueError(f"max_spans must be >= 0, got {max_spans}")
        self._pipeline_name = pipeline_name
        self._max_spans = max_spans

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        from components.warm_start_trainer.training_inputs import carried_and_released

        spans, lacked_evidence = newest_judged_cycle(store, self._pipeline_name)
        carried, released = carried_and_released(spans, lacked_evidence, self._max_spans)
        wanted = {CARRIED_KEY: set(carried), RELEASED_KEY: set(released)}
        result = {}
        for key, artifacts in input_dict.items():
            newest_per_span: Dict[int, types.Artifact] = {}
            for a in artifacts:
                if a.span in wanted.get(key, ()):
                    kept = newest_per_span.get(a.span)
                    if kept is None or (a.version, a.id) > (kept.version, kept.id):
                        newest_per_span[a.span] = a
            result[key] = [newest_per_span[s] for s in sorted(newest_per_span)]
        return result


class PinnedOrLatestBlessedModelStrategy(LatestBlessedModelStrategy):
    """Resolves the latest blessed `Model` (and its `ModelBlessing`), counting from the pin while one stands.

    `driftline rollback` pins the model it rolls back to, in ML Metadata
    (`components.blessing_pusher.rollback.current_pin`). Without this, the
    next cycle would warm-start from, and be judged against, the latest
    blessed model, which is the very model rolled back from, and push its
    successor over the rollback. While the pin stands, the models blessed
    before it are passed over: the base model and the baseline are the
    newest model blessed after the pin (a candidate that beat the pinned
    model, or one that beat that one), else the pinned model itself. So the
    rollback holds, and learning goes on from the pinned model instead of
    restarting from it every cycle. Used exactly as the stock strategy::

        Resolver(strategy_class=PinnedOrLatestBlessedModelStrategy, config={"pipeline_name": "driftline"},
                 model=Channel(type=Model), model_blessing=Channel(type=ModelBlessing))

    With `champion=True` (online evaluation, `online.enabled`) and no pin, it is the serving champion (the
    model of the newest recorded push, `record.champion_model_id`) with its blessing: blessed candidates are
    challengers until promoted, so the latest blessed model may be one that live traffic later retires.

    A pinned model whose payload is gone (not LIVE, so TFX does not offer it)
    is an error that says to unpin: falling back to the latest blessed model
    would silently undo the rollback. Retention keeps the pinned model.
    """

    def __init__(self, pipeline_name: str, champion: bool = False):
        self._pipeline_name = pipeline_name
        self._champion = champion

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        from components.blessing_pusher.rollback import current_pin

        pin = current_pin(store, self._pipeline_name)
        if pin is None and self._champion:
            champion = self._champion_inputs(store, input_dict)
            if champion is not None:
                return champion
        if pin is None:
            return super().resolve_artifacts(store, input_dict)
        model_key = blessing_key = None
        for key, artifacts in input_dict.items():
            type_name = artifacts[0].type_name if artifacts else None
            if type_name == "Model":
                model_key = key
            elif type_name == "ModelBlessing":
                blessing_key = key
        models = {a.id: a for a in input_dict.get(model_key) or []} if model_key else {}
        blessed = [b for b in (input_dict.get(blessing_key) or []) if blessing_key
                   and b.has_custom_property("current_model_id") and b.has_custom_property("blessed")
                   and b.get_int_custom_property("blessed") == 1
                   and b.get_int_custom_property("current_model_id") in models]
        pinned_at_ms = pin.at_ms or 0
        after_pin = [b for b in blessed if b.mlmd_artifact.create_time_since_epoch >= pinned_at_ms]
        if after_pin:
            newest = max(after_pin, key=lambda b: (b.get_int_custom_property("current_model_id"), b.id))
            result = {key: [] for key in input_dict}
            result[model_key] = [models[newest.get_int_custom_property("current_model_id")]]
            result[blessing_key] = [newest]
            return result
        pinned = [models[pin.model_id]] if pin.model_id in models else []
        if not pinned:
            raise RuntimeError(
                f"model {pin.model_id} is pinned (rollback execution {pin.execution_id}) but ML Metadata offers no "
                f"live Model {pin.model_id} for pipeline {self._pipeline_name!r} (its payload was deleted?). Roll "
                "back to a version whose model is there, or end the pin with `driftline unpin`.")
        blessings = [b for b in blessed if b.get_int_custom_property("current_model_id") == pin.model_id]
        result = {key: [] for key in input_dict}
        result[model_key] = pinned
        if blessing_key is not None:
            result[blessing_key] = sorted(blessings, key=lambda b: b.id)[-1:]
        return result

    def _champion_inputs(self, store, input_dict: Dict[str, List[types.Artifact]]
                         ) -> Optional[Dict[str, List[types.Artifact]]]:
        """Online evaluation (`champion=True`): the serving champion and its newest blessing, or None when it
        is not among the inputs (nothing pushed yet, or a model of another pipeline promoted by hand).

        A blessed candidate is deployed as a challenger, not pushed, so the latest blessed model may be a
        challenger that live traffic later retires: the next candidate must be warm-started from, and judged
        against, the model that serves."""
        from components.online_evaluator.record import champion_model_id

        champion_id = champion_model_id(store, self._pipeline_name)
        model_key = next((k for k, v in input_dict.items() if v and v[0].type_name == "Model"), None)
        blessing_key = next((k for k, v in input_dict.items() if v and v[0].type_name == "ModelBlessing"), None)
        models = [a for a in input_dict.get(model_key) or [] if a.id == champion_id] if model_key else []
        if champion_id is None or not models:
            return None
        result = {key: [] for key in input_dict}
        result[model_key] = models
        if blessing_key is not None:
            result[blessing_key] = sorted(
                (b for b in input_dict[blessing_key] if b.has_custom_property("current_model_id")
                 and b.get_int_custom_property("current_model_id") == champion_id
                 and b.has_custom_property("blessed") and b.get_int_custom_property("blessed") == 1),
                key=lambda b: b.id)[-1:]
        return result

"""Resolver strategies over ML Metadata.

* `LatestSpansStrategy`, the replay window: the newest spans, minus quarantined ones (refused by
  the gate, or quarantined after failing cycles).
* `UntrainedSpansStrategy`, a resumed cycle's new spans: the spans an
  interrupted cycle published but no judged model trained on.
* `PinnedOrLatestBlessedModelStrategy`, the base model and the baseline:
  the model a rollback pinned while the pin stands, else the latest blessed model.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

# The quarantine rule lives in a module without TFX, so retention applies the same one.
from components.warm_start_trainer.quarantine import has_key as _has_key  # noqa: F401  (re-exported)
from components.warm_start_trainer.quarantine import quarantined_after_failures, rejected_spans


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

    A pinned model whose payload is gone (not LIVE, so TFX does not offer it)
    is an error that says to unpin: falling back to the latest blessed model
    would silently undo the rollback. Retention keeps the pinned model.
    """

    def __init__(self, pipeline_name: str):
        self._pipeline_name = pipeline_name

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        from components.blessing_pusher.rollback import current_pin

        pin = current_pin(store, self._pipeline_name)
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

"""Which examples a cycle trains on.

* Every split of this cycle's spans except the newest span's `eval` split,
  which the gate evaluates on, so it must stay unseen.
* The previous span's `eval` split in full: the previous cycle only evaluated
  on it, and without it that data would never be trained on. "Previous" is
  the span the base model was judged on: after a rejected candidate, that is
  older than the span just before this cycle.
* The released eval splits in full (role "released_eval"), see below.
* The carried spans' train splits in full (role "carried_train"), see below.
* A replay window against forgetting: the train split of the newest
  `replay_spans` earlier spans, sampled at `replay_fraction`. A cold start
  has nothing to forget and everything to learn, so it takes those spans whole.

A candidate that was not blessed is not a base, and its spans are not
trained on again: data that produced a rejected model is suspect, so the
replay resolver quarantines it (`resolvers.rejected_spans`).

Carried evidence (`carried_and_released`, `gate.max_carried_eval_spans`):
when a verdict lacked evidence (the evaluator flags its blessing
`evidence_insufficient` = 1), the eval splits it was judged on are CARRIED
to the next cycle instead of being trained on: the next candidate and its
baseline are scored on the carried eval splits plus the newest span's eval
split (`eval_files`), and the next candidate does not train on them. Walking
back from the newest judged cycle, the carried splits are the newest-span
eval splits of the consecutive most recent cycles whose verdicts lacked
evidence, at most `max_carried_eval_spans` of them (the newest; 0: never
carry). A split pushed out over that bound is released at once. Once a cycle
decides (blessed, or refused for quality), the splits it carried are
RELEASED: the following cycle trains on them, as it trains on the previous
eval split, so no data is lost to training. Their TRAIN splits are not
lost either: a refusal for too little evidence says nothing against the
data, so it does not quarantine the span (`quarantine.rejected_spans`), and
while a span is carried every candidate trains on its train split in full
(role "carried_train"), because the base, blessed before it, never learned
it; once released, it is an ordinary earlier span for the replay window. The newest judged cycle's
blessing records every split it was judged on (`eval_spans`), so the walk is
one read of ML Metadata (`resolvers.CarriedEvalSpansStrategy`).

Honest evidence: no candidate trained on a carried split (the cycle that
ingested it held it out and the candidates since excluded it; they train on
its span's train split, which is earlier in event time), nor did the baseline
(blessed before that span existed). But carried splits are earlier in event
time than the candidate's newest training data, so they measure the recent
past as well as the present.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, List, Optional, Sequence, Tuple

from components import mlmd_vocabulary as vocab
from components.streaming_example_gen.windowing import EVAL, TRAIN
from components.warm_start_trainer.fn_args import TrainingInput

SpanUri = Tuple[int, str]


def split_pattern(uri: str, split: str) -> str:
    return os.path.join(uri, f"Split-{split}", "*")


def plan_training_inputs(current: Sequence[SpanUri], earlier: Sequence[SpanUri], replay_spans: int,
                         replay_fraction: float, warm: bool = True,
                         previous_eval_span: Optional[int] = None, carried: Sequence[SpanUri] = (),
                         released: Sequence[SpanUri] = ()) -> List[TrainingInput]:
    """`previous_eval_span`: the base model's newest span (None: the newest earlier span).

    `carried`: spans whose eval splits the gate scores this cycle's candidate on besides the newest span's,
    so never trained on here; `released`: spans whose eval splits were carried until a cycle decided,
    trained on in full now (`carried_and_released`).
    """
    if not current:
        raise ValueError("a training cycle needs at least one new span")
    current = sorted(current)
    newest = current[-1][0]
    first_new = current[0][0]
    held_out = {span for span, _ in carried}
    # Earlier means before this cycle's spans; a resolver may also see this cycle's own.
    earlier = sorted(s for s in earlier if s[0] < first_new)
    inputs = [TrainingInput(split_pattern(uri, TRAIN), span, TRAIN) for span, uri in current]
    # A carried span's train split: the base never learned it (its candidate lacked evidence, was not blessed).
    inputs += [TrainingInput(split_pattern(uri, TRAIN), span, TRAIN, role="carried_train")
               for span, uri in sorted(dict(carried).items()) if span < first_new]
    inputs += [TrainingInput(split_pattern(uri, EVAL), span, EVAL) for span, uri in current
               if span != newest and span not in held_out]
    previous = [s for s in earlier if previous_eval_span is None or s[0] == previous_eval_span]
    trained_eval = {i.span for i in inputs if i.split == EVAL}
    if previous and previous[-1][0] not in held_out:
        span, uri = previous[-1]
        inputs.append(TrainingInput(split_pattern(uri, EVAL), span, EVAL, role="previous_eval"))
        trained_eval.add(span)
    for span, uri in sorted(dict(released).items()):
        if span not in held_out and span not in trained_eval and span < first_new:
            inputs.append(TrainingInput(split_pattern(uri, EVAL), span, EVAL, role="released_eval"))
            trained_eval.add(span)
    fraction = replay_fraction if warm else 1.0
    if replay_spans and fraction > 0:
        for span, uri in earlier[-replay_spans:]:
            if span in held_out:  # trained in full above
                continue
            inputs.append(TrainingInput(split_pattern(uri, TRAIN), span, TRAIN, fraction=fraction, role="replay"))
    return inputs


def carried_and_released(newest_judged_eval_spans: Iterable[int], evidence_insufficient: bool,
                         max_carried: int) -> Tuple[List[int], List[int]]:
    """(carried, released) span numbers for the next cycle, from the newest judged cycle's verdict.

    `newest_judged_eval_spans`: every span whose eval split the newest judged cycle was scored on (its
    carried spans and its newest span; empty when nothing was judged yet); `evidence_insufficient`: its
    verdict lacked evidence. That cycle's own carried spans were, by the same rule, the newest-span eval
    splits of the run of evidence-lacking cycles before it, so this is the walk back of the module doc.

    * lacked evidence: carry the newest `max_carried` of them; release the older ones (pushed out).
    * decided: carry nothing; release all but its newest span, whose eval split the previous-eval rule
      covers (trained on when it was blessed; quarantined with a candidate refused for quality).
    * `max_carried` 0: nothing is carried or released (carrying is off).
    """
    if max_carried < 0:
        raise ValueError(f"max_carried must be >= 0, got {max_carried}")
    spans = sorted(set(newest_judged_eval_spans))
    if not spans or max_carried == 0:
        return [], []
    if evidence_insufficient:
        return spans[-max_carried:], spans[:-max_carried]
    return [], spans[:-1]


def newest_judged_cycle(store, pipeline_name: str) -> Tuple[List[int], bool]:
    """(every span the newest ModelBlessing of the pipeline's evaluator was judged on, whether its verdict
    lacked evidence); ([], False) when nothing was judged yet.

    A plain ML Metadata read, no TFX: `resolvers.CarriedEvalSpansStrategy` and retention share it.

    A blessing written before carrying existed has no `eval_spans` / `evidence_insufficient`: its
    `eval_span` alone, and decided.
    """
    context = store.get_context_by_type_and_name(vocab.NODE_CONTEXT_TYPE,
                                                 vocab.node_context_name(pipeline_name, vocab.EVALUATOR_ID))
    if context is None:
        return [], False
    blessings = [a for a in store.get_artifacts_by_context(context.id)
                 if a.state in vocab.PUBLISHED_STATES and a.type == vocab.BLESSING_TYPE
                 and vocab.custom_property(a, vocab.EVAL_SPAN_PROPERTY) is not None]
    if not blessings:
        return [], False
    newest = max(blessings, key=lambda a: a.id)
    spans_json = vocab.custom_property(newest, vocab.EVAL_SPANS_PROPERTY)
    spans = json.loads(spans_json) if spans_json else [vocab.custom_property(newest, vocab.EVAL_SPAN_PROPERTY)]
    return [int(s) for s in spans], bool(vocab.custom_property(newest, vocab.EVIDENCE_INSUFFICIENT_PROPERTY) or 0)


def judged_only(earlier: Sequence[SpanUri], base_newest_span: Optional[int]) -> List[SpanUri]:
    """The earlier spans no newer than the span the base model was judged on.

    For a replay resolver that cannot see blessings (Vertex AI Pipelines runs
    only LatestArtifactStrategy): a span newer than that, and older than this
    cycle, belongs to a cycle whose candidate was refused (or that never
    reached the gate), so it is left out as `resolvers.rejected_spans` leaves
    out refused spans locally. No base model: nothing earlier was blessed, nothing is replayed.
    """
    if base_newest_span is None:
        return []
    return [s for s in earlier if s[0] <= base_newest_span]


def eval_files(current: Sequence[SpanUri], carried: Sequence[SpanUri] = ()) -> List[str]:
    """What the gate scores on: the carried spans' eval splits (oldest first) and the newest span's.

    The newest span's is later than all training data; the carried ones no candidate trained on.
    """
    span, uri = max(current)
    return [split_pattern(u, EVAL) for s, u in sorted(dict(carried).items()) if s != span] + [split_pattern(uri, EVAL)]

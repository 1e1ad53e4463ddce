"""Which examples a cycle trains on.

* Every split of this cycle's spans except the newest span's `eval` split,
  which the gate evaluates on, so it must stay unseen.
* The previous span's `eval` split in full: the previous cycle only evaluated
  on it, and without it that data would never be trained on. "Previous" is
  the span the base model was judged on: after a rejected candidate, that is
  older than the span just before this cycle.
* A replay window against forgetting: the train split of the newest
  `replay_spans` earlier spans, sampled at `replay_fraction`. A cold start
  has nothing to forget and everything to learn, so it takes those spans whole.

A candidate that was not blessed is not a base, and its spans are not
trained on again: data that produced a rejected model is suspect, so the
replay resolver quarantines it (`resolvers.rejected_spans`).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

from components.streaming_example_gen.windowing import EVAL, TRAIN
from components.warm_start_trainer.fn_args import TrainingInput

SpanUri = Tuple[int, str]


def split_pattern(uri: str, split: str) -> str:
    return os.path.join(uri, f"Split-{split}", "*")


def plan_training_inputs(current: Sequence[SpanUri], earlier: Sequence[SpanUri], replay_spans: int,
                         replay_fraction: float, warm: bool = True,
                         previous_eval_span: Optional[int] = None) -> List[TrainingInput]:
    """`previous_eval_span`: the base model's newest span (None: the newest earlier span)."""
    if not current:
        raise ValueError("a training cycle needs at least one new span")
    current = sorted(current)
    newest = current[-1][0]
    first_new = current[0][0]
    # Earlier means before this cycle's spans; a resolver may also see this cycle's own.
    earlier = sorted(s for s in earlier if s[0] < first_new)
    inputs = [TrainingInput(split_pattern(uri, TRAIN), span, TRAIN) for span, uri in current]
    inputs += [TrainingInput(split_pattern(uri, EVAL), span, EVAL) for span, uri in current if span != newest]
    previous = [s for s in earlier if previous_eval_span is None or s[0] == previous_eval_span]
    if previous:
        span, uri = previous[-1]
        inputs.append(TrainingInput(split_pattern(uri, EVAL), span, EVAL, role="previous_eval"))
    fraction = replay_fraction if warm else 1.0
    if replay_spans and fraction > 0:
        for span, uri in earlier[-replay_spans:]:
            inputs.append(TrainingInput(split_pattern(uri, TRAIN), span, TRAIN, fraction=fraction, role="replay"))
    return inputs


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


def eval_files(current: Sequence[SpanUri]) -> List[str]:
    """The newest span's eval split: what the gate scores on, later than all training data."""
    span, uri = max(current)
    return [split_pattern(uri, EVAL)]

"""A resolver strategy for the replay window: the newest spans in ML Metadata."""
from __future__ import annotations

from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver


class LatestSpansStrategy(resolver.ResolverStrategy):
    """Resolves the `Examples` of the newest `num_spans` spans (one artifact per span, the newest version).

    Use with an unbound channel so that it sees every earlier run::

        Resolver(strategy_class=LatestSpansStrategy, config={"num_spans": 4},
                 examples=Channel(type=Examples)).with_id("replay_resolver")

    It may also see spans of the current run; the trainer only replays spans
    older than the ones it trains on. An empty result is normal early on.
    """

    def __init__(self, num_spans: int = 3):
        if num_spans < 0:
            raise ValueError(f"num_spans must be >= 0, got {num_spans}")
        self._num_spans = num_spans

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        result = {}
        for key, artifacts in input_dict.items():
            newest_per_span: Dict[int, types.Artifact] = {}
            for a in artifacts:
                kept = newest_per_span.get(a.span)
                if kept is None or (a.version, a.id) > (kept.version, kept.id):
                    newest_per_span[a.span] = a
            spans = sorted(newest_per_span)[-self._num_spans:] if self._num_spans else []
            result[key] = [newest_per_span[s] for s in spans]
        return result

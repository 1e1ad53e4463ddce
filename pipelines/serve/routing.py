"""Champion and challenger in `driftline serve`: which model scores a request, and in what order it ranks.

**Routing.** ML Metadata is the source of truth for the running comparison
(`components/online_evaluator/record.py`: the newest `driftline.OnlineDecision`
unless it promoted or retired). `ComparisonWatch` reads it off the request's
path, in the model store's thread after a poll, at most every
`serve.comparison_poll_seconds`: the challenger's `Model` artifact (its
SavedModel under `Format-Serving/`, loaded and warmed up like a version) and
both arms' cumulative counts, whose Beta posteriors (the `online` section's
prior) give P(challenger better) once per read. `Routing` is what requests
read: one reference, replaced whole. Each request then draws its arm by
Thompson sampling (`decision.choose_arm`: one draw from each posterior, the
larger wins) and logs the arm's exact propensity, P(better) or 1 minus it.
A comparison that ends (promote, retire) or is replaced unloads the
challenger (the reference is dropped and collected, as a swapped-out version
is). With no open comparison nothing is drawn and every request is the
champion's with propensity 1.

A challenger that does not load, or fails to score a request, never fails a
request: the champion scores it, the failure is counted, and that challenger
is not routed to again (it is retried only as another comparison's
challenger); until then every request is the champion's with propensity 1,
since the policy no longer chooses. The arm is still drawn (`Routing.draw`):
a request drawn for the challenger that the champion answered is logged with
`challenger_fallback` 1, the evidence of the challenger's error rate. Reading ML Metadata never fails the
server either: an error is counted, and the last routing stands until the
next read.

**Exploration.** `explore_order` is the epsilon-greedy ranking policy: with
probability epsilon (`serve.exploration_rate`) the order is a uniformly random
permutation of the request's N candidates, otherwise the arm's score order.
The probability that an item lands at its served position is
`(1 - eps) * [position == greedy_position] + eps / N`, logged per impression
so that an off-policy estimate can weight by it.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from components.online_evaluator.decision import (
    CHALLENGER, CHAMPION, BetaPosterior, Comparison, Prior, choose_arm, prob_better)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Routing:
    """An open comparison as the server routes by it; replaced whole when ML Metadata says otherwise."""

    champion_model_id: int
    challenger_model_id: int
    champion: BetaPosterior
    challenger: BetaPosterior
    p_better: float  # P(challenger better) under the posteriors: the challenger's propensity
    # The challenger, loaded (a model_store.LoadedModel); None: it did not load or failed to score, so every
    # request is the champion's.
    model: Any = None

    def draw(self, rng: np.random.Generator) -> Tuple[str, float, bool]:
        """(the arm that serves, its propensity, fallback) for one request.

        Without a loaded challenger (it did not load, or failed on a request) the champion serves at
        propensity 1, but the draw is still made: `fallback` says the challenger was drawn and the champion
        answered instead, what the challenger's error-rate guardrail counts (components/online_evaluator/
        guardrails.py). Logged per impression, it survives restarts of the server; its memory does not."""
        arm, p = choose_arm(self.champion, self.challenger, rng, p_better=self.p_better)
        if self.model is None:
            return CHAMPION, 1.0, arm == CHALLENGER
        return arm, p, False

    def propensities(self) -> Tuple[float, float]:
        """(P(champion chosen), P(challenger chosen)) per request."""
        if self.model is None:
            return 1.0, 0.0
        return 1.0 - self.p_better, self.p_better


def read_comparison(metadata: Any, pipeline_name: str) -> Optional[Tuple[Comparison, Optional[str]]]:
    """The open comparison in ML Metadata and its challenger's SavedModel folder (None: it has none), or None."""
    from components.online_evaluator.record import open_comparison
    from pipelines.metadata import open_store, store_exists
    from pipelines.recovery import model_serving_dir

    if not store_exists(metadata):
        return None
    store = open_store(metadata)
    comparison = open_comparison(store, pipeline_name)
    if comparison is None:
        return None
    found = store.get_artifacts_by_id([comparison.challenger_model_id])
    path = model_serving_dir(found[0].uri) if found and found[0].uri else None
    return comparison, path


class ComparisonWatch:
    """Keeps `routing` (a Routing, or None: no comparison open) as ML Metadata says; `tick` runs off requests."""

    def __init__(self, metadata: Any, pipeline_name: str, schema: Any, prior: Prior = Prior(),
                 poll_seconds: float = 5.0, on_error: Optional[Callable[[str], None]] = None,
                 on_load_error: Optional[Callable[[int, str], None]] = None,
                 reader: Callable[[Any, str], Optional[Tuple[Comparison, Optional[str]]]] = read_comparison):
        self.metadata = metadata
        self.pipeline_name = pipeline_name
        self.schema = schema
        self.prior = prior
        self.poll_seconds = poll_seconds
        self.on_error = on_error
        self.on_load_error = on_load_error
        self._reader = reader
        # The one reference requests read (like ModelStore.current); replaced whole, never mutated.
        self.routing: Optional[Routing] = None
        # Challengers that did not load or failed to score: not tried again (a new comparison's are).
        self._failed: List[int] = []
        self._read_at: Optional[float] = None

    def tick(self, _served: Any = None) -> None:
        """After a poll of the serving folder: read the comparison again if `poll_seconds` have passed."""
        if self._read_at is not None and time.monotonic() - self._read_at < self.poll_seconds:
            return
        self._read_at = time.monotonic()
        self.refresh()

    def refresh(self) -> None:
        try:
            found = self._reader(self.metadata, self.pipeline_name)
        except Exception as e:  # a locked, moved or unreadable store: the last routing stands, read again later
            why = f"{type(e).__name__}: {e}"
            log.warning("could not read the open comparison from ML Metadata: %s", why)
            if self.on_error is not None:
                self.on_error(why)
            return
        old = self.routing
        if found is None:
            if old is not None:
                log.info("the comparison with challenger model %s is over: every request is the champion's",
                         old.challenger_model_id)
                self.routing = None
                unload = old.model is not None
                del old
                if unload:
                    _collect()
            return
        comparison, path = found
        challenger_id = comparison.challenger_model_id
        model = old.model if old is not None and old.challenger_model_id == challenger_id else None
        if model is None and challenger_id not in self._failed:
            model = self._load(challenger_id, path)
        if challenger_id in self._failed:  # failed to score meanwhile (the request path said so)
            model = None
        champion = BetaPosterior.from_counts(comparison.champion, self.prior)
        challenger = BetaPosterior.from_counts(comparison.challenger, self.prior)
        self.routing = Routing(comparison.champion_model_id, challenger_id, champion, challenger,
                               prob_better(champion, challenger), model)
        if old is not None and old.challenger_model_id != challenger_id:
            log.info("challenger model %s replaced by model %s", old.challenger_model_id, challenger_id)
            unload = old.model is not None
            del old, model
            if unload:
                _collect()

    def _load(self, model_id: int, path: Optional[str]) -> Any:
        from pipelines.serve.model_store import ModelLoadError, load_saved_model

        try:
            if path is None:
                raise ModelLoadError(f"challenger model {model_id}'s artifact holds no SavedModel (Format-Serving/): "
                                     "its payload was deleted or never written")
            model = load_saved_model(path, model_id, self.schema, what=f"challenger model {model_id}")
        except ModelLoadError as e:
            self._failed.append(model_id)
            log.error("not routing to challenger model %s, the champion serves everything: %s", model_id, e)
            if self.on_load_error is not None:
                self.on_load_error(model_id, str(e))
            return None
        log.info("routing between the champion and challenger model %s (%s)", model_id, path)
        return model

    def scoring_failed(self, routing: Routing) -> None:
        """The challenger of `routing` failed on a request (the request path calls this): route no more to it."""
        if routing.challenger_model_id not in self._failed:
            self._failed.append(routing.challenger_model_id)
        current = self.routing
        if current is not None and current.challenger_model_id == routing.challenger_model_id:
            self.routing = dataclasses.replace(current, model=None)



def _collect() -> None:
    """After the last reference to a challenger is dropped (a request still scoring keeps its own until done).

    As after a swap (model_store.ModelStore.refresh): free the challenger's graph now, not at some later
    collection.
    """
    from pipelines.serve.model_store import collect_dropped_models

    collect_dropped_models()


def explore_order(scores: np.ndarray, rate: float, rng: Optional[np.random.Generator]
                  ) -> Tuple[List[int], List[int], List[int], bool, List[float]]:
    """The epsilon-greedy ranking policy over one request's scores.

    Returns (order: the candidates' indices as served, best first; positions: each candidate's served place;
    greedy_positions: its place in the score order; explored; propensities: per candidate, the probability
    that the policy put it at its served place). Equal scores keep the candidates' order.
    """
    n = len(scores)
    greedy = np.argsort(-scores, kind="stable")
    greedy_positions = np.empty(n, dtype=np.int64)
    greedy_positions[greedy] = np.arange(n)
    greedy_list = greedy_positions.tolist()
    hit = (1.0 - rate) + rate / n if n else 1.0
    explored = rate > 0 and rng is not None and rng.random() < rate
    if not explored:
        # One float object n times: the impressions writer serializes a shared column once.
        return greedy.tolist(), greedy_list, greedy_list, False, [hit] * n
    order = rng.permutation(n)
    positions = np.empty(n, dtype=np.int64)
    positions[order] = np.arange(n)
    propensity = np.where(positions == greedy_positions, hit, rate / n)
    return order.tolist(), positions.tolist(), greedy_list, True, propensity.tolist()

"""Each arm's shown impressions and successes, per span and per challenger: plain functions, no TFX.

JoinExampleGen counts them over a span's joined examples (the impressions that were shown, i.e. became
examples: `join.max_position` already left the others out) and records them on the span's `Examples`
artifact as the JSON custom property `arm_counts`:

    {"<challenger_model_id>": {"champion": {"successes": s, "trials": n},
                               "challenger": {"successes": s, "trials": n}}}

The server writes, on every line it serves while a comparison is open, `arm` ("champion" or
"challenger") and `challenger_model_id` (the open comparison's challenger's ML Metadata id), so an
impression is counted for the comparison it was served under. A line without them (no comparison open)
is counted nowhere. A success is the reward field (`online.reward_field`, by default the label the join
sets) > 0: one per impression, however many clicks, so successes never exceed trials.

Each arm's entry also holds its guardrail measures over the same impressions (guardrails.py: requests,
fallbacks, the latency histogram, the scores' sum), which `from_json` leaves out and `stats_from_json`
reads; a span written before they were measured has none, and adds nothing to them.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, Mapping, Optional

from components.online_evaluator import guardrails
from components.online_evaluator.decision import CHALLENGER, CHAMPION, Counts

# The impression fields the server writes (the contract between serve routing and the controller).
ARM_FIELD = "arm"
CHALLENGER_ID_FIELD = "challenger_model_id"
ARMS = (CHAMPION, CHALLENGER)

ArmCounts = Dict[int, Dict[str, Counts]]


def count_arms(events: Iterable[Mapping[str, Any]], reward_field: str) -> ArmCounts:
    """{challenger_model_id: {arm: Counts}} over joined impressions (dicts with the label already set).

    An impression with no challenger id, or with an arm other than the two, is left out: it was served
    while no comparison was open (or by a server that does not route), so it is evidence for none.
    """
    tally: Dict[int, Dict[str, list]] = {}
    for event in events:
        challenger_id, arm = event.get(CHALLENGER_ID_FIELD), event.get(ARM_FIELD)
        if challenger_id is None or arm not in ARMS:
            continue
        reward = event.get(reward_field)
        arms = tally.setdefault(int(challenger_id), {a: [0, 0] for a in ARMS})
        arms[arm][1] += 1
        if reward is not None and reward > 0:
            arms[arm][0] += 1
    return {cid: {arm: Counts(s, n) for arm, (s, n) in arms.items()} for cid, arms in tally.items()}


def to_json(counts: ArmCounts, stats: Optional[Dict[int, guardrails.ArmsStats]] = None) -> str:
    stats = stats or {}

    def entry(cid: int, arm: str, c: Counts) -> dict:
        measured = stats.get(cid, {}).get(arm)
        return {**(measured.to_dict() if measured is not None else {}), "successes": c.successes, "trials": c.trials}

    return json.dumps({str(cid): {arm: entry(cid, arm, c) for arm, c in arms.items()}
                       for cid, arms in sorted(counts.items())}, sort_keys=True)


def span_json(events: Iterable[Mapping[str, Any]], reward_field: str) -> str:
    """A span's `arm_counts` property: each arm's counts and guardrail measures per challenger (JoinExampleGen)."""
    events = list(events)
    return to_json(count_arms(events, reward_field), guardrails.measure(events, reward_field, ARM_FIELD,
                                                                        CHALLENGER_ID_FIELD))


def from_json(text: Optional[str]) -> ArmCounts:
    """The property read back; empty for a span without one (no comparison open, or not in online mode)."""
    if not text:
        return {}
    return {int(cid): {arm: Counts(int(c["successes"]), int(c["trials"])) for arm, c in arms.items()}
            for cid, arms in json.loads(text).items()}


def stats_from_json(text: Optional[str]) -> Dict[int, guardrails.ArmsStats]:
    """The guardrail measures in the property (zero for a span written before they were measured)."""
    if not text:
        return {}
    return {int(cid): guardrails.from_dict(arms) for cid, arms in json.loads(text).items()}


def for_challenger(counts: ArmCounts, challenger_model_id: int) -> Optional[Dict[str, Counts]]:
    """This challenger's two arms, or None when the span holds no impression of its comparison."""
    arms = counts.get(int(challenger_model_id))
    if arms is None:
        return None
    return {arm: arms.get(arm, Counts()) for arm in ARMS}

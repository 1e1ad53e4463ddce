"""The notebook runs top to bottom (on a small stream), and the regime comparison behind it holds up."""
import json
import os

import numpy as np
import pytest

from pipelines import regimes

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks",
                        "continuous_vs_batch.ipynb")


def test_rank_counts_only_ads_scored_strictly_above():
    scores = {"a1": 0.2, "a2": 0.5, "a3": 0.5, "hot": 0.5, "a4": 0.9}
    assert regimes.rank_in_category(scores, "hot") == 2  # only a4 beats it; ties do not push it down
    assert regimes.rank_in_category(scores, "a4") == 1
    assert regimes.rank_in_category(scores, "a1") == 5


def test_category_scores_swap_the_ad_into_every_request():
    from pipelines.scoring import decode

    contexts = [{"user_id": f"u{i}", "ad_id": "a0", "ad_category": "c9", "price": float(i)} for i in range(3)]
    seen = []

    def predict(serialized):
        rows = decode(serialized)
        seen.extend(rows)
        # A real function of the request: the ad's number times the price.
        return np.array([int(r["ad_id"][1:]) * r["price"] for r in rows])

    scores = regimes.category_ad_scores(predict, contexts, ["a1", "a2"], "c3")
    assert scores == {"a1": pytest.approx(1.0), "a2": pytest.approx(2.0)}  # mean price is 1
    assert {r["ad_category"] for r in seen} == {"c3"}
    assert sorted((r["ad_id"], r["user_id"]) for r in seen) == sorted(
        (a, f"u{i}") for a in ("a1", "a2") for i in range(3))


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(regimes.ConfigError, match="spans must be >= 2"):
        regimes.CompareConfig(spans=1).validate()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "file").write_text("x")
    with pytest.raises(regimes.ConfigError, match="not empty"):
        regimes.compare(str(tmp_path / "old"), regimes.CompareConfig(spans=2))


@pytest.mark.e2e
def test_notebook_executes_top_to_bottom(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    home = tmp_path / "home"
    monkeypatch.setenv("DRIFTLINE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("DRIFTLINE_NOTEBOOK_HOME", str(home))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the plot cell drew nothing"

    result = json.loads((home / "results.json").read_text())
    spans = result["config"]["spans"]
    assert len(result["span_ids"]) == spans
    # Every span after the first is scored for batch and static (they serve from span 1 on).
    for regime in ("batch", "static"):
        rows = [r for r in result["next_span_auc"] if r["regime"] == regime]
        assert [r["span"] for r in rows] == list(range(1, spans))
        assert all(0.5 < r["auc"] < 1.0 for r in rows)
    # driftline trained every span (the real pipeline: models in ML Metadata), batch every K, static once.
    by_regime = {r: [t for t in result["trainings"] if t["regime"] == r] for r in regimes.REGIMES}
    assert len(by_regime["continuous"]) == spans and all(t["model_id"] for t in by_regime["continuous"])
    assert [t["at_span"] for t in by_regime["batch"]] == list(range(0, spans, result["config"]["batch_every"]))
    assert len(by_regime["static"]) == 1
    assert [t["start"] for t in by_regime["continuous"]][-1] == "warm"
    # The race: driftline serves a model that learned from the hot ad's first span one cycle after it closes;
    # batch waits for its next retrain. Only serving models count.
    race = result["race"]
    assert race["continuous"] is not None
    assert race["batch"] is None or race["continuous"] <= race["batch"]
    for row in result["hot_ad_ranks"]:
        assert 1 <= row["rank"] <= row["ads_in_category"]
    # The static model was trained before the hot ad existed: it can never win the race.
    assert race["static"] is None

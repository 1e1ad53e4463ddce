"""benchmarks/learning.py's summary: which settings it chooses and which targets it reports for them."""
from benchmarks import learning

D = learning.DEFAULT_LABEL  # the row of the shipped default


def _rows(aucs, cpu=1.0):
    return [{"span": k, "next_span_auc": a, "train_cpu_s": cpu} for k, a in enumerate(aucs, start=1)]


def _results():
    # Cycle 1 is not steady state: only cycles 2-3 count. River's best is 0.70 on ads, 0.60 on music.
    ads = {"river": {"lr_adagrad_1.0": _rows([0.9, 0.70, 0.70]), "lr_adagrad_2.0": _rows([0.9, 0.69, 0.69])},
           "driftline": {D: _rows([0.1, 0.74, 0.74]),
                         "wide + all crosses + FM": _rows([0.1, 0.73, 0.73]),
                         "wide + all crosses, no replay": _rows([0.1, 0.80, 0.80])},
           "stateless": {"stateless full retrain, wide + all crosses": _rows([0.5, 0.72, 0.72], cpu=3.0)},
           "oracle_auc": 0.88}
    music = {"river": {"lr_adagrad_1.0": _rows([0.5, 0.60, 0.60]), "lr_adagrad_2.0": _rows([0.5, 0.61, 0.59])},
             "driftline": {D: _rows([0.1, 0.62, 0.62]),
                           "wide + all crosses + FM": _rows([0.1, 0.70, 0.70]),
                           "wide + all crosses, no replay": _rows([0.1, 0.80, 0.80])},
             "stateless": {}}
    return {"ads": ads, "music": music}


GRID = [D, "wide + all crosses + FM", "wide + all crosses, no replay"]


def test_the_choice_is_the_best_worst_case_margin_among_the_settings_eligible_as_default():
    s = learning.summarize(_results(), 3, GRID)
    # Margins over the best River: all crosses 0.04 / 0.02 (worst 0.02), FM 0.03 / 0.10 (worst 0.03);
    # no replay is better on both (0.10 / 0.20) but not eligible as the default.
    assert "wide + all crosses, no replay" in learning.NOT_DEFAULT
    assert s["chosen"] == s["best_here"] == "wide + all crosses + FM"
    assert abs(s["margins"]["wide + all crosses, no replay"] - 0.10) < 1e-9  # ads 0.10, music 0.20
    assert s["per_stream"]["ads"]["best_river"] == "lr_adagrad_1.0"
    assert s["per_stream"]["ads"]["train_cpu_s"]["stateless full retrain, wide + all crosses"] == 3.0
    targets = {t["target"]: t for t in s["targets"]}
    river = targets["ads: driftline (wide + all crosses + FM) >= best River (lr_adagrad_1.0) + 0.01"]
    assert (river["value"], river["need"], river["met"]) == (0.73, 0.71, True)
    stateless = targets["ads: driftline (wide + all crosses + FM) >= stateless full retrain, wide + all crosses"]
    assert stateless["met"] and stateless["need"] == 0.72
    assert not targets["ads at 10k/span: driftline (wide + all crosses + FM) >= 0.777"]["met"]
    # The shipped default is not the chosen one: its targets are reported too.
    assert f"music: driftline ({D}, shipped default) >= best River (lr_adagrad_1.0) + 0.01" in targets


def test_the_shipped_default_stays_unless_another_setting_beats_it_by_the_minimum_gain():
    results = _results()
    # FM's worst-case margin 0.03 against the default's 0.02: a gain of 0.01 >= MIN_GAIN, so FM is chosen.
    assert learning.summarize(results, 3, GRID)["chosen"] == "wide + all crosses + FM"
    # Within MIN_GAIN of the default (0.024 against 0.02): the default stays, the best is still reported.
    for name, auc in (("ads", 0.724), ("music", 0.70)):
        results[name]["driftline"]["wide + all crosses + FM"] = _rows([0.1, auc, auc])
    s = learning.summarize(results, 3, GRID)
    assert D in learning.GRID and learning.MIN_GAIN > 0.004
    assert s["best_here"] == "wide + all crosses + FM" and s["chosen"] == D


def test_settings_chosen_on_another_seed_are_the_ones_reported_and_the_text_says_so():
    s = learning.summarize(_results(), 3, GRID, chosen=D, chosen_source="simulator seed 0 (x.json)")
    assert s["chosen"] == D and s["best_here"] == "wide + all crosses + FM"
    music = next(t for t in s["targets"] if t["target"].startswith(f"music: driftline ({D}) >= best"))
    assert music["need"] == 0.61 and music["met"]  # 0.62 >= 0.61 (lr_adagrad_1.0's 0.60 + 0.01)
    text = learning.render({"summary": s, "spans": 3, "events_per_span": 10000, "seed": 1, "date": "2026-12-05",
                            "grid": GRID, "stateless": ["stateless full retrain, wide + all crosses"]})
    assert "chosen on simulator seed 0 (x.json), not on the cycles above" in text
    assert f"| driftline: **{D}** |" in text and "no replay †" in text


def test_the_default_row_is_what_trainer_config_ships():
    """The row the choice is measured against is the shipped default, setting for setting."""
    from pipelines import ads_model
    from pipelines.config import TrainerConfig

    shipped, row = TrainerConfig(), learning.GRID[D]
    for key, value in row.items():
        if key != "model":
            assert getattr(shipped, key) == value, key
    buckets = {"a_xf": 10, "b_xf": 20}
    assert ads_model.model_options(row["model"], buckets) == ads_model.model_options(shipped.model, buckets)
    for key in ("embedding_dim", "hidden_units"):
        assert row["model"][key] == shipped.model[key]


# The default's model and replay window with another replay share (the default before it, 0.1).
CHEAP = "wide + all crosses + counts, warm 1 epoch, wide l2 0.1, embedding l2 0.01"
COSTLY = "wide + all crosses + FM + counts, warm 1 epoch"  # another model: a cold start for every user


def _selection(seed, gains):
    """A selection run: River 0.70 on both streams, the default at 0.75, each other row at 0.75 + its gain
    on (ads, music)."""
    def stream(i):
        driftline = {D: _rows([0.1, 0.75, 0.75])}
        for label, g in gains.items():
            driftline[label] = _rows([0.1, 0.75 + g[i], 0.75 + g[i]])
        return {"river": {"fm_0.5": _rows([0.5, 0.70, 0.70])}, "driftline": driftline, "stateless": {}}
    return {"seed": seed, "spans": 3, "grid": [D, *gains], "results": {"ads": stream(0), "music": stream(1)}}


def test_across_seeds_a_change_that_keeps_the_model_needs_a_sign_test_not_the_minimum_gain():
    assert learning.costless_change(CHEAP) and not learning.costless_change(COSTLY)
    # CHEAP is better by 0.002-0.004 (under MIN_GAIN) in 7 of 8 stream x seed pairs: p = 9/256 = 0.035.
    # COSTLY is better by 0.004 everywhere (8 of 8), but under MIN_GAIN: it is not chosen.
    cheap = [(0.003, 0.002), (0.004, 0.003), (0.002, -0.001), (0.003, 0.004)]
    sels = [_selection(seed, {CHEAP: g, COSTLY: (0.004, 0.004)}) for seed, g in zip((0, 2, 3, 4), cheap)]
    across = learning.choose_across_seeds(sels)
    e = across["evidence"][CHEAP]
    assert (e["wins"], e["n"], e["sign_test_p"]) == (7, 8, 0.0352)
    assert e["passes"] and not across["evidence"][COSTLY]["passes"]
    assert across["chosen"] == CHEAP and across["seeds"] == [0, 2, 3, 4]
    # 6 of 8 (p = 0.145) is not enough, however large the mean gain.
    cheap[1] = (0.010, -0.001)
    across = learning.choose_across_seeds(
        [_selection(seed, {CHEAP: g, COSTLY: (0.004, 0.004)}) for seed, g in zip((0, 2, 3, 4), cheap)])
    assert across["evidence"][CHEAP]["sign_test_p"] == 0.1445 and across["chosen"] == D
    # A costly change better by MIN_GAIN in the mean worst-case margin is chosen, without a sign test.
    across = learning.choose_across_seeds([_selection(s, {COSTLY: (0.007, 0.006)}) for s in (0, 2)])
    assert across["evidence"][COSTLY]["mean_margin_gain"] == 0.006 and across["chosen"] == COSTLY


def test_across_seeds_a_change_must_also_hold_up_on_thin_spans():
    sels = [_selection(seed, {CHEAP: (0.003, 0.003)}) for seed in (0, 2, 3, 4)]
    assert learning.choose_across_seeds(sels)["chosen"] == CHEAP

    def thin(seed, gain):
        return {**_selection(seed, {CHEAP: gain}), "events_per_span": 1000}

    # On thin spans music loses 0.004 and 0.008: a mean of -0.006, past THIN_TOLERANCE (0.005).
    across = learning.choose_across_seeds(sels, [thin(0, (0.01, -0.004)), thin(2, (0.01, -0.008))])
    e = across["evidence"][CHEAP]
    assert e["thin_gain_per_stream"] == {"ads": 0.01, "music": -0.006} and not e["thin_holds"]
    assert not e["passes"] and across["chosen"] == D
    assert across["thin"] == [{"seed": 0, "events_per_span": 1000}, {"seed": 2, "events_per_span": 1000}]
    # -0.004 in the mean is within it.
    across = learning.choose_across_seeds(sels, [thin(0, (0.0, -0.002)), thin(2, (0.0, -0.006))])
    assert across["evidence"][CHEAP]["thin_holds"] and across["chosen"] == CHEAP
    # A row the thin runs lack is not eligible at all.
    without = {**_selection(0, {}), "events_per_span": 1000}
    assert learning.choose_across_seeds(sels, [without])["chosen"] == D

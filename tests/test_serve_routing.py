"""`driftline serve` routes between champion and challenger, and explores its rankings (#22).

The real server process on a home whose ML Metadata is a real SQLite store: a
champion pushed and recorded as TFX records it (tests/mlmd_history.py), blessed
challengers beside it, and the comparisons written by
`components/online_evaluator/record.py` while the server runs, as the
controller or `driftline promote`/`retire` write them. Expectations come from
outside the code under test: P(challenger better) by scipy's quadrature of the
two Beta densities, each model's scores from its own `serving_default` on
tf.Examples, the ranking policy's propensities from its definition.
"""
import math
import os
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy import integrate, stats

import serve_helpers
from serve_helpers import SCHEMA, events, ingest_impressions, read_impressions, record_model, running_server

NAME = "driftline"
T0_MS = 1_790_000_000_000
PRIOR = (2.0, 30.0)  # the home's online prior: the server must route by it, not by Beta(1, 1)
EPS = 0.25  # the home's serve.exploration_rate: large, so that a few hundred requests measure it
FEATURES = ("user_id", "ad_id", "ad_category", "device", "hour_of_day", "price")
CONTEXT = ("user_id", "device", "hour_of_day")


def quad_p_better(champion, challenger):
    """P(challenger's rate > champion's) for counts (successes, trials) under PRIOR, by quadrature."""
    a = stats.beta(PRIOR[0] + champion[0], PRIOR[1] + champion[1] - champion[0])
    b = stats.beta(PRIOR[0] + challenger[0], PRIOR[1] + challenger[1] - challenger[0])
    lo, hi = b.ppf(1e-12), b.ppf(1 - 1e-12)
    value, _ = integrate.quad(lambda x: b.pdf(x) * a.cdf(x), lo, hi, limit=500, points=[b.mean()])
    return value


def scrape(base):
    """{(sample name, frozenset of its labels): value} of the server's /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(base, name, **labels):
    return scrape(base).get((name, frozenset(labels.items())))


def until(predicate, timeout=90, what="the condition"):
    return serve_helpers.until(predicate, timeout, what)


def logged(home, request_ids, per_request):
    """The impressions of `request_ids`, once all of them are in the log: {request id: [line, ...]}."""
    wanted = set(request_ids)

    def ready():
        rows = {}
        for e in read_impressions(home):
            if e["request_id"] in wanted:
                rows.setdefault(e["request_id"], []).append(e)
        return rows if len(rows) == len(wanted) and all(len(v) == per_request for v in rows.values()) else None

    return until(ready, what=f"{len(wanted)} requests' impressions in the log")


@pytest.fixture(scope="module")
def routing_home(serve_models, tmp_path_factory):
    from components.blessing_pusher import serving
    from components.online_evaluator.config import OnlineEvalConfig
    from mlmd_history import History

    from pipelines.config import ServeConfig, default_config
    from pipelines.config_file import dump_config, home_config_path

    home = str(tmp_path_factory.mktemp("serve_routing_home"))
    config = default_config(home).replace(
        serve=ServeConfig(exploration_rate=EPS, comparison_poll_seconds=0.3),
        online=OnlineEvalConfig(prior_alpha=PRIOR[0], prior_beta=PRIOR[1]))
    with open(home_config_path(home), "w") as f:
        f.write(dump_config(config))
    history = History(home)
    assert serving.push(serve_models[1], history.serving_dir).version == 1
    champion = record_model(history, newest_event_ms=T0_MS, push_version=1, pushed_at_ms=T0_MS + 60_000,
                            saved_model=serve_models[1])
    challenger = record_model(history, newest_event_ms=T0_MS + 1, saved_model=serve_models[2])
    other = record_model(history, newest_event_ms=T0_MS + 2, saved_model=serve_models[3])
    # Blessed, but its payload is gone (no SavedModel under its uri): it cannot load.
    broken = record_model(history, newest_event_ms=T0_MS + 3)
    return {"home": home, "history": history, "champion": champion, "challenger": challenger, "other": other,
            "broken": broken}


@pytest.fixture(scope="module")
def server(routing_home):
    with running_server(routing_home["home"], "--poll-seconds", "0.2") as s:
        yield s


@pytest.fixture(scope="module")
def sample():
    return [{k: e[k] for k in FEATURES} for e in events(8, seed=13)]


@pytest.fixture(scope="module")
def expected(serve_models, sample):
    from test_serve_e2e import _expected

    return {seed: _expected(serve_models[seed], sample) for seed in (1, 2, 3)}


def decide(home_info, action, champion_counts=(0, 0), challenger_counts=(0, 0), challenger=None):
    """Records one OnlineDecision, as the controller or `driftline promote`/`retire` records it."""
    from components.online_evaluator import record
    from components.online_evaluator.decision import Comparison, Counts, DecisionRule

    comparison = Comparison(home_info["champion"], challenger or home_info["challenger"], Counts(*champion_counts),
                            Counts(*challenger_counts))
    return record.record(home_info["history"].store, NAME, comparison, action, "test", f"the test's {action}",
                         DecisionRule())


def routed_to(base, challenger_id, p):
    def ready():
        m = scrape(base)
        better = m.get(("driftline_serve_challenger_p_better", frozenset()))
        return (m.get(("driftline_serve_challenger_model_id", frozenset())) == challenger_id and
                better is not None and abs(better - p) < 1e-6)
    until(ready, what=f"routing to challenger {challenger_id} at P(better) {p:.4f}")


def predict_many(base, sample, count, prefix):
    with httpx.Client(base_url=base, timeout=30) as client:
        out = {}
        for i in range(count):
            r = client.post(f"/v1/models/{NAME}:predict", json={"instances": sample},
                            headers={"X-Request-Id": f"{prefix}-{i}"})
            assert r.status_code == 200, r.text
            out[f"{prefix}-{i}"] = r.json()
        return out


def test_no_comparison_serves_the_champion_alone_with_propensity_one(server, routing_home, sample, expected):
    responses = predict_many(server["base"], sample, 5, "none")
    for r in responses.values():
        assert "arm" not in r and "challenger_model_id" not in r  # the response is today's
        np.testing.assert_allclose(r["predictions"], expected[1], rtol=1e-6)
    for rows in logged(server["home"], responses, len(sample)).values():
        for e in rows:
            assert e["arm"] == "champion" and e["arm_propensity"] == 1.0 and "challenger_model_id" not in e
            # Predict requests carry no ranking-policy fields.
            assert "propensity" not in e and "explored" not in e and "greedy_position" not in e
    m = scrape(server["base"])
    assert m[("driftline_serve_challenger_model_id", frozenset())] == 0
    assert m[("driftline_serve_arm_propensity", frozenset({("arm", "champion")}))] == 1.0


def test_thompson_sampling_splits_traffic_by_the_posteriors_in_ml_metadata(server, routing_home, sample, expected):
    """Counts whose P(better) is 0.5-ish give both arms, in that proportion; each request is scored whole by its
    arm's model; each line logs that arm's exact propensity (scipy's quadrature under the home's prior)."""
    base, home = server["base"], server["home"]
    champion_counts, challenger_counts = (40, 1000), (43, 1000)
    p = quad_p_better(champion_counts, challenger_counts)
    assert 0.55 < p < 0.75
    decide(routing_home, "start")
    decide(routing_home, "continue", champion_counts, challenger_counts)
    routed_to(base, routing_home["challenger"], p)
    n = 400
    responses = predict_many(base, sample, n, "split")
    arms = {rid: r["arm"] for rid, r in responses.items()}
    for r in responses.values():
        np.testing.assert_allclose(r["predictions"], expected[2 if r["arm"] == "challenger" else 1], rtol=1e-6)
        assert r["challenger_model_id"] == routing_home["challenger"]
        assert r["model_id"] == routing_home["challenger" if r["arm"] == "challenger" else "champion"]
        assert math.isclose(r["arm_propensity"], p if r["arm"] == "challenger" else 1 - p, rel_tol=1e-6)
    to_challenger = sum(a == "challenger" for a in arms.values())
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(to_challenger / n - p) < 5 * sd, (to_challenger, n, p)
    for rid, rows in logged(home, responses, len(sample)).items():
        for e in rows:
            assert e["arm"] == arms[rid]
            assert math.isclose(e["arm_propensity"], p if e["arm"] == "challenger" else 1 - p, rel_tol=1e-6)
            assert e["challenger_model_id"] == routing_home["challenger"]
            assert e["model_id"] == routing_home["challenger" if e["arm"] == "challenger" else "champion"]
            assert e["model_version"] == 1  # the serving version: the champion's
    m = scrape(base)
    assert m[("driftline_serve_arm_requests_total", frozenset({("arm", "challenger")}))] >= to_challenger
    assert math.isclose(m[("driftline_serve_arm_propensity", frozenset({("arm", "challenger")}))], p, rel_tol=1e-6)
    assert m[("driftline_serve_challenger_loaded", frozenset())] == 1


@pytest.mark.parametrize("better", [True, False])
def test_overwhelming_evidence_sends_nearly_all_traffic_to_one_arm(server, routing_home, sample, better):
    base = server["base"]
    strong, weak = (120, 1000), (40, 1000)
    champion_counts, challenger_counts = (weak, strong) if better else (strong, weak)
    p = quad_p_better(champion_counts, challenger_counts)
    assert (p > 1 - 1e-9) if better else (p < 1e-9)
    decide(routing_home, "continue", champion_counts, challenger_counts)
    routed_to(base, routing_home["challenger"], p)
    responses = predict_many(base, sample, 60, f"strong-{better}")
    want = "challenger" if better else "champion"
    # P(any of 60 requests goes the other way) < 1e-7.
    assert all(r["arm"] == want for r in responses.values())
    for rows in logged(server["home"], responses, len(sample)).values():
        assert all(math.isclose(e["arm_propensity"], max(p, 1 - p), rel_tol=1e-9) for e in rows)


def test_comparisons_opened_replaced_and_ended_while_serving_change_routing_without_a_failed_request(
        server, routing_home, sample, expected):
    """A client predicts without pause while ML Metadata records a retirement, a new comparison, a replacement of
    its challenger and a promotion's end: every request succeeds, and routing follows each decision."""
    base = server["base"]
    responses, failures = [], []
    stop = threading.Event()

    def client_loop():
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": sample})
                    (responses.append(r.json()) if r.status_code == 200 else failures.append((r.status_code, r.text)))
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    def seen(predicate, what):
        start = len(responses)
        until(lambda: any(predicate(r) for r in responses[start:]) or failures, what=what)
        assert not failures, failures[:3]

    thread = threading.Thread(target=client_loop)
    thread.start()
    try:
        decide(routing_home, "retire", (40, 1000), (43, 1000))
        seen(lambda r: "arm" not in r, "the champion alone after the retirement")
        even = (0, 0)
        decide(routing_home, "start", even, even, challenger=routing_home["other"])
        seen(lambda r: r.get("model_id") == routing_home["other"], "requests scored by the new challenger")
        decide(routing_home, "replace", even, even)
        seen(lambda r: r.get("model_id") == routing_home["challenger"], "requests scored by the replacing challenger")
        decide(routing_home, "promote", (40, 1000), (60, 1000))
        seen(lambda r: "arm" not in r, "the champion alone after the comparison ended")
        time.sleep(1.0)  # a few more requests with no comparison open
    finally:
        stop.set()
        thread.join()
    assert failures == []
    # Each response was scored whole by the model it names; after the end, by the champion alone.
    by_model = {routing_home["champion"]: 1, routing_home["challenger"]: 2, routing_home["other"]: 3}
    for r in responses:
        np.testing.assert_allclose(r["predictions"], expected[by_model.get(r.get("model_id"), 1)], rtol=1e-6)
    assert "arm" not in responses[-1]
    assert metric(base, "driftline_serve_challenger_model_id") == 0


def test_a_challenger_that_does_not_load_leaves_every_request_to_the_champion(server, routing_home, sample,
                                                                               expected):
    base = server["base"]
    errors = metric(base, "driftline_serve_challenger_load_errors_total")
    decide(routing_home, "start", challenger=routing_home["broken"])
    until(lambda: metric(base, "driftline_serve_challenger_model_id") == routing_home["broken"] and
          metric(base, "driftline_serve_challenger_load_errors_total") == errors + 1,
          what="the broken challenger's load error")
    responses = predict_many(base, sample, 20, "broken")
    for r in responses.values():
        assert r["arm"] == "champion" and r["arm_propensity"] == 1.0
        assert r["challenger_model_id"] == routing_home["broken"]
        np.testing.assert_allclose(r["predictions"], expected[1], rtol=1e-6)
    # Still drawn (P(better) = 0.5: about half), logged as fallbacks: the error-rate guardrail's evidence.
    fallbacks = {rid: {e["challenger_fallback"] for e in lines}
                 for rid, lines in logged(server["home"], responses, len(sample)).items()}
    assert all(len(v) == 1 for v in fallbacks.values())
    assert 0 < sum(v == {1} for v in fallbacks.values()) < 20  # P(all 20 alike) = 2e-6
    assert metric(base, "driftline_serve_challenger_loaded") == 0
    assert metric(base, "driftline_serve_arm_propensity", arm="challenger") == 0
    decide(routing_home, "retire")
    until(lambda: metric(base, "driftline_serve_challenger_model_id") == 0, what="the end of the comparison")


def test_exploration_frequency_and_logged_propensities(server, routing_home, sample, expected):
    """Rank requests with serve.exploration_rate = EPS: about EPS of them are served in a random order, the others
    in the score order; each line's greedy position is its place in the score order and its propensity
    (1 - EPS) * [position == greedy position] + EPS / N; the explored orders are uniform."""
    base, home = server["base"], server["home"]
    until(lambda: metric(base, "driftline_serve_challenger_model_id") == 0, what="no comparison open")
    context = {k: sample[0][k] for k in CONTEXT}
    candidates = [{k: e[k] for k in FEATURES if k not in CONTEXT} for e in sample[:5]]
    n_items = len(candidates)
    before = metric(base, "driftline_serve_explored_requests_total")
    count = 600
    responses = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(count):
            r = client.post(f"/v1/models/{NAME}:rank", json={"context": context, "candidates": candidates},
                            headers={"X-Request-Id": f"explore-{i}"})
            assert r.status_code == 200, r.text
            responses[f"explore-{i}"] = r.json()
    explored = [rid for rid, r in responses.items() if r["explored"]]
    sd = math.sqrt(EPS * (1 - EPS) / count)
    assert abs(len(explored) / count - EPS) < 5 * sd, len(explored)
    assert metric(base, "driftline_serve_explored_requests_total") - before == len(explored)
    greedy = list(np.argsort(-np.asarray(next(iter(responses.values()))["scores"]), kind="stable"))
    top_at = []  # the best-scored candidate's served place, in each explored request
    for rid, r in responses.items():
        assert sorted(r["order"]) == list(range(n_items))
        if not r["explored"]:
            assert r["order"] == greedy
        else:
            top_at.append(r["order"].index(greedy[0]))
    # A uniformly random permutation puts the top item at each place equally often (chi-square, 5 places).
    counts = np.bincount(top_at, minlength=n_items)
    assert stats.chisquare(counts).pvalue > 1e-4, counts
    for rid, rows in logged(home, responses, n_items).items():
        r = responses[rid]
        for e in rows:
            index = r["impression_ids"].index(e[SCHEMA.id_field])
            assert e["position"] == r["order"].index(index)
            assert e["greedy_position"] == greedy.index(index)
            assert e["explored"] == int(r["explored"])
            want = (1 - EPS) * (e["position"] == e["greedy_position"]) + EPS / n_items
            assert math.isclose(e["propensity"], want, rel_tol=1e-12)
            assert e["arm"] == "champion" and e["arm_propensity"] == 1.0


def test_streaming_example_gen_ingests_the_routed_and_explored_log(server, routing_home, sample, tmp_path):
    """The whole log this module's server wrote (both arms, explored and greedy rank requests, predict requests)
    goes through StreamingExampleGen's ingest path with `impressions_schema`: no dead letter, and every new
    field comes out in the tf.Examples as it was logged."""
    import tensorflow as tf

    base, home = server["base"], server["home"]
    decide(routing_home, "start", (40, 1000), (43, 1000))
    routed_to(base, routing_home["challenger"], quad_p_better((40, 1000), (43, 1000)))
    context = {k: sample[0][k] for k in CONTEXT}
    candidates = [{k: e[k] for k in FEATURES if k not in CONTEXT} for e in sample[:4]]
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(30):
            assert client.post(f"/v1/models/{NAME}:rank", json={"context": context, "candidates": candidates},
                               headers={"X-Request-Id": f"ingest-{i}"}).status_code == 200
        span_ms = 2000
        time.sleep(2 * span_ms / 1000 + 0.1)  # a request in a later span closes every span before it
        assert client.post(f"/v1/models/{NAME}:predict", json={"instances": sample[:1]},
                           headers={"X-Request-Id": "ingest-closer"}).status_code == 200
    until(lambda: any(e["request_id"] == "ingest-closer" for e in read_impressions(home)), what="the closer's line")
    lines = {e[SCHEMA.id_field]: e for e in read_impressions(home) if e["request_id"] != "ingest-closer"}
    assert {e.get("arm") for e in lines.values()} == {"champion", "challenger"}
    assert {e.get("explored") for e in lines.values()} == {None, 0, 1}  # predict lines have none

    raw, dead = ingest_impressions(home, tmp_path, span_ms)
    examples = [tf.train.Example.FromString(r) for r in raw]
    assert dead == []

    def feature(example, name):
        f = example.features.feature[name]
        values = list(f.bytes_list.value) or list(f.int64_list.value) or list(f.float_list.value)
        return values[0] if values else None

    ids = [feature(x, SCHEMA.id_field).decode() for x in examples]
    assert sorted(ids) == sorted(lines)
    new_fields = ("arm", "arm_propensity", "challenger_model_id", "model_id", "greedy_position", "explored",
                  "propensity")
    for x, impression_id in zip(examples, ids):
        entry = lines[impression_id]
        for name in new_fields:
            value = feature(x, name)
            if name not in entry:
                assert value is None, (name, entry)
            elif name == "arm":
                assert value.decode() == entry[name]
            elif isinstance(entry[name], float):
                assert math.isclose(value, entry[name], rel_tol=1e-6)  # float32 in the example
            else:
                assert value == entry[name]
    decide(routing_home, "retire", (40, 1000), (43, 1000))


def export_picky_challenger(like: str, path: str, max_price: float = 100.0) -> str:
    """A real SavedModel with `like`'s raw signature (the same inputs) that scores 0.5, except that it fails on
    any price over `max_price`: it loads and passes the warm-up (zeros), then fails on the request that sends
    one (with `max_price` 0, on every real request)."""
    import tensorflow as tf

    from pipelines.serve.signatures import RAW_SIGNATURE

    specs = tf.saved_model.load(like).signatures[RAW_SIGNATURE].structured_input_signature[1]
    names = sorted(specs)

    class Picky(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names])
        def serve(self, *columns):
            price = tf.cast(columns[names.index("price")], tf.float32)
            with tf.control_dependencies([tf.debugging.assert_less_equal(price, float(max_price),
                                                                          message=f"price over {max_price}")]):
                return {"probability": tf.fill(tf.shape(price), 0.5)}

    module = Picky()
    tf.saved_model.save(module, path, signatures={RAW_SIGNATURE: module.serve})
    return path


def test_a_challenger_that_fails_to_score_fails_no_request(server, routing_home, serve_models, sample, expected,
                                                           tmp_path_factory):
    """The challenger scores until a request it cannot score: that request gets the champion's scores (200),
    counted, and every request after it is the champion's at propensity 1 while the comparison stays open; the
    requests drawn for it are logged as fallbacks, each with its model call's latency."""
    base = server["base"]
    picky = export_picky_challenger(serve_models[1], str(tmp_path_factory.mktemp("picky") / "model"))
    model_id = record_model(routing_home["history"], newest_event_ms=T0_MS + 4, saved_model=picky)
    strong, weak = (120, 1000), (40, 1000)
    decide(routing_home, "start", weak, strong, challenger=model_id)
    routed_to(base, model_id, quad_p_better(weak, strong))
    assert all(r["arm"] == "challenger" and r["predictions"] == [0.5] * len(sample)
               for r in predict_many(base, sample, 5, "picky-ok").values())
    errors = metric(base, "driftline_serve_challenger_score_errors_total")
    pricey = [{**e, "price": 1000.0} for e in sample]
    [r] = predict_many(base, pricey, 1, "picky-fails").values()
    assert r["arm"] == "champion" and r["arm_propensity"] == 1.0 and r["challenger_model_id"] == model_id
    from test_serve_e2e import _expected

    np.testing.assert_allclose(r["predictions"], _expected(serve_models[1], pricey), rtol=1e-6)
    assert metric(base, "driftline_serve_challenger_score_errors_total") == errors + 1
    for r in predict_many(base, sample, 10, "picky-after").values():
        assert r["arm"] == "champion" and r["arm_propensity"] == 1.0
        np.testing.assert_allclose(r["predictions"], expected[1], rtol=1e-6)
    assert metric(base, "driftline_serve_challenger_loaded") == 0
    # The log keeps the evidence of the error-rate and latency guardrails (online_evaluator/guardrails.py): the
    # failed request, and every later one the draw gave the challenger (P(better) ~ 1: all), is a fallback.
    rows = logged(server["home"], [f"picky-ok-{i}" for i in range(5)] + ["picky-fails-0"] +
                  [f"picky-after-{i}" for i in range(10)], len(sample))
    for rid, lines in rows.items():
        ok = rid.startswith("picky-ok")
        for e in lines:
            assert (e["arm"], e["challenger_fallback"]) == (("challenger", 0) if ok else ("champion", 1)), e
            assert e["challenger_model_id"] == model_id
            assert isinstance(e["arm_latency_ms"], float) and 0 < e["arm_latency_ms"] < 60_000
    decide(routing_home, "retire", weak, strong, challenger=model_id)
    until(lambda: metric(base, "driftline_serve_challenger_model_id") == 0, what="the end of the comparison")


def test_the_exploration_rate_is_checked_naming_the_fix(tmp_path, capsys):
    from components.config_base import ConfigError
    from pipelines import cli
    from pipelines.config import ServeConfig

    for bad in (1.0, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ConfigError, match=r"serve.exploration_rate must be a probability in \[0, 1\).*0.02"):
            ServeConfig(exploration_rate=bad).validate()
    ServeConfig(exploration_rate=0).validate()
    assert cli.main(["serve", "--home", str(tmp_path), "--exploration-rate", "1.5"]) == 2
    assert "--exploration-rate must be a probability in [0, 1)" in capsys.readouterr().err


def test_a_server_started_during_a_comparison_routes_by_the_evidence_in_ml_metadata(server, routing_home, sample):
    """A restart loses no evidence: the server keeps none. A fresh server process on the same home (SIGKILL of
    the old one would change nothing it reads) routes by the comparison's recorded counts from its first poll."""
    champion_counts, challenger_counts = (40, 1000), (36, 1000)
    p = quad_p_better(champion_counts, challenger_counts)
    assert 0.1 < p < 0.4
    decide(routing_home, "start")
    decide(routing_home, "continue", champion_counts, challenger_counts)  # the evidence so far
    with running_server(routing_home["home"], "--poll-seconds", "0.2") as fresh:
        routed_to(fresh["base"], routing_home["challenger"], p)
        responses = predict_many(fresh["base"], sample, 200, "restarted")
    to_challenger = sum(r["arm"] == "challenger" for r in responses.values())
    assert abs(to_challenger / 200 - p) < 5 * math.sqrt(p * (1 - p) / 200), to_challenger
    assert all(math.isclose(r["arm_propensity"], p if r["arm"] == "challenger" else 1 - p, rel_tol=1e-6)
               for r in responses.values())
    decide(routing_home, "retire", champion_counts, challenger_counts)

"""The LatencyValidator's load test as plain functions; nothing here imports TFX.

What is measured, and how:

* **Requests** are real: serialized `tf.Example`s of the newest span's eval
  split, with the label removed (a serving request carries none). A request
  is `candidates_per_request` of them, cut round-robin from the split, so a
  split smaller than a request repeats examples within it.
* **Replay**: for each batch size `b`, `concurrency` client threads share one
  loaded SavedModel and, for a fixed time, each takes the next request and
  scores it in calls of `b` candidates through the `serving_default`
  signature, one call after another (as one serving worker would; a fan-out
  of the calls over many cores would cut latency at small `b`, not the CPU
  spent). A request's latency runs from its first call to the last call's
  output as numpy. Requests are converted to string tensors before the clock
  starts: the network, gRPC and request decoding of a real server are not in
  these figures (Caliper found them to matter; they are not the model's).
* **Figures** per batch size: p50/p95/p99/max request latency over every
  request of every client, requests/s and candidates/s over the wall time
  of the run.
* **Transform share**: the serving signature parses the examples and applies
  the transform graph inside one call, which cannot be timed from outside.
  So the stages are timed separately, single-threaded, on one request in
  one call: parsing alone, parsing plus the cycle's transform graph (the
  `TransformGraph` artifact's `transform_features_layer()`, which is what
  the trainer embeds in the serving model), and the whole signature, each
  as the fastest of several interleaved calls (load elsewhere on the
  machine only ever adds time, so the fastest call is the steadiest
  measure of a stage's own cost). The shares are differences and ratios of
  those times: estimates, as the whole signature can overlap or fuse what
  the stages time apart.
* **Verdict**: the p99 at the batch size with the lowest p99, against the
  SLO. Any failed call refuses the model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from components.latency_validator.config import LatencyConfig

SIGNATURE_NAME = "serving_default"
PROFILE_FILE = "latency_profile.json"

ScoreFn = Callable[[Any], Any]


class LatencyTestError(ValueError):
    """The load test cannot run as asked (no eval examples, a model without the serving contract)."""


# -- records ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchSizeResult:
    """One batch size's replay: request latency percentiles and throughput."""

    batch_size: int
    calls_per_request: int
    requests: int
    errors: int
    wall_seconds: float
    p50_ms: Optional[float]
    p95_ms: Optional[float]
    p99_ms: Optional[float]
    max_ms: Optional[float]
    mean_ms: Optional[float]
    requests_per_second: float
    candidates_per_second: float
    first_error: str = ""


@dataclasses.dataclass(frozen=True)
class StageTimes:
    """Fastest single-threaded calls on one request: parsing, parsing + transform graph, the whole signature.

    The shares split the whole signature's time three ways: parsing the
    tf.Examples, the transform graph, and the model's own layers (each the
    difference of two such times, floored at 0).
    """

    parse_ms: float
    parse_transform_ms: float  # parsing and the transform graph, as the serving signature does them
    serving_ms: float  # the whole serving signature
    repeats: int

    def _share(self, ms: float) -> float:
        return min(1.0, max(0.0, ms) / self.serving_ms) if self.serving_ms > 0 else 0.0

    @property
    def parse_share(self) -> float:
        return self._share(self.parse_ms)

    @property
    def transform_share(self) -> float:
        """The transform graph's share, parsing excluded."""
        return self._share(self.parse_transform_ms - self.parse_ms)

    @property
    def model_share(self) -> float:
        return self._share(self.serving_ms - self.parse_transform_ms)

    def to_dict(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "parse_share": self.parse_share,
                "transform_share": self.transform_share, "model_share": self.model_share}


@dataclasses.dataclass(frozen=True)
class LatencyProfile:
    """Everything one load test measured."""

    candidates_per_request: int
    concurrency: int
    seconds_per_batch_size: float
    distinct_requests: int
    eval_examples: int
    by_batch_size: List[BatchSizeResult]
    stages: Optional[StageTimes] = None

    def usable(self) -> List[BatchSizeResult]:
        return [r for r in self.by_batch_size if r.errors == 0 and r.requests > 0]

    @property
    def best(self) -> Optional[BatchSizeResult]:
        """The batch size with the lowest p99 (ties: the larger batch), among runs without errors."""
        usable = self.usable()
        return min(usable, key=lambda r: (r.p99_ms, -r.batch_size)) if usable else None

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = self.stages.to_dict() if self.stages else None
        d["best_batch_size"] = self.best.batch_size if self.best else None
        return d


@dataclasses.dataclass(frozen=True)
class LatencyVerdict:
    blessed: bool
    reason: str
    slo_p99_ms: float
    result: Optional[BatchSizeResult] = None  # the batch size the verdict is about


# -- requests --------------------------------------------------------------------------------


def compression_of(path: str) -> str:
    return "GZIP" if path.endswith(".gz") else ""


def read_serialized_examples(file_pattern: str, limit: Optional[int] = None) -> List[bytes]:
    """Serialized records of every file matching `file_pattern` (gzipped when named *.gz), in file order."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(file_pattern))
    records: List[bytes] = []
    for path in files:
        dataset = tf.data.TFRecordDataset(path, compression_type=compression_of(path))
        if limit is not None:
            dataset = dataset.take(limit - len(records))
        # In batches: one eager step per record cost 0.1 ms, a second for 8,000 records.
        for batch in dataset.batch(_READ_BATCH):
            records.extend(batch.numpy().tolist())
        if limit is not None and len(records) >= limit:
            break
    return records


_READ_BATCH = 4096


def drop_features(serialized: Sequence[bytes], names: Sequence[str]) -> List[bytes]:
    """The examples without the named features (the label: a serving request has none)."""
    import tensorflow as tf

    if not names:
        return list(serialized)
    out = []
    for record in serialized:
        example = tf.train.Example.FromString(record)
        for name in names:
            if name in example.features.feature:
                del example.features.feature[name]
        out.append(example.SerializeToString())
    return out


def build_requests(examples: Sequence[bytes], candidates: int, count: int) -> List[List[bytes]]:
    """`count` requests of `candidates` examples each, cut round-robin from `examples`.

    Request i starts `len(examples) // count` examples after request i-1, so
    the requests differ wherever the examples allow; one that runs past the
    end wraps around (a small split repeats examples within a request).
    """
    if not examples:
        raise LatencyTestError("no eval examples to build requests from: the newest span's eval split is empty")
    if candidates < 1 or count < 1:
        raise LatencyTestError(f"a request needs >= 1 candidate and there must be >= 1 request "
                               f"(got candidates={candidates}, count={count})")
    n = len(examples)
    stride = max(1, n // count)
    return [[examples[(i * stride + j) % n] for j in range(candidates)] for i in range(count)]


def chunk_request(request: Sequence[bytes], batch_size: int) -> List[Any]:
    """A request as string tensors of at most `batch_size` candidates: the calls that score it."""
    import tensorflow as tf

    return [tf.constant(list(request[i:i + batch_size]), dtype=tf.string)
            for i in range(0, len(request), batch_size)]


# -- the model -------------------------------------------------------------------------------


def load_serving_fn(saved_model_dir: str, signature_name: str = SIGNATURE_NAME) -> ScoreFn:
    """`signature_name` of the SavedModel as `fn(serialized_examples) -> outputs`.

    The trainer's contract: one string input of serialized tf.Examples.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)
    signatures = dict(loaded.signatures)
    if signature_name not in signatures:
        raise LatencyTestError(f"SavedModel {saved_model_dir} has no signature {signature_name!r} "
                               f"(signatures: {sorted(signatures)})")
    signature = signatures[signature_name]
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1 or next(iter(inputs.values())).dtype != tf.string:
        raise LatencyTestError(
            f"signature {signature_name!r} of {saved_model_dir} takes {inputs}; the load test replays "
            "serialized tf.Examples and needs exactly one string input")
    key = next(iter(inputs))

    def score(batch):
        return signature(**{key: batch})

    score.loaded = loaded  # the signature lives only as long as the loaded object
    return score


def materialize(outputs: Any) -> None:
    """Copies every output to numpy, as a server does to answer (and so the work is surely done)."""
    import tensorflow as tf

    for value in tf.nest.flatten(outputs):
        if hasattr(value, "numpy"):
            value.numpy()


def transform_stage_fns(transform_graph_dir: str, label_key: Optional[str]) -> Dict[str, ScoreFn]:
    """{"parse": parsing alone, "transform": parsing + the transform graph}, as the serving signature does them.

    Built from the `TransformGraph` artifact the trainer embedded: the raw
    feature spec without the label, then `transform_features_layer()` (see
    pipelines/ads_model.py `export_serving_model`).
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    tft_output = tft.TFTransformOutput(transform_graph_dir)
    raw_spec = dict(tft_output.raw_feature_spec())
    if label_key:
        raw_spec.pop(label_key, None)
    layer = tft_output.transform_features_layer()
    signature = [tf.TensorSpec([None], tf.string, name="examples")]

    @tf.function(input_signature=signature)
    def parse(serialized):
        return tf.io.parse_example(serialized, raw_spec)

    @tf.function(input_signature=signature)
    def transform(serialized):
        return layer(tf.io.parse_example(serialized, raw_spec))

    return {"parse": parse, "transform": transform}


# -- measuring -------------------------------------------------------------------------------


def percentiles_ms(latencies_ms: Sequence[float]) -> Dict[str, Optional[float]]:
    """p50/p95/p99 (linear interpolation between order statistics), max and mean; None when empty."""
    if len(latencies_ms) == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "max_ms": float(values.max()),
            "mean_ms": float(values.mean())}


_TF_ERROR_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")


def error_line(e: BaseException) -> str:
    """`Type: the message's first informative line` (TF errors wrap it in lines of graph context)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_TF_ERROR_NOISE)]
    text = (useful or lines or [""])[0].split(" [[")[0]
    return f"{type(e).__name__}: {text[:300]}"


def replay(score: ScoreFn, chunked_requests: Sequence[Sequence[Any]], *, candidates: int, batch_size: int,
           concurrency: int, seconds: float) -> BatchSizeResult:
    """`concurrency` clients scoring requests back to back for `seconds`; every request started is finished.

    Each client starts at its own request and takes every `concurrency`-th
    one after it. A client stops at its first failed call (the error is
    recorded): a model that fails on real requests is refused anyway.
    """
    if not chunked_requests:
        raise LatencyTestError("no requests to replay")
    try:
        for chunk in chunked_requests[0]:  # warm-up, outside the clock: first calls allocate
            materialize(score(chunk))
    except Exception as e:  # noqa: BLE001
        return BatchSizeResult(
            batch_size=batch_size, calls_per_request=len(chunked_requests[0]), requests=0, errors=1,
            wall_seconds=0.0, **percentiles_ms([]), requests_per_second=0.0, candidates_per_second=0.0,
            first_error=error_line(e))
    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: List[str] = []
    barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def client(k: int) -> None:
        barrier.wait()
        i = k
        while time.perf_counter() < deadline[0]:
            request = chunked_requests[i % len(chunked_requests)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                for chunk in request:
                    materialize(score(chunk))
            except Exception as e:  # noqa: BLE001 (any failure of the model is a verdict, not a crash)
                errors[k] += 1
                if not first_error:
                    first_error.append(error_line(e))
                return
            latencies[k].append((time.perf_counter() - t0) * 1000.0)

    threads = [threading.Thread(target=client, args=(k,), name=f"latency-client-{k}", daemon=True)
               for k in range(concurrency)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    pooled = [x for per_client in latencies for x in per_client]
    rps = len(pooled) / wall if wall > 0 else 0.0
    return BatchSizeResult(
        batch_size=batch_size, calls_per_request=len(chunked_requests[0]), requests=len(pooled),
        errors=sum(errors), wall_seconds=wall, **percentiles_ms(pooled), requests_per_second=rps,
        candidates_per_second=rps * candidates, first_error=first_error[0] if first_error else "")


def time_stages(score: ScoreFn, stage_fns: Dict[str, ScoreFn], request: Sequence[bytes], repeats: int,
                max_seconds: Optional[float] = None) -> StageTimes:
    """The fastest single-threaded call of parse, parse + transform, and the whole signature on one request.

    Stops after `repeats` rounds, or earlier once `max_seconds` have passed
    (at least three rounds), so a slow model does not multiply the cost.
    """
    import tensorflow as tf

    batch = tf.constant(list(request), dtype=tf.string)
    stages = {"parse": stage_fns["parse"], "transform": stage_fns["transform"], "serving": score}
    times: Dict[str, List[float]] = {name: [] for name in stages}
    for fn in stages.values():
        fn(batch)  # warm-up: traces and allocates
    # Outputs stay tensors: eager calls on CPU return only when their ops
    # have run, and copying the parsed strings to Python would time numpy,
    # not parsing. Interleaved, so a burst of load elsewhere hits every stage alike.
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats and (rounds < 3 or max_seconds is None or time.perf_counter() - start < max_seconds):
        for name, fn in stages.items():
            t0 = time.perf_counter()
            fn(batch)
            times[name].append((time.perf_counter() - t0) * 1000.0)
        rounds += 1
    fastest = {name: float(min(values)) for name, values in times.items()}
    return StageTimes(parse_ms=fastest["parse"], parse_transform_ms=fastest["transform"],
                      serving_ms=fastest["serving"], repeats=rounds)


def run_profile(score: ScoreFn, examples: Sequence[bytes], config: LatencyConfig,
                stage_fns: Optional[Dict[str, ScoreFn]] = None) -> LatencyProfile:
    """The whole load test: every batch size of `config`, then the stage times (when `stage_fns` are given)."""
    requests = build_requests(examples, config.candidates_per_request, config.distinct_requests)
    results = []
    for batch_size in config.batch_sizes:
        chunked = [chunk_request(r, batch_size) for r in requests]
        results.append(replay(score, chunked, candidates=config.candidates_per_request, batch_size=batch_size,
                              concurrency=config.concurrency, seconds=config.seconds_per_batch_size))
        if results[-1].errors:
            break  # the model is refused; other batch sizes would fail alike
    stages = None
    if stage_fns is not None and all(r.errors == 0 for r in results):
        stages = time_stages(score, stage_fns, requests[0], config.stage_repeats,
                             max_seconds=config.seconds_per_batch_size)
    return LatencyProfile(candidates_per_request=config.candidates_per_request, concurrency=config.concurrency,
                          seconds_per_batch_size=config.seconds_per_batch_size,
                          distinct_requests=config.distinct_requests, eval_examples=len(examples),
                          by_batch_size=results, stages=stages)


# -- the verdict -----------------------------------------------------------------------------


def describe(result: BatchSizeResult, profile: LatencyProfile) -> str:
    text = (f"p50 {result.p50_ms:.1f} / p95 {result.p95_ms:.1f} / p99 {result.p99_ms:.1f} ms for "
            f"{profile.candidates_per_request} candidates (batch size {result.batch_size}, "
            f"{profile.concurrency} client{'s' if profile.concurrency != 1 else ''}, {result.requests} requests), "
            f"{result.requests_per_second:.1f} requests/s")
    if profile.stages is not None:
        st = profile.stages
        text += (f"; time in parsing {st.parse_share:.0%}, transform graph {st.transform_share:.0%}, "
                 f"model {st.model_share:.0%}")
    return text


def decide(profile: LatencyProfile, slo_p99_ms: float) -> LatencyVerdict:
    """Blessed when no call failed and the p99 at the best batch size is within the SLO."""
    failed = [r for r in profile.by_batch_size if r.errors]
    if failed:
        r = failed[0]
        return LatencyVerdict(False, f"not blessed: the serving signature failed on replayed eval requests at "
                                     f"batch size {r.batch_size}: {r.first_error}", slo_p99_ms, r)
    best = profile.best
    if best is None:
        return LatencyVerdict(False, "not blessed: no request completed", slo_p99_ms)
    if best.p99_ms <= slo_p99_ms:
        return LatencyVerdict(True, f"blessed: p99 {best.p99_ms:.1f} ms within the SLO of {slo_p99_ms:g} ms; "
                                    + describe(best, profile), slo_p99_ms, best)
    return LatencyVerdict(False, f"not blessed: p99 {best.p99_ms:.1f} ms above the SLO of {slo_p99_ms:g} ms; "
                                 + describe(best, profile), slo_p99_ms, best)


# -- one call for the executor and the benchmark ---------------------------------------------


def eval_examples(file_pattern: str, label_key: Optional[str], limit: int) -> List[bytes]:
    """Up to `limit` serialized eval examples without the label; LatencyTestError when there are none."""
    examples = read_serialized_examples(file_pattern, limit=limit)
    if not examples:
        raise LatencyTestError(f"no examples in {file_pattern}: the load test replays the newest span's eval "
                               "split, which is empty")
    return drop_features(examples, [label_key] if label_key else [])


def validate_model(saved_model_dir: str, eval_file_pattern: str, config: LatencyConfig,
                   label_key: Optional[str] = None,
                   transform_graph_dir: Optional[str] = None) -> Tuple[Optional[LatencyProfile], LatencyVerdict]:
    """Loads the model, replays eval requests, decides: (LatencyProfile or None, LatencyVerdict).

    A model that cannot be loaded as the serving contract says is refused
    (profile None), as stock InfraValidator refuses one that fails to serve.
    Missing eval data is an error of the pipeline, not of the model: it raises.
    """
    # Enough distinct examples for every request to differ, and no more.
    limit = config.candidates_per_request * config.distinct_requests
    examples = eval_examples(eval_file_pattern, label_key, limit)
    try:
        score = load_serving_fn(saved_model_dir)
    except Exception as e:  # noqa: BLE001
        reason = f"not blessed: the model cannot serve: {error_line(e)}"
        return None, LatencyVerdict(False, reason, config.slo_p99_ms)
    stage_fns = transform_stage_fns(transform_graph_dir, label_key) if transform_graph_dir else None
    profile = run_profile(score, examples, config, stage_fns)
    return profile, decide(profile, config.slo_p99_ms)


def write_profile(directory: str, profile: Optional[LatencyProfile], verdict: LatencyVerdict) -> str:
    """`<directory>/latency_profile.json`: the verdict and the whole profile."""
    import tensorflow as tf

    path = os.path.join(directory, PROFILE_FILE)
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(profile_json(profile, verdict, indent=1))
    return path


def profile_json(profile: Optional[LatencyProfile], verdict: LatencyVerdict, indent: Optional[int] = None) -> str:
    return json.dumps({"blessed": verdict.blessed, "reason": verdict.reason, "slo_p99_ms": verdict.slo_p99_ms,
                       "batch_size": verdict.result.batch_size if verdict.result else None,
                       "profile": profile.to_dict() if profile else None}, indent=indent, sort_keys=True)


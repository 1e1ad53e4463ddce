"""The HTTP API of `driftline serve`: a Starlette app, TF Serving's REST paths.

* `POST /v1/models/<name>:predict`: `{"instances": [event, ...]}` or columnar
  `{"inputs": {field: [value, ...]}}` -> `{"predictions": [score, ...], "model_version": V, ...}`;
* `POST /v1/models/<name>:rank`: `{"context": {...}, "candidates": [{...}, ...]}` (each candidate is
  merged over the context) -> `{"scores": [...], "order": [index, ...], "explored": bool, "model_version": V,
  ...}`, `order` listing the candidates' indices as served: best first, or, with probability
  `serve.exploration_rate`, a uniformly random order (`explored`: true; pipelines/serve/routing.py);
* `GET /v1/models/<name>`: `model_version_status` as TF Serving reports it;
* `GET /healthz`: 200 once a model is loaded, 503 before;
* `GET /metrics`: Prometheus text (pipelines/serve/metrics.py).

Events are raw, as the event schema declares them, and checked before
TensorFlow sees them (pipelines/serve/inputs.py): a bad request gets a 4xx
whose message names the field. Bodies over `max_body_bytes` get a 413 from
their Content-Length alone, or as soon as a chunked body passes the limit; a
body that does not arrive within `body_timeout_s` gets a 408. Anything else
that goes wrong in a request is a 500 for that request only.

While ML Metadata has an open champion/challenger comparison, each request is
scored whole by one arm, drawn by Thompson sampling (pipelines/serve/routing.py),
and the response says which: `arm` ("champion" or "challenger"),
`arm_propensity` (the probability it was drawn), `challenger_model_id`, and
`model_id` (the ML Metadata id of the model that scored it, when known).
`model_version` stays the serving folder's version (the champion's). With no
comparison open none of these four are in the response.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from components.event_schema import EventSchema
from pipelines.serve.impressions import ImpressionLog, Repeated
from pipelines.serve.inputs import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS, BadRequest, RequestChecker
from pipelines.serve.metrics import ServeMetrics
from pipelines.serve.model_store import LoadedModel, ModelStore
from pipelines.serve.routing import CHALLENGER, CHAMPION, Routing, explore_order

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclasses.dataclass
class ServeState:
    """What the app serves from; built by pipelines/serve/server.py (or a test)."""

    model_name: str
    schema: EventSchema
    store: ModelStore
    metrics: ServeMetrics
    impressions: Optional[ImpressionLog] = None
    # The shadow candidate now (lineage_watch.LineageWatch.shadow), None: no shadow scoring.
    shadow: Optional[Callable[[], Any]] = None
    # The open comparison now (routing.ComparisonWatch.routing), None: no routing (no ML Metadata).
    routing: Optional[Callable[[], Optional[Routing]]] = None
    # Told when the challenger fails on a request (the champion then scores it): routing.ComparisonWatch.
    challenger_failed: Optional[Callable[[Routing], None]] = None
    # The served version's Model id in ML Metadata, when known (lineage_watch.LineageWatch.current).
    served_lineage: Optional[Callable[[int], Any]] = None
    # The epsilon of the ranking policy (serve.exploration_rate); 0: the score order always.
    exploration_rate: float = 0.0
    # Draws the arms and the explored orders. Used on the event loop only (numpy Generators are not thread-safe).
    rng: np.random.Generator = dataclasses.field(default_factory=np.random.default_rng)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_items: int = DEFAULT_MAX_ITEMS
    body_timeout_s: float = 10.0
    _checkers: Dict[int, RequestChecker] = dataclasses.field(default_factory=dict)

    def checker(self, model: LoadedModel) -> RequestChecker:
        checker = self._checkers.get(model.version)
        if checker is None:
            checker = RequestChecker(self.schema, list(model.inputs), self.max_items)
            self._checkers = {model.version: checker}  # only the served version's: the dict never grows
        return checker


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest(f"Content-Length {length[:40]!r} is not a number")
        if int(length) > limit:
            raise BadRequest(f"request body of {int(length)} bytes is over the limit of {limit} bytes "
                             "(driftline serve --max-body-bytes)", status=413)

    async def read() -> bytes:
        chunks: List[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"request body is over the limit of {limit} bytes "
                                 "(driftline serve --max-body-bytes)", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise BadRequest(f"the request body did not arrive within {timeout_s:g} s", status=408) from None


def _parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequest("request body is empty: send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None


def create_app(state: ServeState) -> Starlette:
    metrics = state.metrics

    def finish(endpoint: str, started: float, response: Response) -> Response:
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code >= 500:
            metrics.errors.labels(endpoint).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def score(request: Request, model: LoadedModel, columns: Dict[str, List[Any]], n: int,
                    rank: bool) -> Response:
        received_ms = int(time.time() * 1000)
        header_id = request.headers.get("x-request-id")
        if header_id is not None and not _REQUEST_ID.match(header_id):
            raise BadRequest("X-Request-Id: give 1 to 128 characters of letters, digits and ._:-")
        server_id = uuid.uuid4().hex
        request_id = header_id or server_id
        schema = state.schema
        # Impression ids: unique whatever the client sends as its request id.
        impression_ids = [f"{server_id}-{i}" for i in range(n)]
        columns[schema.id_field] = impression_ids
        columns[schema.event_time_field] = [received_ms] * n
        # Read once, like the served model: a new comparison meanwhile does not change this request's.
        routing = state.routing() if state.routing is not None else None
        facts = state.served_lineage(model.version) if state.served_lineage is not None else None
        champion_id = facts.model_id if facts is not None else None
        if routing is not None and champion_id is not None and champion_id == routing.challenger_model_id:
            routing = None  # the challenger was promoted: it is the champion now, whatever ML Metadata says next
        arm, arm_propensity, fallback = routing.draw(state.rng) if routing is not None else (CHAMPION, 1.0, False)
        scores = None
        if arm == CHALLENGER:
            called = time.perf_counter()
            try:
                scores = await run_in_threadpool(routing.model.predict, columns)
                if len(scores) != n:
                    raise ValueError(f"{len(scores)} scores for {n} items")
            except Exception as e:  # the challenger's failure is never the request's: the champion scores it
                log.error("challenger model %s failed on a request, routing no more to it: %s: %s",
                          routing.challenger_model_id, type(e).__name__, e)
                if state.challenger_failed is not None:
                    state.challenger_failed(routing)
                arm, arm_propensity, scores, fallback = CHAMPION, 1.0, None, True
        if scores is None:
            called = time.perf_counter()
            scores = await run_in_threadpool(model.predict, columns)
        # The scoring call's latency, logged for the arm's latency guardrail (online_evaluator/guardrails.py).
        latency_ms = round((time.perf_counter() - called) * 1000.0, 3)
        metrics.arm_requests.labels(arm).inc()
        score_list = scores.tolist()
        served: Dict[str, List[Any]] = {}
        if rank:
            order, positions, greedy, explored, propensity = explore_order(scores, state.exploration_rate, state.rng)
            served = {"greedy_position": greedy, "explored": Repeated(int(explored)), "propensity": propensity}
            if explored:
                metrics.explored.inc()
        else:
            order, positions = None, list(range(n))
        metrics.items.inc(n)
        scorer_id = routing.challenger_model_id if arm == CHALLENGER else champion_id
        routed: Dict[str, Any] = {"arm": arm, "arm_propensity": arm_propensity}
        if routing is not None:
            routed["challenger_model_id"] = routing.challenger_model_id
        if scorer_id is not None:
            routed["model_id"] = scorer_id
        if state.impressions is not None:
            logged = {**routed, "arm_latency_ms": latency_ms}
            if routing is not None:
                logged["challenger_fallback"] = int(fallback)
            # The columns are encoded here (a few C calls) and the lines built and written by the log's
            # writer process, off the request's path; the shadow candidate (read once, like the served
            # model) scores them in the log's thread: this request hands over a reference.
            shadow = state.shadow() if state.shadow is not None else None
            # What every row shares is handed over once (Repeated), not as n copies to encode and send.
            state.impressions.submit({**columns, "request_id": Repeated(request_id),
                                      "model_version": Repeated(model.version), "score": score_list,
                                      "position": positions, **served,
                                      **{k: Repeated(v) for k, v in logged.items()}}, n, shadow=shadow)
        body: Dict[str, Any] = {"model_version": model.version, "request_id": request_id}
        if routing is not None:
            body.update(routed)
        if rank:
            body.update(scores=score_list, order=order, explored=explored)
        else:
            body["predictions"] = score_list
        body["impression_ids"] = impression_ids
        return _json(body)

    async def model_endpoint(request: Request) -> Response:
        started = time.perf_counter()
        spec = request.path_params["spec"]
        name, _, verb = spec.partition(":")
        endpoint = verb or "status"
        if verb not in ("", "predict", "rank") or (verb == "" and request.method != "GET") or \
                (verb != "" and request.method != "POST"):
            endpoint = "unknown"
        try:
            if endpoint == "unknown":
                raise BadRequest(f"no such endpoint: {request.method} {request.url.path}; use GET "
                                 f"/v1/models/{state.model_name}, POST /v1/models/{state.model_name}:predict or "
                                 f":rank", status=404)
            if name != state.model_name:
                raise BadRequest(f"no model named {name[:80]!r}; this server serves {state.model_name!r}",
                                 status=404)
            model = state.store.current  # read once: a swap meanwhile does not change this request's model
            if endpoint == "status":
                return finish(endpoint, started, _json(_version_status(state.store, model)))
            body = _parse_json(await _read_body(request, state.max_body_bytes, state.body_timeout_s))
            if model is None:
                raise BadRequest("no model loaded yet: the serving folder has no servable version", status=503)
            checker = state.checker(model)
            columns, n = checker.rank_body(body) if endpoint == "rank" else checker.predict_body(body)
            return finish(endpoint, started, await score(request, model, columns, n, rank=endpoint == "rank"))
        except BadRequest as e:
            return finish(endpoint, started, _json({"error": str(e)}, e.status))
        except ClientDisconnect:
            return finish(endpoint, started, _json({"error": "client disconnected"}, 400))
        except Exception as e:  # the server's fault, this request's only
            log.exception("%s %s failed", request.method, request.url.path)
            return finish(endpoint, started, _json({"error": f"internal error: {type(e).__name__}: {e}"}, 500))

    async def healthz(request: Request) -> Response:
        model = state.store.current
        if model is None:
            return _json({"status": "loading", "error": state.store.last_error}, 503)
        return _json({"status": "ok", "model_version": model.version})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.store.start()
        try:
            yield
        finally:
            state.store.stop()
            if state.impressions is not None:
                await run_in_threadpool(state.impressions.close)

    return Starlette(routes=[Route("/v1/models/{spec}", model_endpoint, methods=["GET", "POST"]),
                             Route("/healthz", healthz, methods=["GET"]),
                             Route("/metrics", metrics_endpoint, methods=["GET"])],
                     lifespan=lifespan)


def _version_status(store: ModelStore, model: Optional[LoadedModel]) -> Dict[str, Any]:
    """TF Serving's GetModelStatus answer: the served version AVAILABLE, a newer one that failed END with why."""
    statuses = []
    if model is not None:
        statuses.append({"version": str(model.version), "state": "AVAILABLE",
                         "status": {"error_code": "OK", "error_message": ""}})
    for version in sorted(store.failed_versions(), reverse=True):
        if model is None or version > model.version:
            statuses.append({"version": str(version), "state": "END",
                             "status": {"error_code": "UNKNOWN", "error_message": store.failed_versions()[version]}})
    return {"model_version_status": statuses}

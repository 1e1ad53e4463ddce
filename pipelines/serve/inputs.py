"""Request bodies, checked against the event schema before anything reaches TensorFlow.

A request carries raw events as the event schema declares them (the fields a
producer writes). Every field the served model takes must be there with its
declared type; the error names the item and the field, and becomes a 400.
Extra keys are ignored, as ingestion ignores them. The id and event-time
fields are the server's: each scored item gets its impression id as its id and
the request's arrival time as its event time, so what the model saw is exactly
what the impressions log holds.

Checks run a column at a time: a ranking call's 1,000 candidates are checked
with a few C-level passes per field (types, lengths, ranges) instead of a
Python loop per value; only a column that fails them is walked item by item,
to name the first bad item with the schema's own message.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from components.event_schema import EventSchema, InvalidEvent, _coerce

# A JSON body larger than this is refused before it is read (configurable: driftline serve --max-body-bytes).
DEFAULT_MAX_BODY_BYTES = 10 << 20
# Items in one request: far above a ranking call's 1,000 candidates, far below what would stall the server.
DEFAULT_MAX_ITEMS = 10_000

_INT64_LIMIT = 2 ** 63
_FLOAT32_MAX = 3.4028234663852886e38
_MISSING = object()

Columns = Dict[str, List[Any]]


class BadRequest(ValueError):
    """The request is malformed; the message names what to fix. Answered with `status`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class RequestChecker:
    """Turns request bodies into typed input columns for one served model (its input fields)."""

    def __init__(self, schema: EventSchema, model_inputs: Sequence[str], max_items: int = DEFAULT_MAX_ITEMS):
        self.schema = schema
        self.max_items = max_items
        fields = schema.field_map
        self.server_fields = (schema.id_field, schema.event_time_field)
        # The FieldSpec of every input a client gives.
        self.client_fields = tuple(fields[name] for name in sorted(model_inputs) if name not in self.server_fields)

    # -- one column -------------------------------------------------------------------------------
    def _column(self, field, values: List[Any], where: str, names: Optional[Sequence[str]] = None) -> List[Any]:
        """`values` typed as `field` declares, or BadRequest naming the first bad item (`names[i]` or `where[i]`)."""
        types = set(map(type, values))
        max_len = self.schema.max_string_length
        if field.type == "string":
            if types == {str} and max(map(len, values)) <= max_len and all(map(str.isascii, values)):
                return values
        elif field.type == "int":
            if types == {int} and -_INT64_LIMIT <= min(values) and max(values) < _INT64_LIMIT:
                return values
        elif types <= {float, int} and types and max(map(abs, values)) <= _FLOAT32_MAX:
            # JSON has no NaN or infinity (orjson refuses them), so the range check is the whole check.
            return values if types == {float} else [float(v) for v in values]
        out = []
        for i, value in enumerate(values):
            item = names[i] if names is not None else f"{where}[{i}]"
            if value is None or value is _MISSING:
                raise BadRequest(f"{item}: missing required field {field.name!r} ({field.type})")
            try:
                # The schema's own conversion and range checks, and its messages ("field 'price': expected float...").
                out.append(_coerce(field, value, max_len))
            except InvalidEvent as e:
                raise BadRequest(f"{item}: {e}") from None
        return out

    def _count(self, n: int, where: str) -> None:
        if n == 0:
            raise BadRequest(f"{where}: empty list: give at least one item to score")
        if n > self.max_items:
            raise BadRequest(f"{where}: {n} items, more than the limit of {self.max_items} per request", status=413)

    def rows(self, raw: Any, where: str, context: Optional[Dict[str, Any]] = None) -> Tuple[Columns, int]:
        """Columns of a list of event objects; each falls back to `context` for a field it does not give."""
        if not isinstance(raw, list):
            raise BadRequest(f"{where}: expected a JSON array, got {_json_type(raw)}")
        n = len(raw)
        self._count(n, where)
        if not all(type(r) is dict for r in raw):
            i = next(i for i, r in enumerate(raw) if type(r) is not dict)
            raise BadRequest(f"{where}[{i}]: expected a JSON object of event fields, got {_json_type(raw[i])}")
        context = context or {}
        columns: Columns = {}
        for field in self.client_fields:
            name = field.name
            shared = context.get(name)
            if shared is not None and not any(name in r for r in raw):
                # A context field no candidate overrides: checked once.
                columns[name] = self._column(field, [shared], "context", ["context"]) * n
                continue
            default = _MISSING if shared is None else shared
            values = [r.get(name, default) for r in raw]
            columns[name] = self._column(field, values, where)
        return columns, n

    # -- bodies -------------------------------------------------------------------------------------
    def predict_body(self, body: Any) -> Tuple[Columns, int]:
        """The columns of a TF Serving-style predict body: `instances` (rows) or `inputs` (columns)."""
        if not isinstance(body, dict):
            raise BadRequest(f"request body: expected a JSON object with 'instances' or 'inputs', "
                             f"got {_json_type(body)}")
        if ("instances" in body) == ("inputs" in body):
            raise BadRequest("request body: give exactly one of 'instances' (a list of events) or 'inputs' "
                             "(an object of columns)")
        if "instances" in body:
            return self.rows(body["instances"], "instances")
        given = body["inputs"]
        if not isinstance(given, dict):
            raise BadRequest(f"inputs: expected an object of columns (field -> list of values), "
                             f"got {_json_type(given)}")
        for name, col in given.items():
            if not isinstance(col, list):
                raise BadRequest(f"inputs.{name}: expected a list of values, got {_json_type(col)}")
        lengths = {name: len(col) for name, col in given.items()}
        if len(set(lengths.values())) > 1:
            raise BadRequest(f"inputs: columns differ in length: {dict(sorted(lengths.items()))}")
        n = next(iter(lengths.values()), 0)
        self._count(n, "inputs")
        columns: Columns = {}
        for field in self.client_fields:
            if field.name not in given:
                raise BadRequest(f"inputs: missing required field {field.name!r} ({field.type})")
            columns[field.name] = self._column(field, given[field.name], f"inputs.{field.name}")
        return columns, n

    def rank_body(self, body: Any) -> Tuple[Columns, int]:
        """The columns of a rank body: candidates, each over the context (a candidate's own field wins)."""
        if not isinstance(body, dict):
            raise BadRequest(f"request body: expected a JSON object with 'candidates', got {_json_type(body)}")
        context = body.get("context", {})
        if not isinstance(context, dict):
            raise BadRequest(f"context: expected a JSON object of event fields, got {_json_type(context)}")
        if "candidates" not in body:
            raise BadRequest("candidates: missing: give a list of candidate objects to rank")
        return self.rows(body["candidates"], "candidates", context)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)

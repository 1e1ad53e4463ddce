"""Request bodies, checked against the event schema before anything reaches TensorFlow.

A request carries raw events as the event schema declares them (the fields a
producer writes). Every field the served model takes must be there with its
declared type; the error names the item and the field, and becomes a 400.
Extra keys are ignored, as ingestion ignores them. The id and event-time
fields are the server's: each scored item gets its impression id as its id and
the request's arrival time as its event time, so what the model saw is exactly
what the impressions log holds.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

from components.event_schema import EventSchema, InvalidEvent, _coerce

# A JSON body larger than this is refused before it is read (configurable: driftline serve --max-body-bytes).
DEFAULT_MAX_BODY_BYTES = 10 << 20
# Items in one request: far above a ranking call's 1,000 candidates, far below what would stall the server.
DEFAULT_MAX_ITEMS = 10_000


class BadRequest(ValueError):
    """The request is malformed; the message names what to fix. Answered with `status`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


_PY_TYPES = {"int": int, "float": float, "string": str}
_INT64_LIMIT = 2 ** 63


class RequestChecker:
    """Validates items for one served model: its input fields, typed by the event schema."""

    def __init__(self, schema: EventSchema, model_inputs: Sequence[str], max_items: int = DEFAULT_MAX_ITEMS):
        self.schema = schema
        self.max_items = max_items
        fields = schema.field_map
        self.server_fields = (schema.id_field, schema.event_time_field)
        # (name, FieldSpec, exact Python type) of every input a client gives.
        self.client_fields = tuple((name, fields[name], _PY_TYPES[fields[name].type]) for name in sorted(model_inputs)
                                   if name not in self.server_fields)

    def item(self, raw: Any, where: str) -> Dict[str, Any]:
        """One item's model inputs, typed; BadRequest naming `where` and the field otherwise."""
        if not isinstance(raw, dict):
            raise BadRequest(f"{where}: expected a JSON object of event fields, got {_json_type(raw)}")
        out: Dict[str, Any] = {}
        max_len = self.schema.max_string_length
        for name, field, exact in self.client_fields:
            value = raw.get(name)
            if value is None:
                raise BadRequest(f"{where}: missing required field {name!r} ({field.type})")
            # The common cases inline (a ranking call checks 1,000 items); anything else takes the schema's path.
            if type(value) is exact and ((exact is str and len(value) <= max_len and value.isascii())
                                         or (exact is int and -_INT64_LIMIT <= value < _INT64_LIMIT)):
                out[name] = value
                continue
            try:
                # The schema's own conversion and range checks, and its messages ("field 'price': expected float...").
                out[name] = _coerce(field, value, max_len)
            except InvalidEvent as e:
                raise BadRequest(f"{where}: {e}") from None
        return out

    def items(self, raw: Any, where: str) -> List[Dict[str, Any]]:
        if not isinstance(raw, list):
            raise BadRequest(f"{where}: expected a JSON array, got {_json_type(raw)}")
        if not raw:
            raise BadRequest(f"{where}: empty list: give at least one item to score")
        if len(raw) > self.max_items:
            raise BadRequest(f"{where}: {len(raw)} items, more than the limit of {self.max_items} per request",
                             status=413)
        return [self.item(x, f"{where}[{i}]") for i, x in enumerate(raw)]

    def predict_body(self, body: Any) -> Tuple[List[Dict[str, Any]], str]:
        """The items of a TF Serving-style predict body: `instances` (rows) or `inputs` (columns)."""
        if not isinstance(body, dict):
            raise BadRequest(f"request body: expected a JSON object with 'instances' or 'inputs', "
                             f"got {_json_type(body)}")
        if ("instances" in body) == ("inputs" in body):
            raise BadRequest("request body: give exactly one of 'instances' (a list of events) or 'inputs' "
                             "(an object of columns)")
        if "instances" in body:
            return self.items(body["instances"], "instances"), "instances"
        columns = body["inputs"]
        if not isinstance(columns, dict):
            raise BadRequest(f"inputs: expected an object of columns (field -> list of values), "
                             f"got {_json_type(columns)}")
        lengths = {name: len(col) for name, col in columns.items() if isinstance(col, list)}
        for name, col in columns.items():
            if not isinstance(col, list):
                raise BadRequest(f"inputs.{name}: expected a list of values, got {_json_type(col)}")
        if len(set(lengths.values())) > 1:
            raise BadRequest(f"inputs: columns differ in length: {dict(sorted(lengths.items()))}")
        n = next(iter(lengths.values()), 0)
        rows = [{name: col[i] for name, col in columns.items()} for i in range(n)]
        if not rows:
            raise BadRequest("inputs: no rows: give at least one value per column")
        return self.items(rows, "inputs"), "inputs"

    def rank_body(self, body: Any) -> List[Dict[str, Any]]:
        """The candidates of a rank body, each merged over the context (a candidate's field wins)."""
        if not isinstance(body, dict):
            raise BadRequest(f"request body: expected a JSON object with 'candidates', got {_json_type(body)}")
        context = body.get("context", {})
        if not isinstance(context, dict):
            raise BadRequest(f"context: expected a JSON object of event fields, got {_json_type(context)}")
        if "candidates" not in body:
            raise BadRequest("candidates: missing: give a list of candidate objects to rank")
        candidates = body["candidates"]
        if isinstance(candidates, list) and candidates:
            merged = [{**context, **c} if isinstance(c, dict) else c for c in candidates]
        else:
            merged = candidates
        return self.items(merged, "candidates")


def columns_of(items: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Dict[str, List[Any]]:
    return {name: [item[name] for item in items] for name in names}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)

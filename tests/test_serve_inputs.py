"""Request bodies against the event schema (pipelines/serve/inputs.py): typed columns, or a 4xx naming the field."""
import pytest

from components.event_schema import ad_click_schema
from pipelines.serve.inputs import BadRequest, RequestChecker

SCHEMA = ad_click_schema()
INPUTS = [f.name for f in SCHEMA.fields if f.name != SCHEMA.label_field]  # what serving_raw takes
CHECK = RequestChecker(SCHEMA, INPUTS, max_items=5)
AD = {"ad_id": "a", "ad_category": "c", "price": 2}
USER = {"user_id": "u", "device": "d", "hour_of_day": 9}


def test_rank_merges_the_context_and_a_candidate_field_wins():
    columns, n = CHECK.rank_body({"context": USER, "candidates": [AD, {**AD, "device": "tv", "price": 1.5}]})
    assert n == 2
    assert columns == {"ad_category": ["c", "c"], "ad_id": ["a", "a"], "device": ["d", "tv"],
                       "hour_of_day": [9, 9], "price": [2.0, 1.5], "user_id": ["u", "u"]}
    assert all(type(v) is float for v in columns["price"])  # an int given for a float field is the float
    # The id and event time are the server's: never asked of the client.
    assert SCHEMA.id_field not in columns and SCHEMA.event_time_field not in columns


@pytest.mark.parametrize("body, status, message", [
    ({"context": USER, "candidates": []}, 400, "candidates: empty list"),
    ({"context": USER}, 400, "candidates: missing"),
    ({"context": USER, "candidates": [AD] * 6}, 413, "more than the limit of 5"),
    ({"context": USER, "candidates": [AD, {**AD, "price": True}]}, 400, "candidates[1]: field 'price': expected float"),
    ({"context": {**USER, "hour_of_day": 9.5}, "candidates": [AD]}, 400, "context: field 'hour_of_day'"),
    ({"context": USER, "candidates": [AD, {"ad_id": "a", "price": 1.0}]}, 400,
     "candidates[1]: missing required field 'ad_category'"),
    ({"context": USER, "candidates": [AD, "ad"]}, 400, "candidates[1]: expected a JSON object"),
    ({"context": USER, "candidates": [{**AD, "ad_id": "x" * 2000}]}, 400, "exceeds max_string_length"),
    ({"context": {**USER, "hour_of_day": 2 ** 70}, "candidates": [AD]}, 400, "int64"),
    ({"context": "u", "candidates": [AD]}, 400, "context: expected a JSON object"),
])
def test_bad_rank_bodies_name_the_item_and_field(body, status, message):
    with pytest.raises(BadRequest) as e:
        CHECK.rank_body(body)
    assert e.value.status == status and message in str(e.value)


def test_predict_takes_rows_or_columns_with_the_same_result():
    row = {**USER, **AD}
    by_rows = CHECK.predict_body({"instances": [row, row]})
    by_columns = CHECK.predict_body({"inputs": {k: [v, v] for k, v in row.items()}})
    assert by_rows == by_columns and by_rows[1] == 2
    with pytest.raises(BadRequest, match=r"inputs.price\[1\]: field 'price': expected float"):
        CHECK.predict_body({"inputs": {**{k: [v, v] for k, v in row.items()}, "price": [1.0, "x"]}})
    with pytest.raises(BadRequest, match="inputs: missing required field 'device'"):
        CHECK.predict_body({"inputs": {k: [v] for k, v in row.items() if k != "device"}})

"""SliceBatches' grouping against TFMA's own per-example slicing, on plain batched extracts (no Beam)."""
from __future__ import annotations

import numpy as np
import pytest

import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

SLICE_KEYS = "_slice_key_types"  # tfma.constants.SLICE_KEY_TYPES_KEY


def _config(*slicing_specs):
    import tensorflow_model_analysis as tfma

    return tfma.EvalConfig(model_specs=[tfma.ModelSpec(name="candidate"), tfma.ModelSpec(name="baseline")],
                           slicing_specs=list(slicing_specs))


def _batch(n=500, seed=0, devices=(b"mobile", b"desktop", b"tablet")):
    rng = np.random.default_rng(seed)
    device = np.array(devices, dtype=object)[rng.integers(0, len(devices), n)][:, None]
    country = np.array([b"de", b"us"], dtype=object)[rng.integers(0, 2, n)][:, None]
    labels = rng.integers(0, 2, n)[:, None]
    predictions = rng.random((n, 1)).astype(np.float32)
    return {
        "features": {"device": device, "country": country, "price": rng.random((n, 1))},
        "labels": {"candidate": labels, "baseline": labels},
        "predictions": {"candidate": predictions, "baseline": 1 - predictions},
    }


def _tfma_slice_keys_per_example(batch, config):
    """What TFMA's UnbatchExtractor + SliceKeyExtractor give each example."""
    from tensorflow_model_analysis.slicer import slicer_lib as slicer
    from tensorflow_model_analysis.utils import util

    specs = [slicer.SingleSliceSpec(spec=s) for s in config.slicing_specs] or [slicer.SingleSliceSpec()]
    rows = util.split_extracts({"features": batch["features"]})
    return [set(slicer.get_slices_for_features_dicts([], row["features"], specs)) for row in rows]


def _check_against_tfma(batch, config):
    from components.evaluator import batched_slices

    groups = batched_slices.slice_batch(batch, batched_slices.slice_specs(config),
                                        batched_slices.slice_columns(config))
    expected = _tfma_slice_keys_per_example(batch, config)
    seen = []
    for group in groups:
        keys = set(group[SLICE_KEYS])
        # The rows of a group are found by their predictions (unique floats).
        idx = np.flatnonzero(np.isin(batch["predictions"]["candidate"][:, 0], group["predictions"]["candidate"][:, 0]))
        assert len(idx) == len(group["labels"]["candidate"])
        for i in idx:
            assert keys == expected[i], (i, keys, expected[i])
        np.testing.assert_array_equal(group["labels"]["baseline"], batch["labels"]["baseline"][idx])
        np.testing.assert_array_equal(group["predictions"]["baseline"], batch["predictions"]["baseline"][idx])
        assert "features" not in group  # a batched metric reads labels, predictions and weights only
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(expected)))  # every row once
    return groups


def test_each_row_gets_the_slice_keys_tfma_gives_it_one_example_at_a_time():
    import tensorflow_model_analysis as tfma

    config = _config(tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["device"]))
    groups = _check_against_tfma(_batch(), config)
    assert len(groups) == 3  # one per device; each also in the overall slice
    assert all(() in set(g[SLICE_KEYS]) for g in groups)


def test_crossed_and_valued_slices_group_by_every_column_they_read():
    import tensorflow_model_analysis as tfma

    config = _config(tfma.SlicingSpec(feature_keys=["device", "country"]),
                     tfma.SlicingSpec(feature_values={"country": "us"}))
    groups = _check_against_tfma(_batch(seed=1), config)
    assert len(groups) == 6
    # Rows outside every slice (country de, no overall slice) are kept with the crossed slice only.
    assert any(len(g[SLICE_KEYS]) == 1 for g in groups)


def test_multivalent_slice_columns_fall_back_to_per_row_values():
    import tensorflow_model_analysis as tfma

    batch = _batch(n=60, seed=2)
    # Two values per row: TFMA gives such a row a slice for each value.
    batch["features"]["device"] = np.concatenate([batch["features"]["device"], batch["features"]["country"]], axis=1)
    config = _config(tfma.SlicingSpec(feature_keys=["device"]))
    groups = _check_against_tfma(batch, config)
    assert max(len(g[SLICE_KEYS]) for g in groups) == 2


def test_no_slicing_specs_is_one_overall_group_and_weights_follow_their_rows():
    from components.evaluator import batched_slices

    batch = _batch(n=40, seed=3)
    batch["example_weights"] = {"candidate": np.arange(40.0), "baseline": np.arange(40.0)}
    config = _config()
    [group] = batched_slices.slice_batch(batch, batched_slices.slice_specs(config),
                                         batched_slices.slice_columns(config))
    assert list(group[SLICE_KEYS]) == [()]
    np.testing.assert_array_equal(group["example_weights"]["candidate"], np.arange(40.0))


def test_an_empty_batch_gives_no_extract():
    from components.evaluator import batched_slices

    batch = _batch(n=0)
    config = _config()
    assert batched_slices.slice_batch(batch, batched_slices.slice_specs(config), []) == []


@pytest.mark.parametrize("field, message", [("cross_slicing_specs", "cross slices"), ("slice_keys_sql", "slice_keys_sql")])
def test_what_it_cannot_slice_is_refused_with_the_way_out(field, message):
    import tensorflow_model_analysis as tfma

    from components.evaluator import batched_slices

    config = _config(tfma.SlicingSpec())
    if field == "cross_slicing_specs":
        config.cross_slicing_specs.add().baseline_spec.CopyFrom(tfma.SlicingSpec())
    else:
        config.slicing_specs.add(slice_keys_sql="SELECT STRUCT(device) FROM example.device")
    with pytest.raises(ValueError, match=f"{message}.*default extractors"):
        batched_slices.slice_specs(config)

"""The serving SavedModel's two signatures compute the same thing on the same events (#20).

`serving_default` parses serialized tf.Examples; `serving_raw` takes the raw
fields as tensors. Both are exported by the model modules' real export paths,
loaded back with `tf.saved_model.load` and called on simulated events.
"""
import os

import numpy as np
import pytest

from serve_helpers import SCHEMA, TRANSFORM, events, write_transform_graph


@pytest.fixture(scope="module")
def transform_graph(tmp_path_factory):
    return write_transform_graph(str(tmp_path_factory.mktemp("tg") / "graph"))


@pytest.fixture(scope="module")
def sample():
    return events(300)


def _both(export_dir, sample):
    import tensorflow as tf

    from components.streaming_example_gen.example_codec import ExampleEncoder
    from pipelines.serve.signatures import RAW_SIGNATURE

    loaded = tf.saved_model.load(export_dir)
    assert set(loaded.signatures) == {"serving_default", RAW_SIGNATURE}
    raw_fn = loaded.signatures[RAW_SIGNATURE]
    inputs = raw_fn.structured_input_signature[1]
    # Every raw field but the label, typed as the examples hold them.
    assert sorted(inputs) == sorted(f.name for f in SCHEMA.fields if f.name != SCHEMA.label_field)
    encoder = ExampleEncoder(SCHEMA)
    serialized = [encoder.encode({k: v for k, v in e.items() if k != SCHEMA.label_field}) for e in sample]
    by_example = loaded.signatures["serving_default"](examples=tf.constant(serialized))["probability"].numpy()
    feed = {name: tf.constant([e[name] for e in sample], dtype=spec.dtype) for name, spec in inputs.items()}
    by_raw = raw_fn(**feed)["probability"].numpy()
    return by_example, by_raw


def test_ads_model_signatures_agree(transform_graph, sample, tmp_path):
    from serve_helpers import export_ads_model

    by_example, by_raw = _both(export_ads_model(str(tmp_path / "ads"), transform_graph), sample)
    assert by_raw.shape == by_example.shape == (len(sample), 1)
    assert np.ptp(by_raw) > 0  # the events differ, so do their scores: the test compares something
    np.testing.assert_array_equal(by_raw, by_example)


def test_the_kept_trainer_exports_both_signatures_twice(transform_graph, sample, tmp_path):
    """A warm cycle reuses the first export's graph and writes only weights: the raw signature comes along."""
    import tensorflow_transform as tft

    from pipelines import ads_model
    from pipelines.config import TrainerConfig
    from transforms import stream

    model = ads_model.build_model(stream.hash_buckets(SCHEMA, TRANSFORM), stream.numeric_features(SCHEMA, TRANSFORM),
                                  dict(TrainerConfig().model), seed=1)
    features = {name: (np.zeros(4, np.float32) if name in stream.numeric_features(SCHEMA, TRANSFORM)
                       else np.zeros(4, np.int64)) for name in model.input_names}
    trainer = ads_model.Trainer(model, features, np.zeros(4, np.float32))
    output = tft.TFTransformOutput(transform_graph)
    key = ads_model.transform_graph_key(transform_graph)
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    ads_model.export_serving_model(model, output, SCHEMA.label_field, first, trainer=trainer, transform_key=key)
    ads_model.export_serving_model(model, output, SCHEMA.label_field, second, trainer=trainer, transform_key=key)
    assert trainer.export_template is not None  # the second export wrote weights only
    a, b = _both(first, sample), _both(second, sample)
    np.testing.assert_array_equal(a[0], a[1])
    np.testing.assert_array_equal(b[0], b[1])
    np.testing.assert_array_equal(a[1], b[1])


def test_music_model_signatures_agree(transform_graph, sample, tmp_path):
    import tensorflow_transform as tft

    from pipelines import music_model
    from transforms import stream

    model = music_model.build_model(stream.hash_buckets(SCHEMA, TRANSFORM),
                                    stream.numeric_features(SCHEMA, TRANSFORM), {}, seed=2)
    export_dir = str(tmp_path / "music")
    music_model._export(model, tft.TFTransformOutput(transform_graph), SCHEMA.label_field, export_dir)
    assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
    by_example, by_raw = _both(export_dir, sample)
    assert np.ptp(by_raw) > 0
    np.testing.assert_array_equal(by_raw, by_example)


def test_a_swap_frees_the_old_version_without_walking_tensorflows_frozen_objects(tmp_path, serve_models):
    """After a swap the old version is freed at once (its graph holds reference cycles), by a collection
    over what is not frozen: TensorFlow's objects, frozen once before the first model loaded, stay frozen
    (unfreezing them to walk them too held the GIL ~130 ms per swap, a stall for the requests in flight)."""
    import gc
    import weakref

    from components.blessing_pusher import serving
    from pipelines.serve.model_store import ModelStore

    serving_dir = str(tmp_path / "serving")
    serving.push(serve_models[1], serving_dir)
    store = ModelStore(serving_dir, SCHEMA)
    assert store.refresh() and store.current.version == 1
    frozen = gc.get_freeze_count()
    assert frozen > 100_000  # TensorFlow's modules and what they hold
    for seed in (2, 3, 1):
        old = weakref.ref(store.current._saved)
        pushed = serving.push(serve_models[seed], serving_dir).version
        assert store.refresh() and store.current.version == pushed
        assert old() is None  # freed at the swap, not at some later collection
        assert gc.get_freeze_count() == frozen  # nothing unfrozen, walked and frozen again


def test_a_paced_thread_gives_up_half_its_time_and_only_while_asked():
    """The model store's thread paces itself while a model serves (model_store.pace_thread): after every
    millisecond of running it sleeps one, releasing the GIL, even inside code that never blocks (here a busy
    Python loop, as TensorFlow's loader is to the requests). Measured as the thread's own CPU time over the
    wall time of the same loop: ~1 unpaced on an idle core, at most ~0.5 paced, lower still on a busy machine."""
    import sys
    import threading
    import time

    from pipelines.serve.model_store import pace_thread

    asked = [True]
    shares = {}

    def busy(name: str, seconds: float = 0.4) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        while time.perf_counter() - wall < seconds:
            sum(range(200))
        shares[name] = (time.thread_time() - cpu) / (time.perf_counter() - wall)

    def run() -> None:
        pace_thread(lambda: asked[0])
        busy("paced")
        asked[0] = False
        busy("not asked")
        shares["profile"] = sys.getprofile() is not None

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert shares["profile"]
    assert sys.getprofile() is None  # the calling thread's own, never the others'
    assert shares["paced"] < 0.7, shares
    assert shares["not asked"] > shares["paced"], shares

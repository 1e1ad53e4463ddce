"""tf.data input for run_fn: raw span TFRecords → transformed features, with replay sampling.

Training reads the raw examples and applies the transform graph on the fly
(Transform need not materialize anything), so a cycle writes no copy of its
data. Replay sampling hashes the event id with the cycle's newest span as
salt: deterministic for a cycle, a different sample in the next.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import tensorflow as tf

from components.warm_start_trainer.fn_args import TrainingInput

_SAMPLE_BUCKETS = 1_000_000


def _files(pattern: str):
    return tf.io.gfile.glob(pattern)


def raw_dataset(inputs: Sequence[TrainingInput], raw_feature_spec: Dict[str, tf.io.FixedLenFeature],
                id_key: str, salt: str, batch_size: int) -> Tuple[tf.data.Dataset, Dict[str, int]]:
    """Parsed raw examples of all inputs (sampled where asked), batched; and the file count per role."""
    datasets = []
    files_by_role: Dict[str, int] = {}
    for source in inputs:
        files = _files(source.file_pattern)
        files_by_role[source.role] = files_by_role.get(source.role, 0) + len(files)
        if not files:
            continue
        ds = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
        if source.fraction < 1.0:
            threshold = int(source.fraction * _SAMPLE_BUCKETS)
            spec = {id_key: raw_feature_spec[id_key]}

            def keep(record, threshold=threshold, spec=spec):
                event_id = tf.io.parse_single_example(record, spec)[id_key]
                if isinstance(event_id, tf.sparse.SparseTensor):
                    event_id = event_id.values
                key = tf.reshape(event_id, [-1])[:1]
                key = tf.strings.as_string(key) if key.dtype != tf.string else key
                return tf.reduce_all(tf.strings.to_hash_bucket_fast(key + salt, _SAMPLE_BUCKETS) < threshold)

            ds = ds.filter(keep)
        datasets.append(ds.map(lambda r, role=source.role: (r, role)))
    if not datasets:
        raise ValueError("no training files found for " + ", ".join(i.file_pattern for i in inputs))
    ds = datasets[0]
    for other in datasets[1:]:
        ds = ds.concatenate(other)
    ds = ds.batch(batch_size).map(
        lambda records, roles: (tf.io.parse_example(records, raw_feature_spec), roles),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds, files_by_role


def transformed_dataset(inputs: Sequence[TrainingInput], tft_output, label_key: str, id_key: str, salt: str,
                        batch_size: int, shuffle_seed: int) -> tf.data.Dataset:
    """(features, label) batches in memory, shuffled with a fixed seed.

    A span fits in memory by design (minutes of events), so the transformed
    batches are cached: epochs after the first cost no parsing.
    """
    raw_spec = tft_output.raw_feature_spec()
    ds, _ = raw_dataset(inputs, raw_spec, id_key, salt, batch_size)
    layer = tft_output.transform_features_layer()

    def apply(raw, roles):
        transformed = layer(raw)
        label = transformed.pop(label_key)
        return transformed, label

    return (ds.map(apply).unbatch().cache()
            .shuffle(100_000, seed=shuffle_seed, reshuffle_each_iteration=True)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def count_by_role(inputs: Sequence[TrainingInput], raw_feature_spec, id_key: str, salt: str) -> Dict[str, int]:
    """How many examples each role contributes (after sampling): recorded on the Model."""
    ds, _ = raw_dataset(inputs, raw_feature_spec, id_key, salt, 4096)
    counts: Dict[str, int] = {}
    for _, roles in ds:
        for role, n in zip(*tf.unique_with_counts(roles)[::2]):
            counts[role.numpy().decode()] = counts.get(role.numpy().decode(), 0) + int(n)
    return counts

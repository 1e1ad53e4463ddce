"""tf.data input for run_fn: raw span TFRecords → transformed features, with replay sampling.

Training reads the raw examples and applies the transform graph itself
(Transform need not materialize anything), so a cycle writes no copy of its
data. Replay sampling hashes the event id with the cycle's newest span as
salt: deterministic for a cycle, a different sample in the next.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from components.warm_start_trainer.fn_args import TrainingInput

_SAMPLE_BUCKETS = 1_000_000


def _files(pattern: str):
    return tf.io.gfile.glob(pattern)


def _sample_mask(records: tf.Tensor, id_spec, id_key: str, salt: str, threshold: int) -> tf.Tensor:
    """Which of a batch of serialized examples a replay sample keeps: their id hashed with the salt.

    A record without an id is kept (as before: nothing to hash, nothing to drop).
    """
    ids = tf.io.parse_example(records, {id_key: id_spec})[id_key]
    if isinstance(ids, tf.sparse.SparseTensor):
        ragged = tf.RaggedTensor.from_sparse(ids)
        has_id = ragged.row_lengths() > 0
        first = ragged[:, :1].to_tensor(default_value="" if ids.dtype == tf.string else 0)
    else:
        flat = tf.reshape(ids, [tf.shape(records)[0], -1])
        has_id = tf.fill([tf.shape(records)[0]], tf.shape(flat)[1] > 0)
        first = flat[:, :1]
    key = tf.reshape(first, [-1])
    key = tf.strings.as_string(key) if key.dtype != tf.string else key
    inside = tf.strings.to_hash_bucket_fast(key + salt, _SAMPLE_BUCKETS) < threshold
    return tf.logical_or(tf.logical_not(has_id), inside)


def raw_dataset(inputs: Sequence[TrainingInput], raw_feature_spec: Dict[str, tf.io.FixedLenFeature],
                id_key: str, salt: str, batch_size: int) -> Tuple[tf.data.Dataset, Dict[str, int]]:
    """Parsed raw examples of all inputs (sampled where asked), batched; and the file count per role.

    Every step works on whole batches: a per-record tf.data map or filter
    costs tens of microseconds a record, many times reading and parsing it.
    Batches do not cross inputs, so the last one of each input (and a sampled
    one) may be smaller than `batch_size`.
    """
    datasets = []
    files_by_role: Dict[str, int] = {}
    for source in inputs:
        files = _files(source.file_pattern)
        files_by_role[source.role] = files_by_role.get(source.role, 0) + len(files)
        if not files:
            continue
        ds = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP").batch(batch_size)
        if source.fraction < 1.0:
            threshold = int(source.fraction * _SAMPLE_BUCKETS)

            def sample(records, threshold=threshold):
                return tf.boolean_mask(records, _sample_mask(records, raw_feature_spec[id_key], id_key, salt,
                                                             threshold))

            ds = ds.map(sample).filter(lambda records: tf.size(records) > 0)
        datasets.append(ds.map(lambda records, role=source.role: (records, tf.fill(tf.shape(records), role))))
    if not datasets:
        raise ValueError("no training files found for " + ", ".join(i.file_pattern for i in inputs))
    ds = datasets[0]
    for other in datasets[1:]:
        ds = ds.concatenate(other)
    ds = ds.map(
        lambda records, roles: (tf.io.parse_example(records, raw_feature_spec), roles),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds, files_by_role


def load_transformed(inputs: Sequence[TrainingInput], tft_output, label_key: str, id_key: str, salt: str,
                     read_batch_size: int = 4096) -> Tuple[Dict[str, np.ndarray], np.ndarray, Dict[str, int]]:
    """All training examples, transformed, as numpy arrays; and the example count per role.

    A cycle's data fits in memory by design (minutes of events). The
    transform graph is applied eagerly, batch by batch: tracing it inside a
    tf.data map costs seconds per cycle, running it costs milliseconds.
    """
    ds, _ = raw_dataset(inputs, tft_output.raw_feature_spec(), id_key, salt, read_batch_size)
    columns: Dict[str, list] = {}
    counts: Dict[str, int] = {}
    for raw, roles in ds:
        transformed = tft_output.transform_raw_features(raw, drop_unused_features=True)
        for key, value in transformed.items():
            columns.setdefault(key, []).append(value.numpy())
        for role, n in zip(*tf.unique_with_counts(roles)[::2]):
            counts[role.numpy().decode()] = counts.get(role.numpy().decode(), 0) + int(n)
    if not columns:
        raise ValueError("the training inputs hold no examples: " + ", ".join(i.file_pattern for i in inputs))
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    labels = arrays.pop(label_key)
    return arrays, labels, counts

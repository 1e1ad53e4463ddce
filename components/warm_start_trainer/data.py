"""tf.data input for run_fn: raw span TFRecords → transformed features, with replay sampling.

Training reads the raw examples and applies the transform graph itself
(Transform need not materialize anything), so a cycle writes no copy of its
data. Replay sampling hashes the event id with the cycle's newest span as
salt: deterministic for a cycle, a different sample in the next.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from components.warm_start_trainer.fn_args import TrainingInput

_SAMPLE_BUCKETS = 1_000_000


def _files(pattern: str):
    return tf.io.gfile.glob(pattern)


def _id_keys(ids, n) -> Tuple[tf.Tensor, tf.Tensor]:
    """The string that replay sampling hashes for each of `n` examples, and whether it has an id at all."""
    if isinstance(ids, tf.sparse.SparseTensor):
        ragged = tf.RaggedTensor.from_sparse(ids)
        has_id = ragged.row_lengths() > 0
        first = ragged[:, :1].to_tensor(default_value="" if ids.dtype == tf.string else 0)
    else:
        flat = tf.reshape(ids, [n, -1])
        has_id = tf.fill([n], tf.shape(flat)[1] > 0)
        first = flat[:, :1]
    key = tf.reshape(first, [-1])
    return (tf.strings.as_string(key) if key.dtype != tf.string else key), has_id


def _keep(keys, has_id, salt: str, threshold: int) -> tf.Tensor:
    """Which examples a replay sample keeps: their id hashed with the salt.

    A record without an id is kept (as before: nothing to hash, nothing to drop).
    """
    inside = tf.strings.to_hash_bucket_fast(keys + salt, _SAMPLE_BUCKETS) < threshold
    return tf.logical_or(tf.logical_not(has_id), inside)


def _sample_mask(records: tf.Tensor, id_spec, id_key: str, salt: str, threshold: int) -> tf.Tensor:
    """`_keep` for a batch of serialized examples."""
    ids = tf.io.parse_example(records, {id_key: id_spec})[id_key]
    return _keep(*_id_keys(ids, tf.shape(records)[0]), salt, threshold)


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


class NoTrainingExamples(ValueError):
    """The training inputs exist but hold no example: a span whose few events all fell into its eval
    split (the first span of a stream that starts late in it), with nothing earlier to replay."""


@dataclasses.dataclass(frozen=True)
class _KeptInput:
    """One input's examples, all of them, transformed, in file order; and what replay sampling hashes."""

    columns: Dict[str, np.ndarray]
    sample_keys: np.ndarray
    has_id: np.ndarray

    def __len__(self) -> int:
        return len(self.has_id)


# The inputs of this process's last load_transformed call that named a
# transform: the next cycle's replay spans are this cycle's new and replay
# spans, so it need not read them again. Replaced by every such call, so it
# holds one cycle's inputs and never grows.
_kept_inputs: Dict[tuple, _KeptInput] = {}


def clear_kept_inputs() -> None:
    _kept_inputs.clear()


def _input_key(files: Sequence[str], transform_key: str) -> tuple:
    """The files as they are now (a rewritten or replaced file is another input) under one transform."""
    stats = tuple((f, s.length, s.mtime_nsec) for f, s in ((f, tf.io.gfile.stat(f)) for f in files))
    return (transform_key, stats)


def _read_whole(files: Sequence[str], tft_output, id_key: str, read_batch_size: int) -> _KeptInput:
    """Every example of `files`, parsed and transformed eagerly: no tf.data function to trace per call."""
    raw_spec = tft_output.raw_feature_spec()
    columns: Dict[str, list] = {}
    keys, has_ids = [], []
    for records in tf.data.TFRecordDataset(list(files), compression_type="GZIP").batch(read_batch_size):
        raw = tf.io.parse_example(records, raw_spec)
        k, h = _id_keys(raw[id_key], tf.shape(records)[0])
        keys.append(k.numpy())
        has_ids.append(h.numpy())
        for key, value in tft_output.transform_raw_features(raw, drop_unused_features=True).items():
            columns.setdefault(key, []).append(value.numpy())
    if not keys:
        return _KeptInput({}, np.zeros([0], dtype=object), np.zeros([0], dtype=bool))
    return _KeptInput({k: np.concatenate(v) for k, v in columns.items()}, np.concatenate(keys),
                      np.concatenate(has_ids))


def _load_kept(inputs: Sequence[TrainingInput], tft_output, id_key: str, salt: str, transform_key: str,
               read_batch_size: int) -> Tuple[Dict[str, list], Dict[str, int]]:
    """What the streaming path below computes, from whole inputs kept between calls.

    Each input is transformed whole (once, while it stays in use) and sampled
    here with the same hash, so the examples and their order are the
    streaming path's, and so are their values up to the last bit of a float
    (a vectorised transform may round an example differently in another
    batch). A kept input and a freshly read one are batched alike, so a
    restarted process computes exactly what a long-lived one does.
    """
    columns: Dict[str, list] = {}
    counts: Dict[str, int] = {}
    used: Dict[tuple, _KeptInput] = {}
    any_files = False
    for source in inputs:
        files = sorted(_files(source.file_pattern))
        if not files:
            continue
        any_files = True
        key = _input_key(files, transform_key)
        entry = used.get(key, _kept_inputs.get(key))
        if entry is None:
            entry = _read_whole(files, tft_output, id_key, read_batch_size)
        used[key] = entry
        if not len(entry):
            continue
        chosen = entry.columns
        if source.fraction < 1.0:
            mask = _keep(tf.constant(entry.sample_keys), tf.constant(entry.has_id), salt,
                         int(source.fraction * _SAMPLE_BUCKETS)).numpy()
            chosen = {k: v[mask] for k, v in chosen.items()}
        n = len(next(iter(chosen.values())))
        if not n:
            continue
        for k, v in chosen.items():
            columns.setdefault(k, []).append(v)
        columns.setdefault(_SPAN, []).append(np.full(n, source.span, np.int64))
        columns.setdefault(_ROLE, []).append(np.full(n, source.role, dtype=object))
        counts[source.role] = counts.get(source.role, 0) + n
    if not any_files:
        raise ValueError("no training files found for " + ", ".join(i.file_pattern for i in inputs))
    _kept_inputs.clear()
    _kept_inputs.update(used)
    return columns, counts


def load_transformed(inputs: Sequence[TrainingInput], tft_output, label_key: str, id_key: str, salt: str,
                     read_batch_size: int = 4096, transform_key: Optional[str] = None, provenance: bool = False):
    """All training examples, transformed, as numpy arrays; and the example count per role.

    A cycle's data fits in memory by design (minutes of events). The
    transform graph is applied eagerly, batch by batch: tracing it inside a
    tf.data map costs seconds per cycle, running it costs milliseconds.

    `transform_key` (`ads_model.transform_graph_key`: the same key means the
    same transform) lets this process keep the inputs it transformed for the
    next call, which then reads only inputs it has not seen: in a controller,
    a warm cycle's replay spans were the previous cycles' new spans, and
    scanning them whole to sample a tenth cost as much as the rest of the
    cycle's training. Kept inputs are an optimisation, never state: they
    give what reading the files again gives.

    `provenance`: also return, per example, the span and the role of the
    input it came from (`Provenance`), for a model that must know which
    examples it has learned before (`ads_model`'s count features).
    """
    if transform_key is not None:
        columns, counts = _load_kept(inputs, tft_output, id_key, salt, transform_key, read_batch_size)
    else:
        columns, counts = {}, {}
        # One input at a time when asked for provenance: the span of every example is its input's.
        for group in ([[i] for i in inputs] if provenance else [inputs]):
            try:
                ds, _ = raw_dataset(group, tft_output.raw_feature_spec(), id_key, salt, read_batch_size)
            except ValueError:  # no files for this one input; all inputs without files is raised below
                if not provenance:
                    raise
                continue
            for raw, roles in ds:
                transformed = tft_output.transform_raw_features(raw, drop_unused_features=True)
                for key, value in transformed.items():
                    columns.setdefault(key, []).append(value.numpy())
                if provenance:
                    columns.setdefault(_SPAN, []).append(np.full(int(tf.size(roles)), group[0].span, np.int64))
                    columns.setdefault(_ROLE, []).append(roles.numpy().astype(object))
                for role, n in zip(*tf.unique_with_counts(roles)[::2]):
                    counts[role.numpy().decode()] = counts.get(role.numpy().decode(), 0) + int(n)
        if provenance and not columns and not any(_files(i.file_pattern) for i in inputs):
            raise ValueError("no training files found for " + ", ".join(i.file_pattern for i in inputs))
    if not columns:
        raise NoTrainingExamples("the training inputs hold no examples: "
                                 + ", ".join(i.file_pattern for i in inputs))
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    labels = arrays.pop(label_key)
    spans, roles = arrays.pop(_SPAN, None), arrays.pop(_ROLE, None)
    if not provenance:
        return arrays, labels, counts
    roles = np.array([r.decode() if isinstance(r, bytes) else r for r in roles], dtype=object)
    return arrays, labels, counts, Provenance(spans, roles)


def positives_by_role(labels: np.ndarray, provenance: "Provenance") -> Dict[str, int]:
    """The positive labels (> 0) among the training examples, per role (`TrainResult.positives_by_role`)."""
    positive = np.asarray(labels).reshape(-1) > 0
    return {str(role): int(np.count_nonzero(positive[provenance.role == role])) for role in np.unique(provenance.role)}


# Keys of the provenance columns while they travel with the features (never a transformed feature's name:
# those end in `_xf`, or are the label).
_SPAN, _ROLE = "__span__", "__role__"


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Per training example: the span of its input and its role ("new", "previous_eval", "replay", ...)."""

    span: np.ndarray  # int64
    role: np.ndarray  # object (str)

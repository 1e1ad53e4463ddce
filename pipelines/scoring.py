"""Scoring serving models on ingested spans, outside the pipeline.

The gate scores candidates with TFMA inside a cycle. Comparisons across
regimes (the notebook, ``benchmarks/cost.py``) need the same thing for models
that never went through the gate: read a span's tf.Examples as they were
ingested, feed them to a model's serving signature, and compute exact metrics.
Paths go through ``tf.io.gfile``, so ``gs://`` spans and models work too.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from components.warm_start_trainer.cycle import SERVING_DIR


def exact_auc(labels: Sequence[Any], scores: Sequence[float]) -> float:
    """Mann-Whitney AUC with tied scores given their average rank; NaN when one class is absent."""
    labels = np.asarray(labels) > 0
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: Sequence[Any], p: Sequence[float]) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def read_span(span_uri: str, splits: Sequence[str] = ("eval",)) -> List[bytes]:
    """The serialized tf.Examples of one ingested span (``<uri>/Split-<name>/*.tfrecord.gz``), in file order."""
    import tensorflow as tf

    files: List[str] = []
    for split in splits:
        files += sorted(tf.io.gfile.glob(os.path.join(span_uri, f"Split-{split}", "*")))
    if not files:
        raise FileNotFoundError(f"no TFRecord files for splits {list(splits)} under {span_uri!r}: "
                                "is it the URI of one span (…/span-<n>) of a StreamingExampleGen Examples artifact?")
    return [bytes(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def decode(serialized: Sequence[bytes], fields: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """tf.Examples as dicts of their first value per feature (our events hold one value each)."""
    import tensorflow as tf

    out = []
    for s in serialized:
        feats = tf.train.Example.FromString(s).features.feature
        row: Dict[str, Any] = {}
        for name in (fields if fields is not None else feats.keys()):
            f = feats[name]
            if f.bytes_list.value:
                row[name] = f.bytes_list.value[0].decode()
            elif f.int64_list.value:
                row[name] = int(f.int64_list.value[0])
            elif f.float_list.value:
                row[name] = float(f.float_list.value[0])
        out.append(row)
    return out


def encode(rows: Sequence[Mapping[str, Any]]) -> List[bytes]:
    """Dicts of scalars back into serialized tf.Examples (str -> bytes, int -> int64, float -> float)."""
    import tensorflow as tf

    out = []
    for row in rows:
        feature = {}
        for name, value in row.items():
            if isinstance(value, str):
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
            elif isinstance(value, (bool, int, np.integer)):
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
            else:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


class ServingModel:
    """A Model artifact's serving SavedModel: serialized tf.Examples in, click probabilities out."""

    def __init__(self, model_uri: str):
        import tensorflow as tf

        path = model_uri if tf.io.gfile.exists(os.path.join(model_uri, "saved_model.pb")) \
            else os.path.join(model_uri, SERVING_DIR)
        self.model_uri = model_uri
        self._loaded = tf.saved_model.load(path)
        self._fn = self._loaded.signatures["serving_default"]

    def predict(self, serialized: Sequence[bytes], batch: int = 4096) -> np.ndarray:
        import tensorflow as tf

        if not serialized:
            return np.zeros((0,), dtype=np.float64)
        parts = [self._fn(examples=tf.constant(list(serialized[i:i + batch])))["probability"].numpy()[:, 0]
                 for i in range(0, len(serialized), batch)]
        return np.concatenate(parts).astype(np.float64)


def score(model_uri: str, serialized: Sequence[bytes], labels: Sequence[Any]) -> Dict[str, float]:
    """Exact AUC, log loss and calibration of one model on the given examples."""
    preds = ServingModel(model_uri).predict(serialized)
    labels = np.asarray(labels, dtype=np.int64)
    return {"auc": exact_auc(labels, preds), "log_loss": log_loss(labels, preds),
            "mean_prediction": float(preds.mean()), "mean_label": float(labels.mean()),
            "examples": int(len(preds))}

"""Real artifacts for the serving tests, without running a pipeline.

A transform graph written by TFT on Beam (`tests/latency_helpers.py`), the
default model exported through `pipelines.ads_model.export_serving_model`,
and simulated events of the built-in stream, parsed by its event schema.
"""
from __future__ import annotations

import glob
import os
import tempfile
from typing import Any, Dict, List

import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from latency_helpers import SCHEMA, TRANSFORM, write_transform_graph  # noqa: F401  (re-exported)


def events(n: int, seed: int = 3) -> List[Dict[str, Any]]:
    """`n` simulated events of the built-in stream, parsed as ingestion parses them."""
    from pipelines.simulator import SimulatorConfig, simulate

    log = tempfile.mkdtemp(prefix="serve-events-")
    simulate(log, SimulatorConfig(minutes=max(1, -(-n // 200)), events_per_minute=200, seed=seed))
    out = []
    for path in sorted(glob.glob(os.path.join(log, "*.jsonl"))):
        with open(path, "rb") as f:
            out += [SCHEMA.parse(line) for line in f if line.strip()]
    assert len(out) >= n, f"the simulator wrote {len(out)} events, wanted {n}"
    return out[:n]


def export_ads_model(export_dir: str, transform_graph: str, seed: int = 0) -> str:
    """The default model, untrained (weights from `seed`), exported as the trainer exports it."""
    import tensorflow_transform as tft

    from pipelines import ads_model
    from pipelines.config import TrainerConfig
    from transforms import stream

    model = ads_model.build_model(stream.hash_buckets(SCHEMA, TRANSFORM), stream.numeric_features(SCHEMA, TRANSFORM),
                                  dict(TrainerConfig().model), seed=seed)
    ads_model.export_serving_model(model, tft.TFTransformOutput(transform_graph), SCHEMA.label_field, export_dir)
    return export_dir

"""`driftline serve`: the pushed model over HTTP, and the impressions log of what it served.

* `signatures`: the raw-features signature the model modules export beside `serving_default`;
* `model_store`: loads the newest version of the serving folder, and swaps to a new one atomically;
* `lineage_watch`: what ML Metadata says of the served version (its push time, its data's freshness),
  and the shadow candidate (the newest blessed model that is not serving);
* `routing`: champion and challenger (Thompson sampling on the open comparison in ML Metadata) and the
  epsilon-greedy ranking policy, with the propensities the impressions log;
* `config`: the `serve` section of DriftlineConfig (shadow scoring, exploration rate, comparison polling);
* `impressions`: the log-and-wait writer (every scored item, appended to an event log);
* `app`: the Starlette app (TF Serving-style REST endpoints, /healthz, /metrics);
* `server`: runs the app under uvicorn;
* `registry`: the record a running server leaves in its home, and what `driftline status` says of it.

This package imports nothing heavy: each module imports what it needs.
"""

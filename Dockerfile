# The component image of driftline: every Vertex AI Pipelines task runs in it, and so do Dataflow's
# workers (--sdk_container_image). Never built in this repository's own environment (no registry
# access there): build and push it yourself, then pass it as `driftline compile --image`:
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/driftline:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/driftline:0.1.0
#
# The Python and glibc (Debian bookworm) the pins in constraints.txt were verified on.
FROM python:3.10.13-slim-bookworm AS build
# crcmod and pyfarmhash come as source distributions with C/C++ extensions.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /driftline
COPY setup.py constraints.txt ./
COPY components/ components/
COPY pipelines/ pipelines/
COPY transforms/ transforms/
# --seed: pip and setuptools in the venv, which Beam's worker boot uses to install staged packages.
RUN uv venv --seed --python /usr/local/bin/python3.10 /opt/venv \
    && VIRTUAL_ENV=/opt/venv uv pip install --no-cache --compile-bytecode -c constraints.txt .

FROM python:3.10.13-slim-bookworm
# Dataflow starts workers through Beam's boot loader, from the SDK image of the installed Beam.
COPY --from=apache/beam_python3.10_sdk:2.59.0 /opt/apache/beam /opt/apache/beam
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    TF_USE_LEGACY_KERAS=1 \
    PYTHONUNBUFFERED=1
# The source stays here too: Beam steps launched in a Vertex task with
# dataflow_packaging="setup_file" stage this setup.py (pipelines.config.IMAGE_SETUP_FILE).
WORKDIR /driftline
COPY setup.py constraints.txt ./
COPY components/ components/
COPY pipelines/ pipelines/
COPY transforms/ transforms/
# Vertex tasks set their own command (python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor
# ...); Dataflow runs the image's entrypoint.
ENTRYPOINT ["/opt/apache/beam/boot"]

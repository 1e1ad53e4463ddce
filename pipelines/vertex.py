"""Vertex AI Pipelines: compile the driftline pipeline into a PipelineJob spec, and submit it.

`compile_spec(config, path)` builds `create_pipeline(config, target="vertex")`
and compiles it with TFX's `KubeflowV2DagRunner`: every component becomes a
container task in `config.cloud.image`, started as
``python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor``
with its executor's dotted path, and the Beam components carry the Dataflow
arguments of the same configuration. Compiling needs no credentials and
writes nothing but the spec.

`submit(spec_path, ...)` sends a compiled spec to Vertex AI with
`google-cloud-aiplatform` when credentials, a project and a region are
there; otherwise `SubmitError` lists every one that is missing and how to
provide it (`missing_for_submit`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

from pipelines.config import DriftlineConfig

PROJECT_ENV = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")
REGION_ENV = ("GOOGLE_CLOUD_REGION", "CLOUDSDK_COMPUTE_REGION")
CREDENTIALS_HELP = (
    "no Google Cloud credentials were found (Application Default Credentials). Run "
    "`gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to the path of a "
    "service-account key file; on Google Cloud machines the attached service account is used")


class SubmitError(RuntimeError):
    """The spec cannot be submitted; the message lists everything that is missing."""


def compile_spec(config: DriftlineConfig, spec_path: str) -> Dict[str, Any]:
    """Writes the Vertex AI PipelineJob spec (JSON) of `config` to `spec_path` and returns it."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from pipelines.pipeline import VERTEX, create_pipeline

    pipeline = create_pipeline(config, target=VERTEX)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            display_name=config.pipeline_name, default_image=config.cloud.image),
        output_dir=os.path.dirname(spec_path) or ".", output_filename=os.path.basename(spec_path))
    return runner.run(pipeline, write_out=True)


@dataclasses.dataclass(frozen=True)
class SubmitPlan:
    """What a submission would send, once nothing is missing."""

    spec_path: str
    project: str
    region: str
    pipeline_root: str
    display_name: str
    service_account: str = ""


def _first_env(names) -> str:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return ""


def _read_spec(spec_path: str, missing: List[str]) -> Optional[Dict[str, Any]]:
    import tensorflow as tf

    if not tf.io.gfile.exists(spec_path):
        missing.append(f"the spec file {spec_path!r} does not exist: write it with "
                       f"`driftline compile --target vertex --out {spec_path} ...`")
        return None
    try:
        with tf.io.gfile.GFile(spec_path) as f:
            spec = json.load(f)
    except ValueError as e:
        missing.append(f"the spec file {spec_path!r} is not JSON ({e}): compile it again")
        return None
    if not isinstance(spec, dict) or "pipelineSpec" not in spec:
        missing.append(f"the spec file {spec_path!r} is not a PipelineJob spec (no 'pipelineSpec'): compile it "
                       "with `driftline compile --target vertex`")
        return None
    return spec


def missing_for_submit(spec_path: str, project: Optional[str] = None, region: Optional[str] = None,
                       service_account: str = "") -> tuple:
    """(plan or None, missing): everything a submission lacks, each with how to provide it.

    Project: the argument, else $GOOGLE_CLOUD_PROJECT / $CLOUDSDK_CORE_PROJECT,
    else the credentials' own project. Region: the argument, else
    $GOOGLE_CLOUD_REGION / $CLOUDSDK_COMPUTE_REGION.
    """
    missing: List[str] = []
    spec = _read_spec(spec_path, missing)
    credentials_project = ""
    try:
        import google.auth
        from google.auth import exceptions as auth_exceptions

        try:
            _, credentials_project = google.auth.default()
        except auth_exceptions.DefaultCredentialsError as e:
            detail = str(e)
            if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
                missing.append(f"GOOGLE_APPLICATION_CREDENTIALS={os.environ['GOOGLE_APPLICATION_CREDENTIALS']} "
                               f"cannot be used: {detail}")
            else:
                missing.append(CREDENTIALS_HELP)
    except ImportError:
        missing.append("google-auth is not installed: install driftline with its dependencies "
                       "(`uv pip install -c constraints.txt .`)")
    project = project or _first_env(PROJECT_ENV) or (credentials_project or "")
    region = region or _first_env(REGION_ENV)
    if not project:
        missing.append("no project: pass --project PROJECT_ID or set GOOGLE_CLOUD_PROJECT")
    if not region:
        missing.append("no region: pass --region REGION (e.g. us-central1) or set GOOGLE_CLOUD_REGION")
    pipeline_root, display_name = "", ""
    if spec is not None:
        pipeline_root = spec.get("runtimeConfig", {}).get("gcsOutputDirectory", "")
        display_name = spec.get("displayName", "") or spec["pipelineSpec"].get("pipelineInfo", {}).get("name", "")
        if not pipeline_root.startswith("gs://"):
            missing.append(f"the spec's pipeline root {pipeline_root!r} is not a gs:// path: compile with a "
                           "gs:// --home")
    if missing:
        return None, missing
    return SubmitPlan(spec_path=spec_path, project=project, region=region, pipeline_root=pipeline_root,
                      display_name=display_name, service_account=service_account), []


def submit(spec_path: str, project: Optional[str] = None, region: Optional[str] = None,
           service_account: str = "", wait: bool = False) -> str:
    """Submits the compiled spec as a Vertex AI PipelineJob; returns the job's resource name.

    Caching is off: the event log is unbounded, so the same inputs can
    precede new events and a run must never be answered from a cache.
    """
    plan, missing = missing_for_submit(spec_path, project, region, service_account)
    if missing:
        raise SubmitError("cannot submit to Vertex AI Pipelines:\n  - " + "\n  - ".join(missing))
    from google.cloud import aiplatform

    aiplatform.init(project=plan.project, location=plan.region)
    job = aiplatform.PipelineJob(display_name=plan.display_name, template_path=plan.spec_path,
                                 pipeline_root=plan.pipeline_root, enable_caching=False,
                                 project=plan.project, location=plan.region)
    if wait:
        job.run(service_account=plan.service_account or None, sync=True)
    else:
        job.submit(service_account=plan.service_account or None)
    return job.resource_name


def submit_command(config: DriftlineConfig, spec_path: str) -> str:
    """The `driftline submit` line for a spec compiled from `config`."""
    parts = ["driftline", "submit", "--spec", spec_path]
    if config.cloud.project:
        parts += ["--project", config.cloud.project]
    if config.cloud.region:
        parts += ["--region", config.cloud.region]
    if config.cloud.service_account:
        parts += ["--service-account", config.cloud.service_account]
    return " ".join(parts)

"""EventSchemaGen: the spec and the component class."""
from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.event_schema import EventSchema
from components.event_schema_gen import executor as executor_module


class EventSchemaGenSpec(types.ComponentSpec):
    PARAMETERS = {executor_module.EVENT_SCHEMA_KEY: ExecutionParameter(type=str)}  # EventSchema JSON
    INPUTS = {}
    OUTPUTS = {executor_module.SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema)}


class EventSchemaGen(base_component.BaseComponent):
    """Writes the TFMD schema derived from an event schema (`transforms.schema`) as a `Schema` artifact.

    What `ImportSchemaGen` does with a schema file, without a file: the event
    schema travels in the pipeline spec, so compiling a pipeline for a remote
    orchestrator writes nothing to remote storage.

    Example::

        schema_gen = EventSchemaGen(schema=config.source.schema)
        transform = Transform(examples=..., schema=schema_gen.outputs["schema"], ...)
    """

    SPEC_CLASS = EventSchemaGenSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor_module.Executor)

    def __init__(self, schema: EventSchema):
        schema.validate()
        super().__init__(spec=EventSchemaGenSpec(
            event_schema=schema.to_json(), schema=types.Channel(type=standard_artifacts.Schema)))

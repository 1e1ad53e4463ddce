"""EventSchemaGen executor: writes `schema.pbtxt` into the `Schema` artifact (stock SchemaGen's file name)."""
from __future__ import annotations

import os
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from components.event_schema import EventSchema
from transforms.schema import write_tfmd_schema

EVENT_SCHEMA_KEY = "event_schema"
SCHEMA_KEY = "schema"
SCHEMA_FILE = "schema.pbtxt"


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        schema = EventSchema.from_json(exec_properties[EVENT_SCHEMA_KEY])
        output = artifact_utils.get_single_instance(output_dict[SCHEMA_KEY])
        write_tfmd_schema(schema, os.path.join(output.uri, SCHEMA_FILE))

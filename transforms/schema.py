"""The TensorFlow Metadata schema of a stream, derived from its event schema.

Stock components (Transform, Evaluator, ExampleValidator) want a TFMD
`Schema`. Inferring one from each small span (SchemaGen) lets it drift with
the data; deriving it from the declared event schema gives the same schema
every cycle, which is what later spans are validated against.
"""
from __future__ import annotations

from tensorflow_metadata.proto.v0 import schema_pb2

from components.event_schema import EventSchema

_TYPES = {"int": schema_pb2.INT, "float": schema_pb2.FLOAT, "string": schema_pb2.BYTES}


def tfmd_schema(schema: EventSchema) -> schema_pb2.Schema:
    result = schema_pb2.Schema()
    # The types of the examples: the event time is INT (epoch ms) however the producer writes it.
    for field in schema.stored_fields:
        feature = result.feature.add(name=field.name, type=_TYPES[field.type])
        if field.required:
            # A fixed shape makes the field a dense FixedLenFeature([1]) downstream.
            feature.shape.dim.add(size=1)
            feature.presence.min_fraction = 1.0
            feature.presence.min_count = 1
        else:
            feature.value_count.min = 1
            feature.value_count.max = 1
    return result


def write_tfmd_schema(schema: EventSchema, path: str) -> str:
    """Writes the schema as text proto (what ImportSchemaGen reads); returns the path."""
    import tensorflow as tf
    from google.protobuf import text_format

    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text_format.MessageToString(tfmd_schema(schema)))
    return path

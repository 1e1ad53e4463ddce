"""EventSchemaGen: the TFMD `Schema` artifact of a stream, written from its event schema at run time.

The component class is loaded lazily, as in the other components.
"""

__all__ = ["EventSchemaGen"]


def __getattr__(name):
    if name == "EventSchemaGen":
        from components.event_schema_gen.component import EventSchemaGen

        return EventSchemaGen
    raise AttributeError(name)

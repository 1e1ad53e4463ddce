"""StreamingExampleGen: an unbounded event log in, span-numbered `Examples` out.

The component class is loaded lazily so that the plain modules beside it
(windowing, event log reading, encoding) import without TFX.
"""

__all__ = ["StreamingExampleGen"]


def __getattr__(name):
    if name == "StreamingExampleGen":
        from components.streaming_example_gen.component import StreamingExampleGen

        return StreamingExampleGen
    raise AttributeError(name)

"""StreamingExampleGen: an unbounded event log in, span-numbered `Examples` out."""
from components.streaming_example_gen.component import StreamingExampleGen

__all__ = ["StreamingExampleGen"]

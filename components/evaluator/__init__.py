"""DriftlineEvaluator: TFMA on the newest span's eval split, then the gate's verdict.

The component class is loaded lazily so that the plain modules beside it
(`gate`: the verdict, pure functions) import without TFX or TFMA.
"""

__all__ = ["DriftlineEvaluator"]


def __getattr__(name):
    if name == "DriftlineEvaluator":
        from components.evaluator.component import DriftlineEvaluator

        return DriftlineEvaluator
    raise AttributeError(name)

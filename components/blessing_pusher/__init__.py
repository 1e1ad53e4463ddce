"""BlessingPusher: pushes a Model to TF Serving's folder only when its blessing(s) say blessed.

The component class is loaded lazily so that the plain modules beside it
(`serving`: push, retention, rollback; `rollback`: recording a rollback in
ML Metadata) import without TFX.
"""

__all__ = ["BlessingPusher"]


def __getattr__(name):
    if name == "BlessingPusher":
        from components.blessing_pusher.component import BlessingPusher

        return BlessingPusher
    raise AttributeError(name)

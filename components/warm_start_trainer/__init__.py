"""WarmStartTrainer: continue the latest blessed model on the new spans, or cold-start with a recorded reason.

The component class is loaded lazily so that the plain modules beside it
import without TFX.
"""

__all__ = ["WarmStartTrainer"]


def __getattr__(name):
    if name == "WarmStartTrainer":
        from components.warm_start_trainer.component import WarmStartTrainer

        return WarmStartTrainer
    raise AttributeError(name)

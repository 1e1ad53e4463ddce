"""A user's `run_fn` module with a bug on some spans: the default model, except that it raises on the spans named
in $DRIFTLINE_TEST_FAIL_SPANS (comma-separated span numbers, or "*" for every span) when they are new.

What a real user's training code does when one span holds data it cannot handle; it reaches the
controller the way any component failure does, through TFX. Clearing the variable is the user's fix.
"""
import os

from pipelines import ads_model

FAIL_SPANS_ENV = "DRIFTLINE_TEST_FAIL_SPANS"


class UnreadableSpan(RuntimeError):
    pass


def run_fn(fn_args):
    wanted = os.environ.get(FAIL_SPANS_ENV, "").strip()
    new = sorted({i.span for i in fn_args.training_inputs if i.role == "new"})
    bad = new if wanted == "*" else [s for s in new if str(s) in wanted.split(",")]
    if bad:
        raise UnreadableSpan(f"this run_fn cannot read span {', '.join(map(str, bad))}")
    return ads_model.run_fn(fn_args)

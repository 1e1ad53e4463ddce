"""benchmarks/soak.py's stall measure: the longest run of consecutive cycles that pushed nothing."""
from benchmarks.soak import longest_without_push


def _rows(pushed):
    return [{"cycle": i, "pushed_version": "v" if p else None} for i, p in enumerate(pushed, start=1)]


def test_the_longest_run_without_a_push_is_found_with_its_cycles():
    assert longest_without_push(_rows([1, 1, 1])) == (0, None, None)
    assert longest_without_push(_rows([0, 1, 0, 0, 1, 0, 0, 0])) == (3, 6, 8)  # a stall to the end
    assert longest_without_push(_rows([1, 0, 0, 1, 0, 1])) == (2, 2, 3)  # the first of equal-or-shorter runs
    assert longest_without_push(_rows([0])) == (1, 1, 1)


def test_each_cycle_without_a_push_gets_its_models_failed_checks_and_reason():
    from types import SimpleNamespace

    from benchmarks.soak import not_pushed_lines, why_not_pushed

    def record(model_id, blessed, checks=(), reason="", push_reason=None):
        return SimpleNamespace(model_id=model_id, blessed=blessed, failed_checks=list(checks),
                               blessing_reason=reason, push_reason=push_reason)

    rows = [{"cycle": 1, "model_id": 10, "pushed_version": None},
            {"cycle": 2, "model_id": 11, "pushed_version": "2"},
            {"cycle": 3, "model_id": 13, "pushed_version": None},
            {"cycle": 4, "model_id": 14, "pushed_version": None},
            {"cycle": 5, "model_id": None, "pushed_version": None}]
    records = [record(10, False, ["min_auc"], "auc 0.52 below 0.55"),
               record(11, True, reason="better"),
               record(12, False, ["max_log_loss_increase"], "log loss worse"),
               record(13, False, ["max_label_shift"], "suspect data"),
               record(14, True, reason="better", push_reason="pinned to version 1 by a rollback")]
    assert why_not_pushed(rows, records) == [
        {"cycle": 1, "model_id": 10, "failed_checks": ["min_auc"], "reason": "auc 0.52 below 0.55"},
        {"cycle": 3, "model_id": 13, "failed_checks": ["max_label_shift"], "reason": "suspect data"},
        {"cycle": 4, "model_id": 14, "failed_checks": [], "reason": "pinned to version 1 by a rollback"},
        {"cycle": 5, "model_id": None, "failed_checks": [], "reason": "no model recorded for the cycle"}]
    text = not_pushed_lines(why_not_pushed(rows, records))
    assert "  cycle 3 (model 13): failed max_label_shift; suspect data\n" in text
    assert not_pushed_lines(None) == "" and not_pushed_lines([]) == ""

"""benchmarks/soak.py's stall measure: the longest run of consecutive cycles that pushed nothing."""
from benchmarks.soak import longest_without_push


def _rows(pushed):
    return [{"cycle": i, "pushed_version": "v" if p else None} for i, p in enumerate(pushed, start=1)]


def test_the_longest_run_without_a_push_is_found_with_its_cycles():
    assert longest_without_push(_rows([1, 1, 1])) == (0, None, None)
    assert longest_without_push(_rows([0, 1, 0, 0, 1, 0, 0, 0])) == (3, 6, 8)  # a stall to the end
    assert longest_without_push(_rows([1, 0, 0, 1, 0, 1])) == (2, 2, 3)  # the first of equal-or-shorter runs
    assert longest_without_push(_rows([0])) == (1, 1, 1)

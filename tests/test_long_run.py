"""The long run's watch over each fuzz example (tests/support/long_run.py): an example that
hangs or takes too much memory fails, and each example is counted, timed and measured. And
the long run's shards (tests/support/fuzzing.py) draw examples of their own."""
import signal
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import fuzzing, long_run
from support.long_run import Tally, peak_resident_bytes, summary, watched


def test_an_example_that_hangs_fails(monkeypatch):
    monkeypatch.setattr(long_run, "HANG_SECONDS", 0.1)
    tally = Tally(kind="whole models")
    with pytest.raises(pytest.fail.Exception, match="an example ran over 0.1 s"):
        watched(lambda: time.sleep(30), tally)()
    assert tally.examples == 1


def test_time_spent_waiting_for_a_cpu_is_not_an_examples_own(monkeypatch):
    # As if other processes held the CPUs all along: the example's own time stays near zero.
    monkeypatch.setattr(long_run, "HANG_SECONDS", 0.1)
    monkeypatch.setattr(long_run, "waited_for_a_cpu", time.perf_counter)
    tally = Tally(kind="whole models")
    watched(lambda: time.sleep(0.5), tally)()
    assert tally.examples == 1


def test_an_example_that_takes_too_much_memory_fails(monkeypatch):
    allowed = peak_resident_bytes() + (50 << 20)
    monkeypatch.setattr(long_run, "MEMORY_BYTES", allowed)
    tally = Tally(kind="data files")
    watched(lambda: np.ones(1 << 20), tally)()
    with pytest.raises(pytest.fail.Exception, match="resident memory reached"):
        watched(lambda: np.ones(100 << 20, dtype=np.uint8), tally)()
    assert tally.examples == 2
    assert tally.peak_resident > allowed


def test_examples_are_counted_and_the_alarm_is_off_after_each():
    tally = Tally(kind="ONNX models")
    example = watched(lambda value: value * 2, tally)
    assert [example(value) for value in range(3)] == [0, 2, 4]
    assert tally.examples == 3
    assert 0 < tally.peak_resident
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_the_summary_has_a_line_per_test_and_per_kind():
    tallies = {"tests/test_a.py::test_one": Tally("whole models", 7, 1.5, 300 << 20),
               "tests/test_a.py::test_two": Tally("whole models", 5, 0.25, 200 << 20, True),
               "tests/test_b.py::test_three": Tally("command lines", 2, 3.0, 100 << 20)}
    lines = summary(tallies)
    assert lines[0] == ("tests/test_a.py::test_one: 7 examples, passed, slowest 1.50 s, "
                        "peak resident memory 300 MB")
    assert lines[1].startswith("tests/test_a.py::test_two: 5 examples, FAILED")
    assert lines[3].startswith("whole models: 12 examples of ")
    assert lines[3].endswith("1 of 2 tests failed")
    assert "data files: 0 examples of" in lines[4]


def examples_of_shard(monkeypatch, index: int) -> list[int]:
    monkeypatch.setattr(fuzzing, "SHARD", index)
    monkeypatch.setattr(fuzzing, "SHARDS", 2)
    seen = []

    @fuzzing.fuzz_kind(fuzzing.WHOLE_MODELS, examples=10)
    @given(st.integers())
    def collect(value):
        seen.append(value)
    collect()
    return seen


def test_each_shard_draws_examples_of_its_own_and_the_same_on_every_run(monkeypatch):
    assert examples_of_shard(monkeypatch, 0) != examples_of_shard(monkeypatch, 1)
    assert examples_of_shard(monkeypatch, 1) == examples_of_shard(monkeypatch, 1)


@pytest.mark.parametrize("text", ["2/2", "1", "a/2", "-1/2", "1/0"])
def test_a_shard_is_i_of_n(text):
    with pytest.raises(ValueError, match="expected i/n with 0 <= i < n"):
        fuzzing.shard(text)

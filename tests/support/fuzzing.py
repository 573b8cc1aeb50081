"""What the fuzz tests share: random DSL expressions over the grammar's rules, hypothesis
settings for each kind of input, and a bound on the work one input may take.

The bound counts function calls, Python's and C's, never seconds: a blow-up (a parse that
backtracks without end, a loop over a size a file claims) breaks it on any machine, and a busy
machine never does.

Each fuzz test says what kind of input it feeds in (`fuzz_kind`), which marks it `fuzz` and
sets how many examples it runs: a few dozen in the suite (`CHAINRULE_FUZZ_EXAMPLES` and
`CHAINRULE_FUZZ_CLI_EXAMPLES` change that), and in the long run (`CHAINRULE_LONG_RUN=1`) its
share of its kind's count below. tests/support/long_run.py watches the long run.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st

from chainrule.dsl.builtins import BUILTINS

EXAMPLES_PER_TEST = int(os.environ.get("CHAINRULE_FUZZ_EXAMPLES", "30"))
CLI_EXAMPLES = int(os.environ.get("CHAINRULE_FUZZ_CLI_EXAMPLES", "25"))

# The long run's share of the counts below: 1 for all of them, 0.1 for a tenth; 0 in the suite.
LONG_RUN_SCALE = float(os.environ.get("CHAINRULE_LONG_RUN", "0"))
LONG_RUN = LONG_RUN_SCALE > 0


def shard(text: str) -> tuple[int, int]:
    """`i/n`: this process runs shard i of n (from 0)."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ValueError(f"CHAINRULE_FUZZ_SHARD={text!r}: expected i/n with 0 <= i < n")
    return int(index), int(count)


# CHAINRULE_FUZZ_SHARD=i/n: the long run split among n processes. Each runs 1/n of every
# test's examples from a seed of its own; unsharded, examples are the same on every run.
SHARD, SHARDS = shard(os.environ.get("CHAINRULE_FUZZ_SHARD", "0/1"))

fuzz = settings(max_examples=EXAMPLES_PER_TEST, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@dataclass(frozen=True)
class Kind:
    """What a fuzz test feeds in. The long run asks for `total` inputs of the kind; each test
    of the kind runs `per_test` of them (both scaled by CHAINRULE_LONG_RUN)."""
    name: str
    total: int
    per_test: int


def long_run_count(count: int) -> int:
    """`count` scaled by CHAINRULE_LONG_RUN, this shard's part of it."""
    return max(1, round(count * LONG_RUN_SCALE / SHARDS))


# Whole models: the nine front-end tests of tests/test_fuzz.py, and the whole models and the
# model files that are not UTF-8 of tests/test_fuzz_pipeline.py.
# Data files: the damaged files of tests/test_fuzz_pipeline.py and the truncated, padded and
# inflating ones of tests/test_fuzz_files.py. ONNX models: the damaged bytes, the edited nodes
# and the hostile names of tests/test_fuzz_onnx.py. Failed writes: tests/test_fuzz_files.py's.
WHOLE_MODELS = Kind("whole models", total=110_000, per_test=10_000)
DATA_FILES = Kind("data files", total=20_000, per_test=10_000)
ONNX_MODELS = Kind("ONNX models", total=20_000, per_test=20_000 // 3 + 1)
COMMAND_LINES = Kind("command lines", total=5_000, per_test=5_000)
FAILED_WRITES = Kind("failed writes", total=2_000, per_test=2_000)
KINDS = (WHOLE_MODELS, DATA_FILES, ONNX_MODELS, COMMAND_LINES, FAILED_WRITES)


def fuzz_kind(kind: Kind, examples: int = EXAMPLES_PER_TEST):
    """Mark a hypothesis test as fuzzing `kind`, with `examples` in the suite and the kind's
    `per_test` in the long run."""
    chosen = settings(fuzz, max_examples=long_run_count(kind.per_test) if LONG_RUN else examples)

    def decorate(test):
        if SHARDS > 1:
            test = seed(SHARD)(test)
        return pytest.mark.fuzz(kind.name)(chosen(test))
    return decorate


fuzz_models = fuzz_kind(WHOLE_MODELS)
fuzz_data_files = fuzz_kind(DATA_FILES)
fuzz_onnx = fuzz_kind(ONNX_MODELS)
fuzz_cli = fuzz_kind(COMMAND_LINES, CLI_EXAMPLES)
fuzz_failed_writes = fuzz_kind(FAILED_WRITES)


class CallCount:
    calls = 0


@contextlib.contextmanager
def within_calls(limit: int):
    """The block makes at most `limit` function calls (Python's and C's)."""
    count = CallCount()

    def profile(frame, event, arg):
        if event in ("call", "c_call"):
            count.calls += 1
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield count
    finally:
        sys.setprofile(previous)
    assert count.calls <= limit, f"{count.calls:,} calls, more than the {limit:,} allowed"


# Expressions from the grammar's rules, over the names a fuzzed model defines.
OPERATORS = "+ - * / @ ** < <= > >= == != and or".split()
LEAVES = st.sampled_from(["x", "y", "W", "v", "k", "a", "b", "0", "1", "-1", "2.5", "1e-3",
                          "1e999", "9" * 20, "true", "false", "(0, 1)", "(1,)", "zz"])
KEYWORDS = st.sampled_from(["axis", "keepdims", "perm", "shape", "n", "p", "alpha", "b", "q"])


def call(parts) -> str:
    name, arguments = parts
    return f"{name}({', '.join(arguments)})"


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Expressions of one more level over `inner`."""
    argument = inner | st.tuples(KEYWORDS, inner).map("=".join)
    subscript = inner | st.sampled_from([":", "...", "::2", "1:", "-1"])
    return st.one_of(
        st.tuples(inner, st.sampled_from(OPERATORS), inner).map(" ".join),
        inner.map("-{}".format), inner.map("(not {})".format), inner.map("({})".format),
        inner.map("{}.T".format),
        st.tuples(st.sampled_from(sorted(BUILTINS) + ["f32", "i64", "bool", "f", "g"]),
                  st.lists(argument, max_size=3)).map(call),
        st.tuples(inner, st.lists(subscript, min_size=1, max_size=3))
        .map(lambda parts: f"{parts[0]}[{', '.join(parts[1])}]"))


EXPRESSIONS = st.recursive(LEAVES, _grow, max_leaves=10)

"""What the fuzz tests share: random DSL expressions over the grammar's rules, hypothesis
settings for whole-pipeline fuzzing, and a bound on the work one input may take.

The bound counts function calls, Python's and C's, never seconds: a blow-up (a parse that
backtracks without end, a loop over a size a file claims) breaks it on any machine, and a busy
machine never does.
"""
from __future__ import annotations

import contextlib
import os
import sys

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from chainrule.dsl.builtins import BUILTINS

EXAMPLES_PER_TEST = int(os.environ.get("CHAINRULE_FUZZ_EXAMPLES", "30"))
CLI_EXAMPLES = int(os.environ.get("CHAINRULE_FUZZ_CLI_EXAMPLES", "25"))

fuzz = settings(max_examples=EXAMPLES_PER_TEST, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
fuzz_cli = settings(fuzz, max_examples=CLI_EXAMPLES)


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

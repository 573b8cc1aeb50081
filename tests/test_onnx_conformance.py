"""ONNX's own backend node tests as the ONNX importer's conformance suite.

Each of the ~1,900 cases of `onnx.backend.test.case.node.collect_testcases()` is a one-node
(or one-function) model and a data set of inputs and expected outputs. Every case is imported
with `chainrule.import_onnx`:

- An `UnsupportedModel` error (an op, attribute or dtype chainrule does not read, a shape it
  cannot fold) puts the case OUT of scope: it is skipped, the reason naming what is missing.
  Those are the only skips.
- Every other case is IN scope. It runs on the numpy backend and on onnxruntime (chainrule
  exports its own graph to ONNX again), and each output must match the expected one in shape,
  dtype and value, at the case's rtol/atol as ONNX's runner uses them.
- A random case (Dropout in training mode) expects one draw of numpy's legacy generator,
  seeded with the node's seed. It runs in training mode: on numpy with that very generator,
  compared as above; on onnxruntime, which draws its own masks, compared where both draws
  kept an element (support/conformance.py, "random cases").

chainrule is a static-shape compiler: a Reshape's target shape, Slice's bounds, reduction axes,
Pad's pads, Clip's bounds and the like are attributes of its ops, fixed at import time. A node
test gives them as graph inputs. When the importer reports that an input must be a constant
(`Problem.needs_constant` names it), the harness turns that input into an initializer holding
the data set's value and imports again; no list per op decides which inputs these are.

Any Python exception other than a ChainruleError is a crash, and the test errors. A
ChainruleError in an in-scope case is a failure of that case. Every failing (case, backend) is
listed in onnx_conformance_known_failures.txt with its cause, and the list must be exact: a
listed pair that passes fails too, so the list shrinks as the importer grows.

`python tests/test_onnx_conformance.py [TOP]` prints the counts: cases, in scope, passed per
backend, known failures by cause, and the TOP most common reasons a case is out of scope.
"""
from __future__ import annotations

import sys

import pytest

from support.conformance import (KNOWN_FAILURES_FILE, ONNX_VERSION, cases, check_case,
                                 known_failures, summary, verdict)

pytestmark = pytest.mark.conformance


def pytest_generate_tests(metafunc):
    # Cases are collected only when this module's tests are (it takes a few seconds).
    if "case_name" in metafunc.fixturenames:
        metafunc.parametrize("case_name", sorted(cases()))


def test_node_case(case_name):
    outcome = check_case(cases()[case_name])
    listed = {backend: cause for (case, backend), cause in known_failures().items()
              if case == case_name}
    problems = verdict(case_name, outcome, listed)
    assert not problems, "\n".join(problems) + f"\n(see {KNOWN_FAILURES_FILE.name})"
    if outcome.skipped:
        pytest.skip(outcome.skipped)


# The onnx release the known failures are written for: an older one ships fewer cases.
LIST_ONNX_VERSION = (1, 23)


def test_known_failures_name_collected_cases():
    if ONNX_VERSION < LIST_ONNX_VERSION:
        pytest.skip(f"the list names the cases of onnx {LIST_ONNX_VERSION}, which this older "
                    f"onnx does not all ship")
    unknown = sorted({case for case, _ in known_failures()} - set(cases()))
    assert not unknown, f"{KNOWN_FAILURES_FILE.name} lists cases onnx does not have: {unknown}"


if __name__ == "__main__":
    print(summary(int(sys.argv[1]) if len(sys.argv) > 1 else 15))

"""Every differentiable op's derivative rule against central finite differences in float64."""
import numpy as np
import pytest

from chainrule.backends import get_backend
from chainrule.ir import OPS
from chainrule.passes import autodiff
from chainrule.passes.autodiff_rules import VJP_RULES
from helpers import assert_close, central_difference
from op_cases import CASES, draw, scalar_objective_graph


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_derivative_rule_matches_finite_differences(case):
    rng = np.random.default_rng(0)
    graph, inputs, objective = scalar_objective_graph(case)
    feeds = {v.name: draw(arg, rng) for v, arg in zip(inputs, case.args)}
    feeds["weight"] = rng.normal(size=graph.find("weight").type.shape)
    wrt = [v for v in inputs if v.type.dtype == "f64"]
    grad_graph, grads = autodiff(graph, objective, wrt)
    numpy = get_backend("numpy")
    results = numpy.run(grad_graph, feeds, {})
    for value in wrt:
        numeric = central_difference(
            lambda: float(numpy.run(graph, feeds, {})["objective"]), feeds[value.name])
        assert_close(results[grads[value.name].name], numeric, 1e-6, atol=1e-9,
                     what=f"d/d{value.name}")


# Ops no backend runs (a pass replaces them first), whose rules are checked by model tests.
CHECKED_ELSEWHERE = {"train_or_eval": "tests/test_state.py"}


def test_every_differentiable_op_has_a_case():
    covered = {case.op for case in CASES} | set(CHECKED_ELSEWHERE)
    untested = sorted(op for op in VJP_RULES if op not in covered)
    assert not untested, f"ops whose derivative rule no case checks: {untested}"


def test_nondifferentiable_ops_have_no_rule():
    both = [name for name, op in OPS.items() if not op.differentiable and name in VJP_RULES]
    assert not both, f"ops marked non-differentiable but given a rule: {both}"
